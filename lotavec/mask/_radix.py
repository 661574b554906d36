"""Exact streaming top-k over float32 scores by radix selection on their bit patterns.

Internal machinery of :mod:`lotavec.mask.select`. A non-negative finite float32 orders like the
``uint32`` of its bits, so a score is handled as a *key* (``uint32``) and the k-th largest key is
found with two 65536-bin histograms: one over the high 16 bits, one over the low 16 bits of the
boundary bin.

Pass 1 (:class:`._scan.Scan`) histograms every eligible key above a running *cut* and keeps ("retains")
the index and key of each such entry. The cut is the high-16-bit bin holding the k-th largest key
seen so far; it only rises as data arrive, so an entry below it can never be selected and is
neither counted nor kept. When the retained entries fit the memory budget, the answer is read
from them and the scores are computed once. Otherwise pass 1 keeps only the histogram and a second
pass collects the entries at or above the boundary bin (or, when that bin is too full, computes
its low-bit histogram and a third pass emits the selection directly).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..errors import SelectionError

#: Elements per chunk: bounds the temporaries of every vectorised step (<= 4 MB each, ~16 MB in
#: all); smaller chunks were not faster, larger ones only cost memory.
CHUNK = 1 << 19
NBINS = 1 << 16
#: Retained entries are pruned early (before the budget is reached) only when that frees at least
#: this many, and at least as many as stay: each prune then costs O(1) per entry it frees.
PRUNE_MIN = 1 << 20
#: Smallest key of a non-finite float32 (+inf); NaNs and negative numbers have larger keys.
KEY_INF = 0x7F800000
_SIGN = 0x80000000

# Positions of the high and low 16-bit halves of a uint32 viewed as two uint16s.
_HI, _LO = (1, 0) if sys.byteorder == "little" else (0, 1)

Progress = Callable[[str, int, int], None] | None
#: Per candidate, in flat-index order: pieces ``(chunk start, uint32 offsets or None, keys)``;
#: ``None`` offsets mean the keys cover every offset of the chunk.
Pieces = list[list[tuple[int, np.ndarray | None, np.ndarray]]]


def checked_keys(cand) -> np.ndarray:
    """All of a candidate's scores (one call) as a flat ``uint32`` key array.

    Raises:
        SelectionError: wrong type, dtype or length; NaN, infinite or negative scores.
    """
    if cand.scores is not None:
        return _as_keys(cand.name, cand.scores(), cand.numel, 0, whole=True)
    return _as_keys(cand.name, cand.score_range(0, cand.numel), cand.numel, 0, whole=True)


def key_chunks(cand) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield ``(start, keys of the chunk, excluded local offsets or None)`` for a candidate.

    With ``score_range`` the scores are computed chunk by chunk (they stay in cache and are never
    all in memory); else ``scores()`` is called once and sliced.
    """
    if cand.score_range is None:
        keys = checked_keys(cand)
        for c0, c1, ex in chunks(cand.numel, cand.exclude):
            yield c0, keys[c0:c1], ex
        return
    for c0, c1, ex in chunks(cand.numel, cand.exclude):
        yield c0, _as_keys(cand.name, cand.score_range(c0, c1), c1 - c0, c0), ex


def _as_keys(name: str, s, n: int, offset: int, whole: bool = False) -> np.ndarray:
    """Validate ``n`` scores starting at flat index ``offset``; return their uint32 keys."""
    if not isinstance(s, np.ndarray) or s.dtype != np.dtype("=f4"):
        found = s.dtype if isinstance(s, np.ndarray) else type(s).__name__
        raise SelectionError(
            f"scores of tensor {name!r} must be a native float32 numpy array, found {found}; "
            "convert with .astype(np.float32)"
        )
    if s.size != n:
        raise SelectionError(
            f"scores of tensor {name!r} have {s.size} elements, expected numel={n}"
            if whole
            else f"score_range of tensor {name!r} returned {s.size} elements for entries "
            f"[{offset}, {offset + n}), expected {n}"
        )
    keys = np.ascontiguousarray(s.reshape(-1)).view(np.uint32)
    if keys.size and int(keys.max()) >= KEY_INF:
        keys = _repair_or_raise(name, keys, offset)
    return keys


def _repair_or_raise(name: str, keys: np.ndarray, offset: int) -> np.ndarray:
    """Raise on NaN/inf/negative scores; map -0.0 to +0.0 (the only harmless large key)."""
    mag = keys & np.uint32(0x7FFFFFFF)
    bad = np.flatnonzero(mag >= KEY_INF)
    if bad.size:
        what = "NaN" if mag[bad[0]] > KEY_INF else "infinite"
        raise SelectionError(
            f"tensor {name!r} has {bad.size} {what}/non-finite scores (first at flat index "
            f"{offset + int(bad[0])}); the base or fine-tuned tensor holds NaN or inf: fix or "
            "exclude it"
        )
    neg = np.flatnonzero((keys >= _SIGN) & (mag != 0))
    if neg.size:
        raise SelectionError(
            f"tensor {name!r} has {neg.size} negative scores (first at flat index "
            f"{offset + int(neg[0])}); scores must be magnitudes |delta| >= 0"
        )
    return mag  # only -0.0 entries had the sign bit: now +0.0


def chunks(numel: int, exclude: np.ndarray | None) -> Iterator[tuple[int, int, np.ndarray | None]]:
    """Yield ``(start, stop, excluded local offsets or None)`` covering ``range(numel)``."""
    for c0 in range(0, numel, CHUNK):
        c1 = min(c0 + CHUNK, numel)
        ex = None
        if exclude is not None and exclude.size:
            lo, hi = np.searchsorted(exclude, (c0, c1))
            if hi > lo:
                ex = exclude[lo:hi] - c0
        yield c0, c1, ex


def hi16(keys: np.ndarray) -> np.ndarray:
    """High 16 bits of contiguous uint32 keys, as a strided uint16 view (no shift, no copy)."""
    return keys.view(np.uint16)[_HI::2]


def lo16(keys: np.ndarray) -> np.ndarray:
    """Low 16 bits of contiguous uint32 keys, as a strided uint16 view."""
    return keys.view(np.uint16)[_LO::2]


def at_least(kc: np.ndarray, key: int, ex: np.ndarray | None) -> np.ndarray | None:
    """Offsets (int64) of a chunk's eligible keys >= ``key``; ``None`` when that is all of them."""
    if key == 0 and ex is None:
        return None
    m = kc >= np.uint32(key) if key else np.ones(kc.size, dtype=bool)
    if ex is not None:
        m[ex] = False
    return np.flatnonzero(m)  # then index with it: boolean indexing is several times slower


def take(kc: np.ndarray, key: int, ex: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray]:
    """Offsets (uint32, or ``None`` for "all") and copies of a chunk's eligible keys >= ``key``."""
    loc = at_least(kc, key, ex)
    if loc is None:
        return None, kc.copy()
    return loc.astype(np.uint32), kc[loc]


def boundary(hist: np.ndarray, k: int, start: int = 0) -> tuple[int, int]:
    """Bin ``j`` holding the k-th largest entry, and how many entries of bin ``j`` are needed.

    ``hist[i]`` counts entries in bin ``i`` (larger bin = larger key); requires
    ``1 <= k <= hist[start:].sum()`` and the answer to be ``>= start`` (bins below ``start`` are
    not looked at: the running cut only rises). Returns ``(j, need)`` with
    ``count(bins > j) < k <= count(bins >= j)`` and ``need = k - count(bins > j)``.
    """
    above = np.cumsum(hist[start:][::-1])[::-1]  # above[i] = entries in bins >= start + i
    j = int(np.count_nonzero(above >= k)) - 1
    higher = int(above[j + 1]) if j + 1 < above.size else 0
    return start + j, k - higher


def collect(cands: Sequence, lo: int, progress: Progress, stage: str) -> tuple[Pieces, int]:
    """A pass keeping (offsets, keys) of every eligible entry with key >= ``lo``."""
    pieces: Pieces = []
    total = 0
    for i, cand in enumerate(cands):
        plist = []
        for c0, kc, ex in key_chunks(cand):
            loc, sel = take(kc, lo, ex)
            plist.append((c0, loc, sel))
            total += sel.size
        pieces.append(plist)
        _tick(progress, stage, i + 1, len(cands))
    return pieces, total


def low_histogram(cands: Sequence, b: int, progress: Progress, stage: str) -> np.ndarray:
    """A pass histogramming the low 16 bits of eligible keys whose high 16 bits equal ``b``."""
    h2 = np.zeros(NBINS, dtype=np.int64)
    for i, cand in enumerate(cands):
        for _, kc, ex in key_chunks(cand):
            m = hi16(kc) == b
            if ex is not None:
                m[ex] = False
            h2 += np.bincount(lo16(kc[np.flatnonzero(m)]), minlength=NBINS)
        _tick(progress, stage, i + 1, len(cands))
    return h2


def emit(cands: Sequence, t: int, r: int, progress: Progress, stage: str) -> Iterator[np.ndarray]:
    """A pass yielding, per candidate, keys > ``t`` plus the first ``r`` eligible keys == ``t``."""
    tt = np.uint32(t)
    for i, cand in enumerate(cands):
        parts = []
        for c0, kc, ex in key_chunks(cand):
            m = kc > tt
            if r > 0:
                eq = kc == tt
                if ex is not None:
                    eq[ex] = False
                ties = np.flatnonzero(eq)[:r]
                r -= ties.size
                m[ties] = True
            if ex is not None:
                m[ex] = False
            parts.append(np.flatnonzero(m) + c0)
        _tick(progress, stage, i + 1, len(cands))
        yield _concat(parts)


def threshold_from_pieces(pieces: Pieces, b: int, need: int) -> tuple[int, int]:
    """Exact threshold key and tie count from retained pieces holding all of bin ``b``."""
    h2 = np.zeros(NBINS, dtype=np.int64)
    for plist in pieces:
        for _, _, key in plist:
            h2 += np.bincount(lo16(key[np.flatnonzero(hi16(key) == b)]), minlength=NBINS)
    lo_bits, r = boundary(h2, need)
    return (b << 16) | lo_bits, r


def resolve_pieces(pieces: Pieces, t: int, r: int) -> list[np.ndarray]:
    """Selection from retained pieces: keys > ``t`` plus the first ``r`` keys == ``t``.

    Frees each candidate's pieces as it goes, so retained and result memory do not add up.
    """
    out = []
    for c in range(len(pieces)):
        sel, r = resolve_one(pieces, c, t, r)
        out.append(sel)
    return out


def resolve_one(pieces: Pieces, c: int, t: int, r: int) -> tuple[np.ndarray, int]:
    """Candidate ``c``'s selection from its pieces (then freed), and the ties still to take."""
    parts = []
    tt = np.uint32(t)
    for c0, loc, key in pieces[c]:
        m = key > tt
        if r > 0:
            ties = np.flatnonzero(key == tt)[:r]
            r -= ties.size
            m[ties] = True
        sel = np.flatnonzero(m)
        parts.append(sel + c0 if loc is None else np.add(loc[sel], c0, dtype=np.int64))
    pieces[c] = []
    return _concat(parts), r


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return parts[0].astype(np.int64, copy=False) if len(parts) == 1 else np.concatenate(parts)


def _tick(progress: Progress, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)
