"""Pass 1 of the selection: a histogram above a rising cut, retaining what may be selected.

The cut is the high-16-bit bin of the k-th largest key counted so far. It only rises, so an entry
below it can never be selected: it is neither counted nor kept. While the cut is still 0 (fewer
than k entries seen, or fewer than k non-zero ones), zero scores are kept apart: the tie rule can
only ever need the *first* ``k - (non-zero entries)`` of them, so only that prefix is kept, which
keeps "select more entries than changed" (a threshold at 0) to one pass as well.
"""

from __future__ import annotations

import numpy as np

from . import _radix
from ._radix import NBINS, Pieces, at_least, boundary, hi16, key_chunks, take


class Scan:
    """Pass 1 state: ``hist`` (exact for bins at or above ``cut``), counts, retained entries.

    Args:
        k: entries to select (``1 <= k < eligible``).
        budget: bytes the retained entries may take (8 per entry are counted).
        retain: keep entries (else only histogram them; ``pieces`` is then ``None``).
    """

    def __init__(self, k: int, budget: int, retain: bool):
        self.k = k
        self.hist = np.zeros(NBINS, dtype=np.int64)
        self.counted = 0  # entries in hist
        self.zeros = 0  # eligible keys == 0 (exact while the cut is 0)
        self.cut = 0  # key; multiple of NBINS
        self.budget = budget
        self.pieces: Pieces | None = [] if retain else None
        self.zero_prefix: list[tuple[int, np.ndarray]] = []  # (candidate, flat indices) in order
        self.zeros_kept = 0
        self.retained = 0

    @property
    def positives(self) -> int:
        """Eligible entries with a non-zero key (exact while the cut is 0)."""
        return self.counted - self.zeros

    def add(self, cand) -> None:
        """Histogram (and retain) one candidate's eligible keys at or above the cut."""
        ci = -1
        if self.pieces is not None:
            self.pieces.append([])
            ci = len(self.pieces) - 1
        for c0, kc, ex in key_chunks(cand):
            if self.pieces is None:
                loc = at_least(kc, self.cut, ex)
                self._count(kc if loc is None else kc[loc], None)
                continue
            zeros_apart = self.cut == 0
            loc, sel = take(kc, 1 if zeros_apart else self.cut, ex)
            self.pieces[ci].append((c0, loc, sel))
            self.retained += sel.size
            nz = kc.size - (0 if ex is None else ex.size) - sel.size if zeros_apart else None
            self._count(sel, nz)
            if nz:
                self._keep_zeros(ci, kc, c0, ex)
            self._maybe_prune()

    def _count(self, sel: np.ndarray, zeros_apart: int | None) -> None:
        """Histogram ``sel`` (plus ``zeros_apart`` zero keys), then raise the cut if k counted."""
        h = np.bincount(hi16(sel), minlength=NBINS)
        n = sel.size
        if zeros_apart is not None:
            h[0] += zeros_apart
            n += zeros_apart
            self.zeros += zeros_apart
        elif self.cut == 0:
            self.zeros += sel.size - int(np.count_nonzero(sel))
        self.hist += h
        self.counted += n
        if self.counted >= self.k:
            self.cut = boundary(self.hist, self.k, self.cut >> 16)[0] << 16

    def _keep_zeros(self, ci: int, kc: np.ndarray, c0: int, ex: np.ndarray | None) -> None:
        """Keep the chunk's zeros while the prefix of zeros kept may still be needed."""
        room = self.k - self.positives - self.zeros_kept
        if room > 0:
            m = kc == 0
            if ex is not None:
                m[ex] = False
            z = np.flatnonzero(m)[:room] + c0
            self.zero_prefix.append((ci, z))
            self.zeros_kept += z.size
            self.retained += z.size

    def _trim_zeros(self) -> None:
        """Drop kept zeros beyond the most the tie rule can still take (from the end)."""
        bound = max(0, self.k - self.positives) if self.cut == 0 else 0
        while self.zeros_kept > bound:
            ci, z = self.zero_prefix.pop()
            excess = self.zeros_kept - bound
            if excess < z.size:
                self.zero_prefix.append((ci, z[: z.size - excess]))
            self.zeros_kept -= min(excess, z.size)
            self.retained -= min(excess, z.size)

    def _maybe_prune(self) -> None:
        """Drop retained entries below the cut when over budget or when that frees half.

        ``hist`` counts every entry ever retained, so the entries that must stay are known
        before any work; retention is abandoned, without pruning, when even they exceed 3/4 of
        the budget.
        """
        self._trim_zeros()
        if self.cut == 0:
            keep = self.positives + self.zeros_kept
        else:
            keep = int(self.hist[self.cut >> 16 :].sum())
        if 8 * self.retained > self.budget:
            if 8 * keep > self.budget * 3 // 4:
                self.pieces = None  # retention does not pay off: fall back to more passes
                self.zero_prefix, self.zeros_kept = [], 0
                return
        elif self.retained - keep < max(keep, _radix.PRUNE_MIN):
            return
        cut = np.uint32(self.cut)
        for plist in self.pieces:
            for i, (c0, loc, key) in enumerate(plist):
                if key.size and key.min() < cut:
                    p = np.flatnonzero(key >= cut)
                    plist[i] = (c0, p.astype(np.uint32) if loc is None else loc[p], key[p])
        self.retained = keep

    def pop_zeros(self, ci: int, r: int) -> tuple[np.ndarray, int]:
        """Candidate ``ci``'s kept zeros among the first ``r`` (in order), freeing them.

        Call for candidates in increasing order; returns the zeros and how many remain to take.
        """
        parts = []
        while self.zero_prefix and self.zero_prefix[0][0] == ci:
            z = self.zero_prefix.pop(0)[1][:r]
            r -= z.size
            parts.append(z)
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)), r
