"""The LoTA pipeline (``lotavec.train``) end to end on a tiny llama: the calibrated mask equals
extraction applied to an independently saved calibration checkpoint; the exported ticket is
lossless and leaves every other entry at the base; LoTTO tickets are disjoint and merge into the
sequentially trained model bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lotavec
from lotavec.train.pipeline import TrainConfig

CFG = dict(density=0.05, calibration_steps=3, steps=3, lr=2e-3, batch_size=2, max_length=48, seed=0)


def bitsof(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view({2: torch.int16, 4: torch.int32}[t.element_size()])


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def task(kind: str, n: int = 8):
    """Tiny deterministic tasks: ``add`` (prompt/completion), ``echo`` (messages), ``text``."""
    if kind == "add":
        return [{"prompt": f"{i}+{i + 3}=", "completion": str(2 * i + 3)} for i in range(n)]
    if kind == "echo":
        return [{"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}]}
                for w in ["red", "green", "blue", "cyan", "pink", "gold", "gray", "teal"][:n]]
    return [{"text": f"the number {i} is {'even' if i % 2 == 0 else 'odd'}."} for i in range(n)]


def folder_state(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def model_state(model) -> dict[str, torch.Tensor]:
    """Checkpoint-named tensors of a module (tied ones once), as lotavec names them."""
    src = lotavec.open_model(model)
    return {n: src.tensor(n).detach().clone() for n in src.names()}


@pytest.fixture(scope="module")
def base(tiny_model_dirs):
    return tiny_model_dirs["llama"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline_data")
    return {k: write_jsonl(root / f"{k}.jsonl", task(k)) for k in ("add", "echo", "text")}


@pytest.fixture(scope="module")
def run_a(base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline_a") / "a.lota"
    return lotavec.train(base, data["add"], out, config=TrainConfig(**CFG))


@pytest.fixture(scope="module")
def run_b(base, data, run_a, tmp_path_factory):
    """LoTTO: task B trained on top of ticket A, excluding A's entries."""
    out = tmp_path_factory.mktemp("pipeline_b") / "b.lota"
    return lotavec.train(base, data["echo"], out, config=TrainConfig(**CFG), disjoint_from=[run_a.path])


def test_calibrated_mask_equals_extraction_of_the_calibration_delta(base, data, run_a, tmp_path):
    """Redo the calibration run, save it, and extract from the saved checkpoints with lotavec.extract."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lotavec.train.data import Collator, batch_stream, load_jsonl
    from lotavec.train.loop import dense_finetune

    torch.manual_seed(CFG["seed"])
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    tok = AutoTokenizer.from_pretrained(base)
    ds = load_jsonl(data["add"], tok, CFG["max_length"])
    model.to(torch.float32)  # TrainConfig.calibration_dtype
    res = dense_finetune(model, batch_stream(ds.examples, CFG["batch_size"], Collator(tok.pad_token_id), seed=CFG["seed"]),
                         CFG["calibration_steps"], CFG["lr"], seed=CFG["seed"])
    assert res.losses == run_a.calibration.losses  # the very same calibration run
    model.save_pretrained(tmp_path / "calibrated")
    AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).save_pretrained(tmp_path / "base32")
    r = lotavec.extract(tmp_path / "base32", tmp_path / "calibrated", None, density=CFG["density"])
    assert r.nnz == sum(m.size for m in run_a.masks.values()) > 0
    assert sorted(run_a.masks) == sorted(r.candidates)
    for n, m in run_a.masks.items():
        want = r.ticket.indices(n) if n in r.ticket else np.empty(0, np.int64)
        np.testing.assert_array_equal(m, want, err_msg=n)
    # global scope: densities differ between tensors
    dens = {n: m.size / r.numels[n] for n, m in run_a.masks.items()}
    assert max(dens.values()) > 2 * min(dens.values())


def assert_ticket_is_the_trained_model(base: Path, ticket_path, trained: dict[str, torch.Tensor], tmp_path: Path):
    """Off the ticket's mask every entry of ``trained`` is bit-identical to ``base``; most masked
    entries changed; merging the ticket into ``base`` gives ``trained`` bit for bit."""
    b = folder_state(base)
    t = lotavec.load_ticket(ticket_path)
    trained_entries = 0
    for n in b:
        got, ref = bitsof(trained[n]), bitsof(b[n])
        if n in t:
            idx = torch.from_numpy(t.indices(n))
            off = torch.ones(got.numel(), dtype=torch.bool)
            off[idx] = False
            assert torch.equal(got[off], ref[off]), n  # off-mask: bit-identical to the base
            trained_entries += int((got[idx] != ref[idx]).sum())
        else:
            assert torch.equal(got, ref), n
    assert trained_entries > 0.5 * t.nnz  # the masked entries really trained
    lotavec.merge(base, [ticket_path], tmp_path / "merged")
    merged = folder_state(tmp_path / "merged")
    for n in b:
        assert torch.equal(bitsof(merged[n]), bitsof(trained[n])), n


def test_exported_ticket_is_the_trained_model(base, run_a, tmp_path):
    b = folder_state(base)
    trained = model_state(run_a.model)
    t = lotavec.load_ticket(run_a.path)
    assert sorted(t.names) == sorted(n for n, m in run_a.masks.items() if m.size)
    assert t.provenance["method"] == "LoTA" and t.provenance["selection"]["density"] == CFG["density"]
    assert len(t.provenance["training"]["losses"]) == CFG["steps"]
    for n in b:
        assert trained[n].dtype == b[n].dtype, n
    for n in t.names:
        np.testing.assert_array_equal(t.indices(n), run_a.masks[n], err_msg=n)
    assert_ticket_is_the_trained_model(base, run_a.path, trained, tmp_path)


def test_lotto_disjoint_and_merge_equals_the_sequential_model(base, run_a, run_b, tmp_path):
    rb = run_b
    ta, tb = lotavec.load_ticket(run_a.path), lotavec.load_ticket(rb.path)
    assert tb.provenance["method"] == "LoTTO"
    assert tb.nnz > 0.9 * ta.nnz
    for n in tb.names:
        if n in ta:
            assert np.intersect1d(ta.indices(n), tb.indices(n)).size == 0, n
    lotavec.merge(base, [run_a.path, rb.path], tmp_path / "ab")
    merged, seq = folder_state(tmp_path / "ab"), model_state(rb.model)
    assert sorted(merged) == sorted(seq)
    for n in merged:
        assert torch.equal(bitsof(merged[n]), bitsof(seq[n])), n
    # and B alone, merged, is the base plus A's entries untouched: B did not learn on A's entries
    lotavec.merge(base, [rb.path], tmp_path / "b_only")
    b_only, b0 = folder_state(tmp_path / "b_only"), folder_state(base)
    for n in ta.names:
        idx = torch.from_numpy(ta.indices(n))
        assert torch.equal(bitsof(b_only[n])[idx], bitsof(b0[n])[idx]), n


def test_lotto_third_ticket_after_two(base, data, run_a, run_b, tmp_path):
    rb = run_b
    rc = lotavec.train(base, data["text"], tmp_path / "c.lota", config=TrainConfig(**CFG),
                       disjoint_from=[run_a.path, rb.path])
    lotavec.merge(base, [run_a.path, rb.path, rc.path], tmp_path / "abc")
    merged, seq = folder_state(tmp_path / "abc"), model_state(rc.model)
    for n in merged:
        assert torch.equal(bitsof(merged[n]), bitsof(seq[n])), n


def test_mask_from_a_ticket_trains_exactly_those_entries(base, data, run_a, tmp_path):
    r = lotavec.train(base, data["text"], tmp_path / "m.lota",
                      config=TrainConfig(**{**CFG, "calibration_steps": 0}), mask_from=run_a.path)
    assert r.calibration is None
    ta, tm = lotavec.load_ticket(run_a.path), lotavec.load_ticket(r.path)
    assert ta.names == tm.names
    for n in ta.names:
        np.testing.assert_array_equal(ta.indices(n), tm.indices(n))
