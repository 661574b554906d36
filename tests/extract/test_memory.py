"""Extraction's memory bound: peak allocation beyond the (memory-mapped) inputs stays within
3 × the largest candidate tensor in float32 + 64 MiB.

Measured with ``tracemalloc``, which sees every numpy allocation (numpy reports its buffers to it)
and none of the memory-mapped input pages. Allocations made inside C libraries that bypass
Python's allocator (zstd's compression contexts) are not seen; they are small and fixed.
"""

from __future__ import annotations

import tracemalloc

import pytest

import lotavec
from lotavec.models import open_model, select_candidates
from lotavec.testing import make_finetuned, make_synthetic_model

MiB = 1 << 20

SHAPES = {
    # Three 256×8192 MLP matrices (2.1 M entries each) dominate: 6.4 M candidates in all.
    "dominant": dict(hidden_size=256, intermediate_size=8192, num_hidden_layers=1, num_attention_heads=4,
                     num_key_value_heads=2),
    # 42 matrices of ≤ 1 M entries, 25.2 M candidates: all scores at once (101 MB in float32) would
    # break the bound (76 MiB), so only a streaming selection passes.
    "many": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=6, num_attention_heads=8,
                 num_key_value_heads=8),
}


@pytest.fixture(scope="module")
def big_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory_pairs")
    out = {}
    for label, kw in SHAPES.items():
        make_synthetic_model("llama", root / label, seed=0, **kw)
        make_finetuned(root / label, root / f"{label}_ft", density=0.1, seed=1)
        with open_model(root / label) as src:
            cands = select_candidates(src)
            largest = max(src.numel(n) for n in cands)
            total = sum(src.numel(n) for n in cands)
        out[label] = (root / label, root / f"{label}_ft", largest, total)
    return out


def traced_peak(fn) -> int:
    """Peak traced bytes allocated while ``fn()`` runs, beyond what was allocated before."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("label", list(SHAPES))
def test_peak_within_bound_at_lota_density(big_pairs, tmp_path, label):
    base, ft, largest, total = big_pairs[label]
    out = tmp_path / "t.lota"
    res = {}
    peak = traced_peak(lambda: res.setdefault("r", lotavec.extract(base, ft, out, density=0.1)))
    bound = 3 * 4 * largest + 64 * MiB
    assert res["r"].nnz == round(0.1 * total)
    assert peak <= bound, f"{label}: peak {peak / MiB:.1f} MiB > bound {bound / MiB:.1f} MiB"
    # The bound is not vacuous here: the scores of all candidates at once would not fit.
    if label == "many":
        assert 4 * total > bound


def test_peak_within_bound_at_high_density(big_pairs, tmp_path):
    base, ft, largest, total = big_pairs["many"]
    peak = traced_peak(lambda: lotavec.extract(base, ft, tmp_path / "t.lota", density=0.5))
    bound = 3 * 4 * largest + 64 * MiB
    assert peak <= bound, f"peak {peak / MiB:.1f} MiB > bound {bound / MiB:.1f} MiB"
