"""The streaming merge engine end to end on tiny models: exact single-ticket sums, order
independence, ``disjoint`` refusals, DARE seeds, HF loading and logits, sharding and the index,
carried-over files and the model card, base-identity refusals, overwriting, output dtype,
negation and linearity."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lotavec
from lotavec.errors import (
    DisjointnessError,
    FingerprintMismatchError,
    OutputExistsError,
    TensorMismatchError,
)
from lotavec.merge import MergeParams, merge
from lotavec.testing import make_tiny_model

CARRIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder (single or sharded), read with safetensors itself."""
    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view({2: torch.int16, 4: torch.int32}[t.element_size()])


def same_bits(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for n in a:
        assert a[n].dtype == b[n].dtype and a[n].shape == b[n].shape, n
        assert torch.equal(bits(a[n]), bits(b[n])), n


def no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_single_ticket_weight_one_reproduces_the_finetune(merge_kit, tmp_path):
    r = merge(merge_kit["base"], [merge_kit["full"]], tmp_path / "out")
    same_bits(tensors(tmp_path / "out"), tensors(merge_kit["ft1"]))
    assert r.tensors == 20 and r.touched == 14
    assert r.changed_entries == lotavec.load_ticket(merge_kit["full"]).nnz
    # Through the public callable too, with a partial ticket: fine-tuned on the mask, base elsewhere.
    lotavec.merge(merge_kit["base"], [merge_kit["A"]], tmp_path / "outA")
    got, b, f = tensors(tmp_path / "outA"), tensors(merge_kit["base"]), tensors(merge_kit["ft1"])
    ta = lotavec.load_ticket(merge_kit["A"])
    for n in b:
        want = bits(b[n]).clone()
        if n in ta:
            idx = torch.from_numpy(ta.indices(n))
            want[idx] = bits(f[n])[idx]
        assert torch.equal(bits(got[n]), want), n


def test_disjoint_tickets_in_any_order_are_byte_identical(merge_kit, tmp_path):
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["B"]], tmp_path / "ab")
    merge(merge_kit["base"], [merge_kit["B"], merge_kit["A"]], tmp_path / "ba")
    merge(merge_kit["base"], [merge_kit["B"], merge_kit["A"]], tmp_path / "dj", params=MergeParams(method="disjoint"))
    ab = (tmp_path / "ab" / "model.safetensors").read_bytes()
    assert ab == (tmp_path / "ba" / "model.safetensors").read_bytes()
    assert ab == (tmp_path / "dj" / "model.safetensors").read_bytes()
    assert ab != (merge_kit["base"] / "model.safetensors").read_bytes()


def test_disjoint_method_refuses_overlap_with_a_report(merge_kit, tmp_path):
    with pytest.raises(DisjointnessError) as e:
        merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / "out", params=MergeParams(method="disjoint"))
    msg = str(e.value)
    assert re.search(r"model\.layers\.\d\.(self_attn|mlp)\.\w+\.weight", msg), msg
    assert "a.lota" in msg and "c.lota" in msg
    no_leftovers(tmp_path, "out")


def test_dare_reproducible_from_seed_and_recorded(merge_kit, tmp_path):
    p = MergeParams(method="dare_linear", density=0.5, seed=123)
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / "d1", params=p)
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / "d2", params=p)
    w1 = (tmp_path / "d1" / "model.safetensors").read_bytes()
    assert w1 == (tmp_path / "d2" / "model.safetensors").read_bytes()
    rec = json.loads((tmp_path / "d1" / "lotavec_merge.json").read_text())
    assert rec["params"]["seed"] == 123 and rec["params"]["method"] == "dare_linear"
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / "d3", params=MergeParams(method="dare_linear", density=0.5, seed=124))
    assert (tmp_path / "d3" / "model.safetensors").read_bytes() != w1
    # No seed: one is drawn, recorded, and reproduces the output.
    r = merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / "d4", params=MergeParams(method="dare_linear", density=0.5))
    seed = json.loads((tmp_path / "d4" / "lotavec_merge.json").read_text())["params"]["seed"]
    assert isinstance(seed, int) and seed == r.params["seed"]
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / "d5", params=MergeParams(method="dare_linear", density=0.5, seed=seed))
    assert (tmp_path / "d4" / "model.safetensors").read_bytes() == (tmp_path / "d5" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("weights", [None, (0.5, 1.0)])
def test_hf_loading_gives_the_logits_of_apply_in_memory(merge_kit, tmp_path, weights):
    from transformers import AutoModelForCausalLM

    p = MergeParams(weights=weights)
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["B"]], tmp_path / "out", params=p)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    mem = AutoModelForCausalLM.from_pretrained(merge_kit["base"])
    ws = weights or (1.0, 1.0)
    lotavec.apply(mem, merge_kit["A"], ws[0])
    # B touches the tensors A changed (other entries): its sampled-fingerprint check would refuse
    # the model (see test_apply.py::test_two_disjoint_tickets_in_memory), so skip it here.
    lotavec.apply(mem, merge_kit["B"], ws[1], check_base=False)
    for (n, x), (m, y) in zip(merged.state_dict().items(), mem.state_dict().items()):
        assert n == m and torch.equal(bits(x), bits(y)), n
    ids = torch.arange(4, 68).reshape(2, 32)
    with torch.no_grad():
        lm, la = merged(ids).logits, mem(ids).logits
        lb = AutoModelForCausalLM.from_pretrained(merge_kit["base"])(ids).logits
    assert torch.equal(lm, la)
    assert not torch.equal(lm, lb)


def test_sharded_output_and_index(merge_kit, tmp_path):
    from transformers import AutoModelForCausalLM

    merge(merge_kit["base"], [merge_kit["A"]], tmp_path / "one")
    merge(merge_kit["base"], [merge_kit["A"]], tmp_path / "sh", max_shard_size="40KB")
    shards = sorted(p.name for p in (tmp_path / "sh").glob("*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "sh" / "model.safetensors").exists()
    n = len(shards)
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((tmp_path / "sh" / "model.safetensors.index.json").read_text())
    wmap = index["weight_map"]
    one = tensors(tmp_path / "one")
    assert sorted(wmap) == sorted(one)
    for s in shards:
        held = load_file(tmp_path / "sh" / s)
        assert sorted(held) == sorted(k for k, v in wmap.items() if v == s), s
        assert sum(t.numel() * t.element_size() for t in held.values()) <= 40_000 or len(held) == 1
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in one.values())
    same_bits(tensors(tmp_path / "sh"), one)
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "sh")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "one")
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(bits(x), bits(y)), k


def test_sharded_base(sharded_pair, tmp_path):
    base, ft = sharded_pair
    lotavec.extract(base, ft, tmp_path / "t.lota", all_changed=True)
    merge(base, [tmp_path / "t.lota"], tmp_path / "out", max_shard_size="100KB")
    same_bits(tensors(tmp_path / "out"), tensors(ft))


def test_files_carried_over_and_card(merge_kit, tmp_path):
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["B"]], tmp_path / "out")
    out = tmp_path / "out"
    for f in CARRIED:
        assert (out / f).read_bytes() == (merge_kit["base"] / f).read_bytes(), f
    card = (out / "README.md").read_text()
    assert str(merge_kit["base"]) in card
    assert merge_kit["A"] in card and merge_kit["B"] in card
    assert "sum" in card
    rec = json.loads((out / "lotavec_merge.json").read_text())
    assert [t["path"] for t in rec["tickets"]] == [merge_kit["A"], merge_kit["B"]]
    assert rec["base"]["path"] == str(merge_kit["base"])


@pytest.fixture(scope="module")
def other_bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("other_bases")
    make_tiny_model("llama", root / "weights", seed=5)
    make_tiny_model("llama", root / "shape", seed=0, intermediate_size=96)
    make_tiny_model("llama", root / "dtype", seed=0, dtype="float32")
    return root


@pytest.mark.parametrize("kind, error, pattern", [
    ("weights", FingerprintMismatchError, r"differs from the base this ticket was made from"),
    ("shape", TensorMismatchError, r"BF16\[128, 64\] in the ticket but BF16\[96, 64\]|BF16\[64, 128\] in the ticket but BF16\[64, 96\]"),
    ("dtype", TensorMismatchError, r"BF16\[\d+, \d+\] in the ticket but F32"),
])
def test_wrong_base_refused_before_any_output(merge_kit, other_bases, tmp_path, kind, error, pattern):
    with pytest.raises(error) as e:
        merge(other_bases / kind, [merge_kit["A"]], tmp_path / "out")
    msg = str(e.value)
    assert re.search(pattern, msg), msg
    assert "a.lota" in msg and re.search(r"'model\.layers\.\d\.\w+\.\w+\.weight'", msg)
    no_leftovers(tmp_path, "out")


@pytest.mark.parametrize("params", [MergeParams(method="ties", density=0.03), MergeParams(method="disjoint"),
                                    MergeParams(method="ties", density=0.03, scope="global"),
                                    MergeParams(method="dare_linear", density=0.5, seed=1)],
                         ids=["ties", "disjoint", "ties-global", "dare"])
def test_wrong_base_refused_by_every_path(merge_kit, other_bases, tmp_path, params):
    """Fingerprints are compared up front (disjoint, global trims) or by the worker merging each
    tensor (the others); either way the merge stops with no output left."""
    with pytest.raises(FingerprintMismatchError, match="differs from the base this ticket was made from"):
        merge(other_bases / "weights", [merge_kit["A"], merge_kit["B"]], tmp_path / "out", params=params)
    no_leftovers(tmp_path, "out")


def test_force_merges_a_different_base_with_warnings(merge_kit, other_bases, tmp_path):
    r = merge(other_bases / "weights", [merge_kit["A"]], tmp_path / "out", force=True)
    assert r.warnings and all("differs from the base" in w for w in r.warnings)
    assert len(r.warnings) == len(lotavec.load_ticket(merge_kit["A"]).names)
    rec = json.loads((tmp_path / "out" / "lotavec_merge.json").read_text())
    assert rec["warnings"] == r.warnings
    assert sorted(tensors(tmp_path / "out")) == sorted(tensors(other_bases / "weights"))


@pytest.mark.parametrize("kind", ["shape", "dtype"])
def test_force_does_not_override_shape_or_dtype(merge_kit, other_bases, tmp_path, kind):
    with pytest.raises(TensorMismatchError):
        merge(other_bases / kind, [merge_kit["A"]], tmp_path / "out", force=True)
    no_leftovers(tmp_path, "out")


def test_refuses_to_overwrite_unless_asked(merge_kit, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=re.escape(str(out))):
        merge(merge_kit["base"], [merge_kit["A"]], out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    merge(merge_kit["base"], [merge_kit["A"]], out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    no_leftovers(tmp_path, "out.")  # no .out.tmp-* or .out.old-* folders stay behind


def test_float32_output(merge_kit, tmp_path):
    from transformers import AutoModelForCausalLM

    merge(merge_kit["base"], [merge_kit["A"]], tmp_path / "out", dtype="float32")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["dtype"] == "float32"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    got, b, f = tensors(tmp_path / "out"), tensors(merge_kit["base"]), tensors(merge_kit["ft1"])
    ta = lotavec.load_ticket(merge_kit["A"])
    for n in b:
        assert got[n].dtype == torch.float32, n
        want = b[n].float().reshape(-1).clone()
        if n in ta:
            idx = torch.from_numpy(ta.indices(n))
            want[idx] = f[n].float().reshape(-1)[idx]
        assert torch.equal(got[n].reshape(-1), want), n


def test_negation_removes_a_ticket_exactly(merge_kit, tmp_path):
    """base + 1·δ − 1·δ: the float32 deltas cancel exactly, so the base comes back bit for bit."""
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["A"]], tmp_path / "out", params=MergeParams(weights=(1.0, -1.0)))
    same_bits(tensors(tmp_path / "out"), tensors(merge_kit["base"]))


def test_sum_is_linear_in_the_weights(merge_kit, tmp_path):
    """In float32 output, merged − base = w_A·δ_A + w_B·δ_B (float32 rounding only)."""
    base = {n: t.float() for n, t in tensors(merge_kit["base"]).items()}
    deltas = {}
    for key in ("A", "C"):  # overlapping tickets: linearity must hold on the overlap too
        merge(merge_kit["base"], [merge_kit[key]], tmp_path / key, dtype="float32")
        deltas[key] = {n: t - base[n] for n, t in tensors(tmp_path / key).items()}
    for i, (wa, wc) in enumerate([(0.5, 0.5), (1.0, -0.3), (2.0, 0.25)]):
        out = tmp_path / f"m{i}"
        merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], out, dtype="float32", params=MergeParams(weights=(wa, wc)))
        for n, t in tensors(out).items():
            want = wa * deltas["A"][n] + wc * deltas["C"][n]
            torch.testing.assert_close(t - base[n], want, rtol=0, atol=1e-6 * (1 + base[n].abs().max().item()))
    # and the overlap is non-trivial
    ta, tc = lotavec.load_ticket(merge_kit["A"]), lotavec.load_ticket(merge_kit["C"])
    assert sum(np.intersect1d(ta.indices(n), tc.indices(n)).size for n in ta.names if n in tc) > 0


def test_base_folder_untouched(merge_kit, tmp_path):
    before = {p.name: p.read_bytes() for p in merge_kit["base"].iterdir()}
    merge(merge_kit["base"], [merge_kit["A"], merge_kit["B"]], tmp_path / "out")
    shutil.rmtree(tmp_path / "out")
    assert {p.name: p.read_bytes() for p in merge_kit["base"].iterdir()} == before


def test_buffer_pool_keeps_the_largest_within_its_bounds():
    from lotavec.merge.engine import _Buffers

    pool = _Buffers(keep=2, max_bytes=100)
    bufs = [pool.take(n) for n in (10, 40, 50, 200)]
    assert [b.nbytes for b in bufs] == [10, 40, 50, 200]  # nothing idle yet: all fresh
    for b in bufs:
        pool.give(b[:5])  # a view gives back its whole buffer
    # 200 bytes is over the byte bound: dropped; of 10, 40, 50 the two largest stay
    assert sorted(b.nbytes for b in pool._free) == [40, 50]
    got = pool.take(45)
    assert got.nbytes == 50 and [b.nbytes for b in pool._free] == [40]
    pool.give(np.empty(70, np.uint8))  # 40 + 70 > 100: the largest goes
    assert [b.nbytes for b in pool._free] == [40]
