"""Ticket → PEFT SHiRA adapter: PeftModel.from_pretrained loads it and gives base + ticket's logits
bit-for-bit; what SHiRA cannot carry is listed (and the carried part is still exact); choice of r."""

from __future__ import annotations

import json

import pytest
import torch
from bridges_helpers import differing_bits, load_model, logits
from click.testing import CliRunner
from safetensors import safe_open

from lotavec.bridges.peft import choose_r, export_peft
from lotavec.errors import ModelError, OutputExistsError
from lotavec.extraction import extract
from lotavec.merge.apply import apply
from lotavec.ticket import Ticket

peft = pytest.importorskip("peft")


def peft_model(base, adapter):
    from lotavec.testing import _quiet_transformers

    with _quiet_transformers():
        return peft.PeftModel.from_pretrained(load_model(base), str(adapter)).eval()


def test_shira_adapter_reproduces_ticket_logits(llama_ticket, tmp_path):
    base, tk = llama_ticket
    out = tmp_path / "adapter"
    r = export_peft(tk, out, base=base)
    assert r.exact and not r.skipped and r.inexact == 0
    assert (r.nnz_carried, r.nnz_total, len(r.carried)) == (tk.nnz, tk.nnz, len(tk))
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "SHIRA" and cfg["r"] == r.r
    assert sorted(cfg["target_modules"]) == sorted(n[: -len(".weight")] for n in tk.names)
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        key = "base_model.model." + tk.names[0][: -len(".weight")]
        idx, w = f.get_tensor(key + ".shira_indices"), f.get_tensor(key + ".shira_weight")
    rows, cols = tk[tk.names[0]].shape
    assert idx.dtype == torch.int32 and w.dtype == torch.float32 and idx.shape == (2, r.r * (rows + cols))
    assert int((w != 0).sum()) <= tk[tk.names[0]].nnz  # the rest is -0.0 padding
    assert r.padded == sum(r.r * sum(tk[n].shape) for n in tk.names) - tk.nnz

    pm = peft_model(base, out)
    assert all(p.dtype == torch.float32 for n, p in pm.named_parameters() if "shira_weight" in n)
    ref = load_model(base)
    apply(ref, tk)
    # Same weights → the very same logits (exact equality, not a tolerance).
    assert torch.equal(logits(pm), logits(ref))
    assert not torch.equal(logits(load_model(base)), logits(ref))  # the ticket does change the output
    merged = pm.merge_and_unload()
    assert differing_bits(ref.state_dict(), merged.state_dict()) == 0


def test_partial_export_lists_what_is_missing(tiny_model_dirs, tmp_path):
    from lotavec.testing import make_finetuned

    base = tiny_model_dirs["llama"]
    names = ["model.norm.weight", "model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
             "model.layers.1.mlp.down_proj.weight"]
    make_finetuned(base, tmp_path / "ft", density=0.2, seed=4, scale=0.05, tensors=names)
    # norms and the tied embedding are in the ticket, but SHiRA adapts nn.Linear only
    tk = extract(base, tmp_path / "ft", tmp_path / "t.lotavec.safetensors", all_changed=True,
                 norms=True, embeddings=True).ticket
    assert any("norm" in n for n in tk.names) and "model.embed_tokens.weight" in tk.names
    r = export_peft(tk, tmp_path / "adapter", base=base)
    assert not r.exact
    assert all("proj" in n for n in r.carried)
    assert "RMSNorm" in r.skipped["model.norm.weight"] and "Embedding" in r.skipped["model.embed_tokens.weight"]
    assert r.nnz_carried == sum(tk.info(n)["nnz"] for n in r.carried) < r.nnz_total
    readme = (tmp_path / "adapter" / "README.md").read_text()
    assert "Not exact" in readme and "model.norm.weight" in readme
    # What was carried is still exact: the adapter equals the ticket restricted to its tensors.
    ref = load_model(base)
    apply(ref, Ticket([tk[n] for n in r.carried]))
    assert torch.equal(logits(peft_model(base, tmp_path / "adapter")), logits(ref))


def test_conv1d_ticket_cannot_be_carried(tiny_model_dirs, tmp_path):
    from lotavec.testing import make_finetuned

    make_finetuned(tiny_model_dirs["gpt2"], tmp_path / "ft", density=0.1, seed=3)
    tk = extract(tiny_model_dirs["gpt2"], tmp_path / "ft", tmp_path / "g.lotavec.safetensors", density=0.05).ticket
    with pytest.raises(ModelError, match="Conv1D module: SHiRA adapts only torch.nn.Linear"):
        export_peft(tk, tmp_path / "adapter", base=tiny_model_dirs["gpt2"])
    assert not (tmp_path / "adapter").exists()


def test_choose_r():
    layers = {"a": (1000, 64, 64),  # needs r >= 8, holds r <= 32
              "b": (500, 8, 64),    # needs r >= 7, holds r <= 7
              "c": (10, 64, 64),    # needs r >= 1
              "d": (5000, 8, 64)}   # more than any r can hold (cap 7 * 72 = 504 entries)
    r, out = choose_r(layers)
    assert r == 8  # a + c = 1010 entries beat b + c = 510 at r = 7
    assert set(out) == {"b", "d"}
    assert "more than the 512 weights" in out["b"] and "exceed what SHiRA can hold" in out["d"]
    assert choose_r({"x": (3, 4, 4)}) == (1, {})


def test_cli_export_peft_json_and_overwrite(llama_ticket, tmp_path):
    from lotavec_cli.cmd_bridges import export

    base, tk = llama_ticket
    out = tmp_path / "adapter"
    args = [tk.path, "--to", "peft", "-o", str(out), "--base", str(base), "--json"]
    res = CliRunner().invoke(export, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["exact"] is True and doc["nnz_carried"] == tk.nnz and doc["skipped"] == {}
    res = CliRunner().invoke(export, args)
    assert res.exit_code == 1 and "already exists" in res.output
    res = CliRunner().invoke(export, args[:-1] + ["--force"])
    assert res.exit_code == 0 and "Exact:" in res.output and "PeftModel.from_pretrained" in res.output
    with pytest.raises(OutputExistsError):
        export_peft(tk, out, base=base)
