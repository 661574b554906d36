"""Global top-k over candidates with the passes of :mod:`._radix` (one, two or three).

``select_global`` returns every candidate's selection at once and may retain entries between
passes; ``iter_global`` yields the selections one candidate at a time with memory independent of
k (two or three passes). Both implement the tie rule of :mod:`lotavec.mask.select`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from ..errors import SelectionError
from . import _radix
from ._radix import Progress
from ._scan import Scan


def changed_error(what: str) -> SelectionError:
    """The error for scores that differ between two calls of a candidate's callable."""
    return SelectionError(
        f"scores changed between passes ({what}); the scores callable of every candidate must "
        "return the same values each time it is called"
    )


def _count_checked(out: list[np.ndarray], k: int) -> list[np.ndarray]:
    found = sum(o.size for o in out)
    if found != k:
        raise changed_error(f"selected {found} entries, expected {k}")
    return out


def everything(c) -> np.ndarray:
    """Every eligible flat index of candidate ``c``."""
    if c.exclude is None:
        return np.arange(c.numel, dtype=np.int64)
    keep = np.ones(c.numel, dtype=bool)
    keep[c.exclude] = False
    return np.flatnonzero(keep)


def _trivial(cands: Sequence, k: int, progress: Progress) -> list[np.ndarray] | None:
    """k = 0 or k = every eligible entry: no threshold, one validating pass."""
    if 0 < k < sum(c.eligible for c in cands):
        return None
    for i, c in enumerate(cands):
        _radix.checked_keys(c)
        _radix._tick(progress, "validate scores", i + 1, len(cands))
    return [np.zeros(0, dtype=np.int64) if k == 0 else everything(c) for c in cands]


def _pass_one(cands: Sequence, k: int, budget: int, progress: Progress, retain: bool):
    scan = Scan(k, budget, retain)
    for i, c in enumerate(cands):
        scan.add(c)
        _radix._tick(progress, "select pass 1", i + 1, len(cands))
    return scan


class _Bounds(NamedTuple):
    """Where the k-th largest key lies after a non-retaining pass 1."""

    b: int  # its high-16-bit bin
    need: int  # entries needed from bin b
    lo: int  # smallest key that can be selected (b << 16, or 1 when zeros cannot be)
    above_lo: int  # eligible entries with key >= lo
    zero_ties: int | None  # when the threshold is 0: how many zeros to take; else None


def _bounds(scan, k: int) -> _Bounds:
    b, need = _radix.boundary(scan.hist, k)
    above_b = int(scan.hist[b:].sum())
    if b != 0:
        return _Bounds(b, need, b << 16, above_b, None)
    # The cut never rose, so hist holds every eligible entry and zeros were counted apart.
    positive = scan.counted - scan.zeros
    return _Bounds(0, need, 1, positive, k - positive if positive < k else None)


def _exact_threshold(cands: Sequence, scan, bd: _Bounds, progress: Progress) -> tuple[int, int]:
    """Threshold key and tie count: directly when it is 0, else by a low-bit histogram pass."""
    if bd.zero_ties is not None:
        return 0, bd.zero_ties
    h2 = _radix.low_histogram(cands, bd.b, progress, "select pass 2")
    in_bin = int(scan.hist[bd.b])
    if bd.b == 0:  # zeros cannot be selected here: leave them out of the boundary bin
        h2[0] -= scan.zeros
        in_bin -= scan.zeros
    if int(h2.sum()) != in_bin:
        raise changed_error(f"boundary bin holds {int(h2.sum())} entries, expected {in_bin}")
    lo_bits, r = _radix.boundary(h2, bd.need)
    return (bd.b << 16) | lo_bits, r


def _from_retained(scan: Scan, bd: _Bounds, cands: Sequence) -> list[np.ndarray]:
    """The selection from pass 1's retained entries (and its kept prefix of zeros)."""
    if bd.zero_ties is None:
        t, r = _radix.threshold_from_pieces(scan.pieces, bd.b, bd.need)
        return _radix.resolve_pieces(scan.pieces, t, r)
    # Threshold 0: every retained (non-zero) entry, then the first zeros in order.
    out, r = [], bd.zero_ties
    for i, c in enumerate(cands):
        pos, _ = _radix.resolve_one(scan.pieces, i, 0, 0)
        zeros, r = scan.pop_zeros(i, r)
        if zeros.size:
            keep = np.zeros(c.numel, dtype=bool)
            keep[pos] = True
            keep[zeros] = True
            del pos, zeros
            pos = np.flatnonzero(keep)
        out.append(pos)
    return out


def select_global(
    cands: Sequence, k: int, budget: int, progress: Progress, retain: bool
) -> list[np.ndarray]:
    """Exactly k entries over all candidates (``0 <= k <= eligible``), by the tie rule.

    One pass when the entries above the running threshold fit ``budget`` bytes (``retain``);
    else two (collect the entries at or above the boundary bin, if they fit) or three.
    """
    done = _trivial(cands, k, progress)
    if done is not None:
        return done
    scan = _pass_one(cands, k, budget, progress, retain)
    bd = _bounds(scan, k)
    if scan.pieces is not None:
        return _count_checked(_from_retained(scan, bd, cands), k)
    if bd.zero_ties is None and 8 * bd.above_lo <= budget:
        pieces, found = _radix.collect(cands, bd.lo, progress, "select pass 2")
        if found != bd.above_lo:
            raise changed_error(f"{found} entries at or above the boundary, expected {bd.above_lo}")
        t, r = _radix.threshold_from_pieces(pieces, bd.b, bd.need)
        return _count_checked(_radix.resolve_pieces(pieces, t, r), k)
    t, r = _exact_threshold(cands, scan, bd, progress)
    stage = "select pass 2" if bd.zero_ties is not None else "select pass 3"
    return _count_checked(list(_radix.emit(cands, t, r, progress, stage)), k)


def iter_global(cands: Sequence, k: int, progress: Progress) -> Iterator[np.ndarray]:
    """Like :func:`select_global`, yielding one candidate's selection at a time.

    Nothing is retained between passes, so memory does not depend on k: pass 1 histograms,
    pass 2 finds the exact threshold (skipped when it is 0), the last pass yields.
    """
    done = _trivial(cands, k, progress)
    if done is not None:
        yield from done
        return
    scan = _pass_one(cands, k, 0, progress, retain=False)
    bd = _bounds(scan, k)
    t, r = _exact_threshold(cands, scan, bd, progress)
    stage = "select pass 2" if bd.zero_ties is not None else "select pass 3"
    found = 0
    for sel in _radix.emit(cands, t, r, progress, stage):
        found += sel.size
        yield sel
    if found != k:
        raise changed_error(f"selected {found} entries, expected {k}")
