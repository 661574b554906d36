"""A uniformly random mask of exactly k entries (the "random mask of the same size" baseline)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import SelectionError


def random_mask(
    candidates_numels: Mapping[str, int],
    k: int,
    seed: int,
    exclude: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Choose exactly ``k`` eligible entries uniformly at random across all tensors.

    Every k-subset of the eligible entries (all entries minus ``exclude``) is equally likely, so
    tensors receive entries in proportion to their size on average (the count per tensor is
    hypergeometric, not fixed). The result depends only on the arguments (numpy's PCG64 with
    ``seed``). Memory is about 3 x 8 bytes per selected entry.

    Args:
        candidates_numels: ``{name: numel}`` in a fixed order (the order affects the result).
        k: number of entries, ``0 <= k <= eligible``.
        seed: random seed.
        exclude: ``{name: sorted unique int64 flat indices}`` never to select.

    Returns:
        ``{name: sorted int64 flat indices}`` for every tensor.

    Raises:
        SelectionError: k negative or above the eligible count, bad ``exclude``.
    """
    names = list(candidates_numels)
    numels = np.array([int(candidates_numels[n]) for n in names], dtype=np.int64)
    excl = {
        n: _checked_exclude(n, int(candidates_numels[n]), (exclude or {}).get(n)) for n in names
    }
    eligible = numels - np.array([excl[n].size for n in names], dtype=np.int64)
    total = int(eligible.sum())
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= total:
        raise SelectionError(f"k must be an integer in [0, {total}] (eligible entries), got {k!r}")
    rng = np.random.default_rng(np.random.PCG64(seed))
    ranks = _uniform_subset(rng, total, int(k))  # sorted ranks among all eligible entries
    bounds = np.searchsorted(ranks, np.concatenate([[0], np.cumsum(eligible)]))
    out = {}
    offset = 0
    for i, n in enumerate(names):
        local = ranks[bounds[i] : bounds[i + 1]] - offset
        out[n] = _rank_to_index(local, excl[n])
        offset += int(eligible[i])
    return out


def _uniform_subset(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """A uniformly random k-subset of ``range(n)``, sorted, in memory O(k).

    Draws with replacement until at least k distinct values are seen, then drops a uniformly
    random surplus. The set of distinct values is exchangeable (its law is invariant under any
    permutation of ``range(n)``), so the final k-subset is uniform. Above n/2 the complement
    is drawn instead.
    """
    if 2 * k > n:
        keep = np.ones(n, dtype=bool)
        keep[_uniform_subset(rng, n, n - k)] = False
        return np.flatnonzero(keep)
    s = np.zeros(0, dtype=np.int64)
    while s.size < k:
        need = k - s.size
        s = np.union1d(s, rng.integers(0, n, size=need + need // 4 + 16, dtype=np.int64))
    if s.size > k:
        drop = rng.choice(s.size, size=s.size - k, replace=False)
        s = np.delete(s, drop)
    return s


def _rank_to_index(ranks: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Map ranks among a tensor's eligible entries to flat indices, skipping ``exclude``."""
    if exclude.size == 0:
        return ranks.astype(np.int64)
    # Eligible entries before excluded index e[j] number e[j] - j; a rank r is shifted by the
    # count of excluded indices whose "eligible entries before" is <= r.
    before = exclude - np.arange(exclude.size, dtype=np.int64)
    return ranks + np.searchsorted(before, ranks, side="right")


def _checked_exclude(name: str, numel: int, ex) -> np.ndarray:
    if ex is None:
        return np.zeros(0, dtype=np.int64)
    ex = np.asarray(ex, dtype=np.int64).reshape(-1)
    if ex.size and (ex[0] < 0 or ex[-1] >= numel or np.any(ex[1:] <= ex[:-1])):
        raise SelectionError(
            f"tensor {name!r}: exclude must hold strictly increasing flat indices in [0, {numel})"
        )
    return ex
