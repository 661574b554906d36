"""Shared helpers of the mask tests: candidates over fixed arrays and brute-force references."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

import lotavec.mask._radix as radix
from lotavec.mask import Candidate
from lotavec.mask._engine import iter_global
from lotavec.mask._engine import select_global as _select_global

#: Every way the engine can reach its answer: (retain, budget) for ``_select_global``.
#: One pass with retention; retention given up midway for lack of budget (then two or three
#: passes); two passes (collect); three passes (low histogram, then emit).
PATHS = {
    "retain": (True, 1 << 40),
    "retain, small budget": (True, 3000),
    "collect": (False, 1 << 40),
    "three-pass": (False, 0),
}


def cands_of(arrays, excludes=None, calls=None, ranged=False):
    """Candidates recomputing (copying) each array on every call.

    ``ranged``: give ``score_range`` (chunk by chunk) instead of ``scores``.
    """
    excludes = excludes or [None] * len(arrays)
    out = []
    for i, (a, ex) in enumerate(zip(arrays, excludes)):

        def scores(a=a, i=i):
            if calls is not None:
                calls[i] += 1
            return a.copy()

        def score_range(start, stop, a=a, i=i):
            if calls is not None and start == 0:
                calls[i] += 1
            return a.reshape(-1)[start:stop].copy()

        if ranged:
            out.append(Candidate(f"t{i}", int(a.size), None, ex, score_range=score_range))
        else:
            out.append(Candidate(f"t{i}", int(a.size), scores, ex))
    return out


def brute_tie_rule(arrays, k, excludes=None):
    """Top-k by (score desc, candidate order, flat index): the documented rule, by sorting."""
    excludes = excludes or [None] * len(arrays)
    score = np.concatenate([a.reshape(-1).astype(np.float64) for a in arrays] + [np.zeros(0)])
    cand = np.concatenate([np.full(a.size, i) for i, a in enumerate(arrays)] + [np.zeros(0, int)])
    idx = np.concatenate([np.arange(a.size) for a in arrays] + [np.zeros(0, int)])
    ok = np.ones(score.size, dtype=bool)
    off = 0
    for a, ex in zip(arrays, excludes):
        if ex is not None:
            ok[off + np.asarray(ex, dtype=np.int64)] = False
        off += a.size
    pos = np.flatnonzero(ok)
    chosen = pos[np.lexsort((idx[pos], cand[pos], -score[pos]))[:k]]
    return [np.sort(idx[chosen[cand[chosen] == i]]) for i in range(len(arrays))]


def brute_torch_topk(arrays, k):
    """``torch.topk`` over the concatenated scores, split back per tensor (distinct scores)."""
    cat = torch.from_numpy(np.concatenate([a.reshape(-1) for a in arrays]))
    pos = torch.topk(cat, k).indices.sort().values.numpy() if k else np.zeros(0, np.int64)
    out, off = [], 0
    for a in arrays:
        out.append(pos[(pos >= off) & (pos < off + a.size)] - off)
        off += a.size
    return out


def all_paths(cands, k):
    """Run every engine path (and the streaming one); return ``{path: list of index arrays}``."""
    out = {p: _select_global(cands, k, b, None, retain) for p, (retain, b) in PATHS.items()}
    out["stream"] = list(iter_global(cands, k, None))
    return out


@contextmanager
def small_chunks(chunk=97, prune_min=50):
    """Make chunks tiny so that small tests exercise cut updates and pruning across chunks."""
    old = radix.CHUNK, radix.PRUNE_MIN
    radix.CHUNK, radix.PRUNE_MIN = chunk, prune_min
    try:
        yield
    finally:
        radix.CHUNK, radix.PRUNE_MIN = old


def distinct_scores(sizes, rng):
    """Arrays of pairwise-distinct non-negative float32 scores with the given sizes."""
    total = int(sum(sizes))
    vals = (rng.permutation(total).astype(np.float64) + 1) * 1e-3 * rng.uniform(0.5, 2)
    vals = vals.astype(np.float32)
    assert np.unique(vals).size == total
    return np.split(vals, np.cumsum(sizes)[:-1]) if sizes else []
