"""LoRA adapter → ticket: bit-exact against PEFT's merge_and_unload (Linear and GPT-2 Conv1D, fp32 and
bf16 adapters, rsLoRA, rank/alpha patterns), top-k selection, merging two LoRA ranks through
lotavec, the CLI, and the refusals of what is not plain LoRA."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from bridges_helpers import differing_bits, load_model
from click.testing import CliRunner

from lotavec.bridges.peft import import_peft, read_lora
from lotavec.errors import ModelError, NotFoundError, SelectionError, UnsupportedFeatureError
from lotavec.merge.apply import apply
from lotavec.models import open_model

peft = pytest.importorskip("peft")


def make_lora(base, out, *, r, seed, targets, dtype=torch.float32, **cfg):
    """Save a LoRA adapter with random (nonzero) A and B; returns its folder."""
    from lotavec.testing import _quiet_transformers

    model = load_model(base)
    config = peft.LoraConfig(r=r, lora_alpha=16, target_modules=targets, init_lora_weights=False,
                             task_type="CAUSAL_LM", **cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pm = peft.get_peft_model(model, config)
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.data = (torch.randn_like(p, dtype=torch.float32) * (0.05 if "lora_B" in name else 0.2)).to(dtype)
    with _quiet_transformers():
        pm.save_pretrained(out)
    return out


def merged_by_peft(base, adapter):
    pm = peft.PeftModel.from_pretrained(load_model(base), str(adapter))
    return pm.merge_and_unload().state_dict()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dirs):
    """Two llama LoRA adapters on different modules: r=4 with rsLoRA (fp32, q/v/down), r=8 with
    rank/alpha patterns saved in bf16 (k/o/up)."""
    root = tmp_path_factory.mktemp("lora")
    base = tiny_model_dirs["llama"]
    a4 = make_lora(base, root / "r4", r=4, seed=1, targets=["q_proj", "v_proj", "down_proj"], use_rslora=True)
    a8 = make_lora(base, root / "r8", r=8, seed=2, targets=["k_proj", "o_proj", "up_proj"],
                   dtype=torch.bfloat16, rank_pattern={"k_proj": 2}, alpha_pattern={"up_proj": 4})
    return base, a4, a8


@pytest.mark.parametrize("which", ["r4", "r8"])
def test_all_changed_equals_merge_and_unload(adapters, tmp_path, which):
    base, a4, a8 = adapters
    adapter = a4 if which == "r4" else a8
    res = import_peft(adapter, base, tmp_path / "t.lotavec.safetensors", all_changed=True)
    lora = read_lora(adapter)
    assert sorted(res.candidates) == sorted(lora.modules)
    assert res.nnz > 0.9 * res.candidate_params  # a dense LoRA update changes almost every entry
    ours = load_model(base)
    apply(ours, res.ticket)
    # Measured: bit-exact (0 differing entries), not merely within one bf16 ulp.
    assert differing_bits(merged_by_peft(base, adapter), ours.state_dict()) == 0
    assert res.ticket.provenance["import"]["ranks"] == ([4] if which == "r4" else [2, 8])
    if which == "r8":  # patterns were applied: k_proj has rank 2, up_proj alpha 4 / r 8
        ks = [m for n, m in lora.modules.items() if "k_proj" in n]
        ups = [m for n, m in lora.modules.items() if "up_proj" in n]
        assert {m.rank for m in ks} == {2} and {m.scaling for m in ups} == {0.5}
    else:
        assert {m.scaling for m in lora.modules.values()} == {16 / 2}  # rsLoRA: alpha / sqrt(4)


def test_gpt2_conv1d_fan_in_fan_out(tiny_model_dirs, tmp_path):
    base = tiny_model_dirs["gpt2"]
    adapter = make_lora(base, tmp_path / "g", r=4, seed=3, targets=["c_attn", "c_fc"], fan_in_fan_out=True)
    res = import_peft(adapter, base, tmp_path / "g.lotavec.safetensors", all_changed=True)
    ours = load_model(base)
    apply(ours, res.ticket)
    assert differing_bits(merged_by_peft(base, adapter), ours.state_dict()) == 0


def test_density_keeps_the_largest_changes(adapters, tmp_path):
    base, a4, _ = adapters
    res = import_peft(a4, base, None, density=0.25)
    assert res.nnz == round(0.25 * res.candidate_params)
    full = import_peft(a4, base, None, all_changed=True).ticket
    with open_model(base) as src:
        kept_min, dropped_max = np.inf, 0.0
        for name in full.names:
            b = src.array(name).reshape(-1)
            f = full[name]
            d = np.abs(f.delta(np.take(b, f.indices)))
            kept = np.isin(f.indices, res.ticket.indices(name)) if name in res.ticket else np.zeros(f.nnz, bool)
            # kept entries carry the merged value exactly
            if name in res.ticket:
                t = res.ticket[name]
                assert np.array_equal(t.finetuned(np.take(b, t.indices)), f.finetuned(np.take(b, f.indices))[kept])
            kept_min = min(kept_min, d[kept].min(initial=np.inf))
            dropped_max = max(dropped_max, d[~kept].max(initial=0.0))
    assert kept_min >= dropped_max  # global top-k by |merged - base|


def test_two_lora_ranks_merge_through_lotavec(adapters, tmp_path):
    from lotavec_cli.cmd_bridges import import_peft as import_cmd
    from lotavec_cli.cmd_merge import merge as merge_cmd

    base, a4, a8 = adapters
    paths = []
    for name, adapter in (("r4", a4), ("r8", a8)):
        out = tmp_path / f"{name}.lotavec.safetensors"
        res = CliRunner().invoke(import_cmd, [str(adapter), "--base", str(base), "-o", str(out),
                                              "--density", "0.2", "--json"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output)
        assert doc["selected"] == round(0.2 * doc["target_params"]) and doc["ticket"] == str(out)
        paths.append(out)
    res = CliRunner().invoke(merge_cmd, [str(base), *map(str, paths), "-o", str(tmp_path / "merged"), "--json"])
    assert res.exit_code == 0, res.output
    merged = load_model(tmp_path / "merged").state_dict()
    from lotavec.ticket import load_ticket

    t4, t8 = load_ticket(paths[0]), load_ticket(paths[1])
    with open_model(base) as src:
        checked = 0
        for name in set(t4.names) | set(t8.names):
            b = src.array(name).reshape(-1)
            got = merged[name].contiguous().view(torch.int16).view(-1).numpy().view(np.uint16)
            for t, other in ((t4, t8), (t8, t4)):
                if name not in t:
                    continue
                tt = t[name]
                alone = ~np.isin(tt.indices, other.indices(name)) if name in other else np.ones(tt.nnz, bool)
                want = tt.finetuned(np.take(b, tt.indices))[alone]
                assert np.array_equal(got[tt.indices[alone]], want)  # one adapter's entry: its merged value
                checked += int(alone.sum())
    assert checked > 1000


def test_overlapping_lora_tickets_sum_merge(adapters, tmp_path):
    import lotavec

    base, a4, _ = adapters
    t20 = import_peft(a4, base, tmp_path / "a.lotavec.safetensors", density=0.2).path
    t10 = import_peft(a4, base, tmp_path / "b.lotavec.safetensors", density=0.1).path
    lotavec.merge(base, [t20, t10], tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").exists()


def test_refusals(adapters, tmp_path):
    base, a4, _ = adapters

    def variant(name, **changes):
        d = tmp_path / name
        shutil.copytree(a4, d)
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(changes)
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        return d

    with pytest.raises(UnsupportedFeatureError, match="peft_type is 'IA3'"):
        import_peft(variant("ia3", peft_type="IA3"), base, None, all_changed=True)
    with pytest.raises(UnsupportedFeatureError, match="use_dora"):
        import_peft(variant("dora", use_dora=True), base, None, all_changed=True)
    with pytest.raises(UnsupportedFeatureError, match="pissa"):
        import_peft(variant("pissa", init_lora_weights="pissa"), base, None, all_changed=True)
    with pytest.raises(ModelError, match="rank r=16"):
        import_peft(variant("rank", r=16), base, None, all_changed=True)
    nobin = variant("bin")
    (nobin / "adapter_model.safetensors").rename(nobin / "adapter_model.bin")
    with pytest.raises(NotFoundError, match="never unpickles"):
        import_peft(nobin, base, None, all_changed=True)
    with pytest.raises(NotFoundError, match="adapter_config.json"):
        import_peft(tmp_path, base, None, all_changed=True)
    with pytest.raises(SelectionError):
        import_peft(a4, base, None)  # neither --density nor --all-changed
    from lotavec_cli.cmd_bridges import import_peft as import_cmd

    res = CliRunner().invoke(import_cmd, [str(variant("cli", peft_type="IA3")), "--base", str(base),
                                          "-o", str(tmp_path / "x.lotavec.safetensors"), "--all-changed"])
    assert res.exit_code == 1 and "plain LoRA" in res.output and "Traceback" not in res.output
