"""The selection of :mod:`lotavec.mask.select` with compiled kernels, on two threads.

Used for candidates that give their base and fine-tuned storage arrays (``Candidate.pair``) when
``lotavec._cselect`` is built and ``LOTAVEC_NATIVE`` is not ``0``. The kernels compute each key
``bits(|f32(ft) - f32(base)|)`` on the fly (no score arrays) and candidates run on a pool of two
threads (ctypes releases the GIL). The result is identical to the numpy engine's:

* pass 1 histograms the high 16 bits of every eligible non-zero key and counts the zeros of each
  candidate. If fewer than k keys are non-zero the threshold is 0 and the zero counts give each
  candidate's share of the ties directly;
* else pass 2 histograms the low 16 bits of the boundary bin, which gives the threshold key t and
  how many ties r to take; when r is less than all the ties, a counting pass gives each candidate's
  ties at t, so that every candidate knows its share (``quota``) before emitting in parallel;
* the last pass emits, per candidate, the keys > t and its first ``quota`` keys == t.

A non-finite score makes a kernel stop and report it; the numpy path then re-reads that candidate
to raise its exact :class:`~lotavec.errors.SelectionError`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np

from .. import native
from ..errors import SelectionError
from . import _radix
from ._radix import NBINS, Progress

_DTYPES = {"BF16": (0, np.uint16), "F16": (1, np.uint16), "F32": (2, np.uint32)}
#: Value modes of the emission kernel.
VALUES = {None: 0, "raw": 1, "ulpdiff": 2}
_ALL = np.iinfo(np.int64).max
_NONE_ABOVE = 0xFFFFFFFF  # no finite key is above it
WORKERS = 2
#: Candidates emitted ahead of the consumer: one, so that at most two selections (the one being
#: consumed and the next) are held; the consumer (the ticket writer) uses the other core.
EMIT_AHEAD = 1


def usable(cands: Sequence) -> bool:
    """Whether the compiled path applies: kernels loaded and every candidate has ``pair``."""
    return native.kernels("select") is not None and all(c.pair is not None for c in cands)


def _arrays(c) -> tuple[np.ndarray, np.ndarray, int, type]:
    b, f, dtype = c.pair()
    if dtype not in _DTYPES:
        raise SelectionError(f"tensor {c.name!r}: dtype {dtype!r} is not one of BF16, F16, F32")
    code, st = _DTYPES[dtype]
    arrs = []
    for a in (b, f):
        a = np.ascontiguousarray(a).reshape(-1)
        if a.dtype.itemsize != np.dtype(st).itemsize or a.size != c.numel:
            raise SelectionError(
                f"tensor {c.name!r}: {dtype} storage must hold {c.numel} {np.dtype(st)} values, "
                f"got {a.size} of {a.dtype}"
            )
        arrs.append(a)
    return arrs[0], arrs[1], code, st


def _ex(c) -> tuple[int, int]:
    return (native.ptr(c.exclude), c.exclude.size) if c.exclude is not None else (0, 0)


def _nonfinite(c, pos: int) -> SelectionError:
    """The numpy path's error for candidate ``c`` (whose kernel found a bad score at ``pos``)."""
    for _ in _radix.key_chunks(c):  # raises the exact error of the numpy engine
        pass
    return SelectionError(f"tensor {c.name!r}: non-finite score at flat index {pos}")


def _release(c) -> None:
    if c.release is not None:
        c.release()


class _Hists(threading.local):
    """One 65536-bin histogram per thread that uses it (summed after the pass)."""

    def __init__(self, registry: list):  # runs again in each thread, with the same registry
        self.h = np.zeros(NBINS, dtype=np.int64)
        registry.append(self.h)


def _scan_pass(cands: Sequence, mode: int, param: int, progress: Progress, stage: str):
    """Run one scan kernel over all candidates; returns (summed histogram, per-candidate count)."""
    lib = native.kernels("select")
    registry: list[np.ndarray] = []
    local = _Hists(registry)

    def one(c) -> int:
        b, f, code, _ = _arrays(c)
        cnt = np.zeros(1, dtype=np.int64)
        bad = lib.lv_sel_scan(native.ptr(b), native.ptr(f), c.numel, code, *_ex(c), mode, param,
                              native.ptr(local.h), native.ptr(cnt))
        _release(c)
        if bad >= 0:
            raise _nonfinite(c, bad)
        return int(cnt[0])

    counts = _ordered(cands, one, progress, stage, window=len(cands))
    hist = np.zeros(NBINS, dtype=np.int64)
    for h in registry:
        hist += h
    return hist, counts


def _ordered(cands: Sequence, fn: Callable, progress: Progress, stage: str, window: int) -> list:
    return list(_iter_ordered(cands, fn, progress, stage, window))


def _iter_ordered(cands: Sequence, fn: Callable, progress: Progress, stage: str, window: int):
    """``fn(c)`` for every candidate on the pool, yielded in candidate order (at most ``window``
    ahead); the first error in candidate order is raised."""
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="lotavec-select") as pool:
        pending: deque = deque()
        todo = iter(cands)
        try:
            for c in todo:
                pending.append(pool.submit(fn, c))
                if len(pending) >= max(window, 1):
                    break
            done = 0
            while pending:
                r = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(fn, nxt))
                done += 1
                _radix._tick(progress, stage, done, len(cands))
                yield r
        finally:
            for p in pending:
                p.cancel()


def _shares(counts: list[int], r: int) -> list[int]:
    """Ties taken from each candidate: the first ``r`` in candidate order (``_ALL``: all of its
    ties, which lets the kernel skip counting them)."""
    out = []
    for n in counts:
        q = min(n, r)
        out.append(_ALL if q == n else q)
        r -= q
    return out


def threshold(cands: Sequence, k: int, progress: Progress) -> tuple[int, list[int]]:
    """Threshold key t and each candidate's tie quota, for ``0 < k < eligible``."""
    hist, zeros = _scan_pass(cands, 0, 0, progress, "select pass 1")
    positives = int(hist.sum())
    if positives < k:  # every non-zero key, then the first zeros in order
        return 0, _shares(zeros, k - positives)
    b, need = _radix.boundary(hist, k)
    h2, _ = _scan_pass(cands, 1, b, progress, "select pass 2")
    if b == 0:  # zero keys are counted apart (they are not in hist)
        h2[0] -= sum(zeros)
    if int(h2.sum()) != int(hist[b]):
        from ._engine import changed_error

        raise changed_error(f"boundary bin holds {int(h2.sum())} entries, expected {int(hist[b])}")
    lo, r = _radix.boundary(h2, need)
    t = (b << 16) | lo
    if r == int(h2[lo]):  # all ties are taken: no need to know where they are
        return t, [_ALL] * len(cands)
    _, eq = _scan_pass(cands, 2, t, progress, "select ties")
    return t, _shares(eq, r)


def emit(c, t: int, quota: int, values: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Candidate ``c``'s eligible entries with key > t and its first ``quota`` with key == t.

    Returns ``(int64 flat indices, values or None)``; values per :data:`VALUES`: fine-tuned bits
    (``"raw"``) or wrap-around fine-tuned − base bits (``"ulpdiff"``), in the storage width.
    """
    lib = native.kernels("select")
    b, f, code, st = _arrays(c)
    cap = c.eligible + 1  # the kernel writes one slot past the last entry it keeps
    idx = np.empty(cap, dtype=np.int64)
    vals = np.empty(cap, dtype=st) if values is not None else None
    n = lib.lv_sel_emit(native.ptr(b), native.ptr(f), c.numel, code, *_ex(c), t, min(quota, _ALL),
                        native.ptr(idx), VALUES[values], native.ptr(vals) if vals is not None else 0)
    _release(c)
    if n < 0:
        raise _nonfinite(c, -1 - n)
    # Copy when the result is much smaller than its buffer, so the buffer's pages are not kept.
    idx = idx[:n].copy() if 4 * n < cap else idx[:n]
    if vals is not None:
        vals = vals[:n].copy() if 4 * n < cap else vals[:n]
    return idx, vals


def iter_global(cands: Sequence, k: int, progress: Progress,
                values: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Global exact top-k (``0 <= k <= eligible``), one candidate at a time, in order."""
    eligible = sum(c.eligible for c in cands)
    if k == 0:  # validate only
        t, quotas, stage = _NONE_ABOVE, [0] * len(cands), "validate scores"
    elif k >= eligible:
        t, quotas, stage = 0, [_ALL] * len(cands), "validate scores"
    else:
        t, quotas = threshold(cands, k, progress)
        stage = "select pass 3"
    q = dict(zip((id(c) for c in cands), quotas))
    found = 0
    for idx, vals in _iter_ordered(cands, lambda c: emit(c, t, q[id(c)], values), progress, stage,
                                   window=EMIT_AHEAD):
        found += idx.size
        yield idx, vals
    if found != k:
        from ._engine import changed_error

        raise changed_error(f"selected {found} entries, expected {k}")


def iter_tensor(cands: Sequence, dens: Fraction, progress: Progress,
                values: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Per-tensor top-k (``k_t = floor(density x numel_t + 1/2)``), in candidate order."""
    from .select import _half_up

    def one(c):
        kt = min(_half_up(dens * c.numel), c.eligible)
        return list(iter_global([c], kt, None, values))[0]

    yield from _iter_ordered(cands, one, progress, "select (per tensor)", window=EMIT_AHEAD)


def iter_changed(cands: Sequence, progress: Progress,
                 values: str | None = None) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Every eligible entry with a non-zero key, in candidate order."""
    yield from _iter_ordered(cands, lambda c: emit(c, 0, 0, values), progress, "select changed",
                             window=EMIT_AHEAD)
