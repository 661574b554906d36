"""The memory bound: peak allocation beyond the returned selection stays within
3 x the largest candidate in float32 + 64 MiB, and does not grow with the number of tensors.

Measured with ``tracemalloc`` (numpy reports its array buffers to it). The scores callables
regenerate their values from a seed on every call, so no score array outlives its pass unless
the selector keeps it.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from lotavec.mask import Candidate, iter_topk, select_topk

BIG = 4_000_000  # the dominant tensor: 16 MB of float32 scores
SMALL = 600_000
MIB = 1 << 20
BOUND = 3 * 4 * BIG + 64 * MIB


def _scores(n: int, seed: int, zero_frac: float, rising: bool):
    def scores():
        s = np.random.default_rng(seed).random(n, dtype=np.float32)
        if rising:  # every tensor's scores above the previous one's: worst case for streaming
            s += np.float32(seed)
        if zero_frac:
            s[s < np.float32(zero_frac)] = 0  # mostly unchanged entries: huge tie class at 0
        return s

    return scores


def _cands(n_small: int, zero_frac: float = 0.0, rising: bool = False):
    sizes = [SMALL] * (n_small // 2) + [BIG] + [SMALL] * (n_small - n_small // 2)
    return [Candidate(f"t{i}", n, _scores(n, i, zero_frac, rising)) for i, n in enumerate(sizes)]


def _peak_beyond_result(cands, **kw) -> tuple[int, int]:
    tracemalloc.start()
    try:
        out = select_topk(cands, **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result = sum(v.nbytes for v in out.values())
    assert sum(v.size for v in out.values()) > 0
    return peak - result, result


CASES = {
    "one pass": dict(density=0.02),
    "one pass, dense": dict(density=0.4),
    "two passes": dict(density=0.05, max_retained_bytes=16 * MIB),
    "three passes": dict(density=0.2, max_retained_bytes=0),
    "threshold at zero": dict(density=0.5, zero_frac=0.9),
    "tie class at zero, three passes": dict(density=0.5, zero_frac=0.9, max_retained_bytes=0),
    "rising scales": dict(density=0.1, rising=True),
    "tensor scope": dict(density=0.3, scope="tensor"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_peak_memory_beyond_the_result_within_bound(case):
    kw = dict(CASES[case])
    cands = _cands(48, kw.pop("zero_frac", 0.0), kw.pop("rising", False))
    assert 4 * sum(c.numel for c in cands) > BOUND  # holding all scores at once would break it
    peak, result = _peak_beyond_result(cands, **kw)
    assert peak <= BOUND, f"{case}: {peak / MIB:.1f} MiB beyond a {result / MIB:.1f} MiB result"


@pytest.mark.parametrize("case", ["one pass", "three passes"])
def test_peak_memory_follows_the_largest_tensor_not_the_count(case):
    """40 more tensors (+40 MB of scores) add (almost) nothing beyond the larger result."""
    few, _ = _peak_beyond_result(_cands(8), **CASES[case])
    many, _ = _peak_beyond_result(_cands(48), **CASES[case])
    assert many - few <= 6 * MIB, f"{case}: {few / MIB:.1f} -> {many / MIB:.1f} MiB"


@pytest.mark.parametrize("case", ["three passes", "tie class at zero, three passes"])
def test_iter_topk_peak_memory_independent_of_k(case):
    """Consuming tensor by tensor, even a dense selection stays within the bound in total."""
    kw = dict(CASES[case])
    kw.pop("max_retained_bytes")
    cands = _cands(48, kw.pop("zero_frac", 0.0))
    kw["density"] = 0.6
    tracemalloc.start()
    try:
        nnz = 0
        for _, sel in iter_topk(cands, **kw):
            nnz += sel.size
            del sel
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 8 * nnz > BOUND  # select_topk's result alone would not fit
    assert peak <= BOUND, f"{case}: {peak / MIB:.1f} MiB"


def _hashed_range(seed: int):
    """Deterministic pseudo-random scores of any flat range, computed on demand."""

    def score_range(start: int, stop: int) -> np.ndarray:
        i = np.arange(start, stop, dtype=np.uint64) + np.uint64(seed << 40)
        i *= np.uint64(0x9E3779B97F4A7C15)
        return ((i >> np.uint64(40)).astype(np.float32)) * np.float32(2.0**-24)

    return score_range


def test_score_range_never_holds_a_whole_tensor():
    big = 16_000_000  # 61 MiB of float32 scores
    sizes = [SMALL] * 4 + [big] + [SMALL] * 4
    cands = [Candidate(f"t{i}", n, score_range=_hashed_range(i)) for i, n in enumerate(sizes)]
    peak, result = _peak_beyond_result(cands, density=0.01)
    # Chunk temporaries and the retained entries only: far below one float32 copy of the
    # largest tensor.
    assert peak <= 32 * MIB < 4 * big, (
        f"{peak / MIB:.1f} MiB beyond a {result / MIB:.1f} MiB result"
    )
