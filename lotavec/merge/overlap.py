"""How tickets overlap: the report a user reads before choosing a merge method.

:func:`overlap_report` streams over tensors (one ``(name, parts)`` pair at a time, so nothing but
one tensor's parts is held) and tallies, for every pair of tickets, the entries both store, their
Jaccard index and how often their signs agree there — in total, per tensor and per layer — plus
what a TIES merge would trim and drop (:func:`ties_breakdown`).
:func:`assert_disjoint` is the cheap pre-check of ``--method disjoint`` over a whole merge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import DisjointnessError, MergeConfigError
from .config import MergeParams
from .methods import SparseDelta, elect, overlap_counts, prepare_parts

#: A tensor's layer: the number after ``layers.``, ``layer.``, ``h.``, ``blocks.`` or ``block.``.
LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)\.")

Progress = Callable[[str, int, int], None]
TensorStream = Iterable[tuple[str, Sequence[SparseDelta | None]]]


def layer_of(name: str) -> str:
    """The layer number of a tensor name as a string (``"12"``), or ``"other"``."""
    m = LAYER_RE.search(name)
    return m.group(1) if m else "other"


@dataclass(frozen=True)
class PairOverlap:
    """Overlap of tickets ``a`` and ``b`` (positions in the report's ``tickets``).

    Attributes:
        a, b: ticket positions, a < b.
        nnz_a, nnz_b: entries each stores.
        intersection: entries both store.
        sign_agree: of those, how many have the same sign in both (zero counts as a sign).
    """

    a: int
    b: int
    nnz_a: int
    nnz_b: int
    intersection: int
    sign_agree: int

    @property
    def union(self) -> int:
        """Entries stored by either ticket."""
        return self.nnz_a + self.nnz_b - self.intersection

    @property
    def jaccard(self) -> float:
        """intersection / union (0 when both are empty)."""
        return self.intersection / self.union if self.union else 0.0

    @property
    def sign_agreement(self) -> float | None:
        """Fraction of shared entries with equal signs (``None`` without shared entries)."""
        return self.sign_agree / self.intersection if self.intersection else None

    def to_json(self) -> dict:
        """A JSON-able dict, derived figures included."""
        return {"a": self.a, "b": self.b, "nnz_a": self.nnz_a, "nnz_b": self.nnz_b,
                "intersection": self.intersection, "union": self.union,
                "jaccard": self.jaccard, "sign_agree": self.sign_agree,
                "sign_agreement": self.sign_agreement}


@dataclass(frozen=True)
class TiesPreview:
    """What a consensus merge with ``params`` would do, per ticket (totals and per tensor).

    Attributes:
        params: the ``ties``/``dare_ties`` parameters previewed.
        trimmed: per ticket, stored entries removed by the trim (or DARE's drop).
        dropped: per ticket, entries surviving the trim but outvoted by the sign election.
        per_tensor: tensor name → (trimmed, dropped) per ticket, for tensors where either is
            nonzero.
    """

    params: MergeParams
    trimmed: tuple[int, ...]
    dropped: tuple[int, ...]
    per_tensor: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    def to_json(self) -> dict:
        """A JSON-able dict."""
        return {"params": self.params.to_json(), "trimmed": list(self.trimmed),
                "dropped": list(self.dropped),
                "per_tensor": {k: {"trimmed": list(t), "dropped": list(d)}
                               for k, (t, d) in self.per_tensor.items()}}


@dataclass(frozen=True)
class OverlapReport:
    """Pairwise overlap of tickets, in total, per tensor and per layer.

    Attributes:
        tickets: the tickets' display names, in merge order.
        nnz: total stored entries per ticket.
        pairs: one :class:`PairOverlap` per pair over all tensors.
        tensors: tensor name → pairs on that tensor.
        layers: layer (``"0"``, ``"1"``..., ``"other"``) → pairs summed over its tensors.
        ties: the TIES preview, or ``None`` when not asked for.
    """

    tickets: tuple[str, ...]
    nnz: tuple[int, ...]
    pairs: tuple[PairOverlap, ...]
    tensors: dict[str, tuple[PairOverlap, ...]]
    layers: dict[str, tuple[PairOverlap, ...]]
    ties: TiesPreview | None = None

    @property
    def disjoint(self) -> bool:
        """Whether no two tickets share an entry."""
        return all(p.intersection == 0 for p in self.pairs)

    def pair(self, a: int, b: int) -> PairOverlap:
        """The total overlap of tickets ``a`` and ``b`` (either order)."""
        a, b = min(a, b), max(a, b)
        return next(p for p in self.pairs if (p.a, p.b) == (a, b))

    def to_json(self) -> dict:
        """A JSON-able dict of the whole report (what ``lotavec overlap --json`` prints)."""
        def table(pairs):
            return [p.to_json() for p in pairs]
        return {"tickets": list(self.tickets), "nnz": list(self.nnz),
                "disjoint": self.disjoint, "pairs": table(self.pairs),
                "tensors": {k: table(v) for k, v in self.tensors.items()},
                "layers": {k: table(v) for k, v in self.layers.items()},
                "ties": self.ties.to_json() if self.ties is not None else None}


class _Tally:
    """Counts for one scope: nnz per ticket, intersections and sign agreements per pair."""

    def __init__(self, n: int) -> None:
        self.nnz = np.zeros(n, np.int64)
        self.inter = np.zeros((n, n), np.int64)
        self.agree = np.zeros((n, n), np.int64)

    def add(self, other: _Tally) -> None:
        self.nnz += other.nnz
        self.inter += other.inter
        self.agree += other.agree

    def pairs(self) -> tuple[PairOverlap, ...]:
        n = self.nnz.size
        return tuple(PairOverlap(a, b, int(self.nnz[a]), int(self.nnz[b]),
                                 int(self.inter[a, b]), int(self.agree[a, b]))
                     for a in range(n) for b in range(a + 1, n))


def _tensor_tally(parts: Sequence[SparseDelta | None], n: int) -> _Tally:
    t = _Tally(n)
    present = [(i, p) for i, p in enumerate(parts) if p is not None and p.nnz]
    for i, p in present:
        t.nnz[i] = p.nnz
    for x, (i, p) in enumerate(present):
        for j, q in present[x + 1:]:
            loc = np.searchsorted(q.indices, p.indices)
            loc[loc == q.nnz] = 0
            hit = q.indices[loc] == p.indices
            t.inter[i, j] = np.count_nonzero(hit)
            if t.inter[i, j]:
                same = np.sign(p.values[hit]) == np.sign(q.values[loc[hit]])
                t.agree[i, j] = np.count_nonzero(same)
    return t


def ties_breakdown(name: str, parts: Sequence[SparseDelta | None], params: MergeParams, *,
                   trims: Mapping[int, np.ndarray] | None = None) -> tuple[list[int], list[int]]:
    """What a consensus merge (``ties``, ``dare_ties``) would do to each ticket on one tensor.

    Args:
        name, parts, params, trims: as for :func:`lotavec.merge.methods.merge_tensor`.

    Returns:
        ``(trimmed, dropped)``: per ticket, the stored entries removed by the trim (or DARE)
        and the surviving nonzero entries then outvoted by the sign election.

    Raises:
        MergeConfigError: ``params.method`` has no sign election.
    """
    if params.method not in ("ties", "dare_ties"):
        raise MergeConfigError(f"ties_breakdown needs method ties or dare_ties, "
                               f"got {params.method!r}")
    full, prep = prepare_parts(name, parts, params, trims=trims)
    _, _, matches = elect(prep, [params.weight_of(i) for i in range(len(full))], params)
    trimmed = [p.nnz - idx.size for p, (idx, _) in zip(full, prep)]
    dropped = [int(np.count_nonzero(~m & (val != 0))) for m, (_, val) in zip(matches, prep)]
    return trimmed, dropped


def overlap_report(tensors: TensorStream, tickets: Sequence[str], *,
                   ties: MergeParams | None = None,
                   trims_for: Callable[[str], Mapping[int, np.ndarray]] | None = None,
                   progress: Progress | None = None, total: int = 0) -> OverlapReport:
    """Tally how tickets overlap, streaming over tensors.

    Args:
        tensors: iterable of ``(tensor_name, parts)``, parts holding one
            :class:`~lotavec.merge.methods.SparseDelta` (or ``None``) per ticket, in the order
            of ``tickets``; consumed once (see :func:`iter_tickets` for mappings).
        tickets: display names of the tickets.
        ties: parameters of a ``ties``/``dare_ties`` merge to preview; default PEFT ``ties``
            without trim (density 1: only the sign election drops entries).
        trims_for: with ``ties.scope == "global"``: tensor name → the kept indices per ticket.
        progress: optional ``progress(stage, done, total)`` callback, called per tensor.
        total: number of tensors, for ``progress`` (0 when unknown).

    Returns:
        The :class:`OverlapReport`.

    Raises:
        MergeConfigError: ``ties`` is not a consensus method, or wrong number of parts.
    """
    n = len(tickets)
    ties = ties if ties is not None else MergeParams(method="ties")
    if ties.method not in ("ties", "dare_ties"):
        raise MergeConfigError(f"overlap: the preview needs method ties or dare_ties, "
                               f"got {ties.method!r}")
    grand, per_tensor, per_layer = _Tally(n), {}, {}
    trimmed, dropped = np.zeros(n, np.int64), np.zeros(n, np.int64)
    ties_tensors = {}
    for done, (name, parts) in enumerate(tensors, 1):
        if len(parts) != n:
            raise MergeConfigError(f"overlap: tensor {name!r} has {len(parts)} parts for "
                                   f"{n} tickets")
        t = _tensor_tally(parts, n)
        per_tensor[name] = t.pairs()
        grand.add(t)
        per_layer.setdefault(layer_of(name), _Tally(n)).add(t)
        if any(p is not None and p.nnz for p in parts):
            trims = trims_for(name) if trims_for is not None else None
            tr, dr = ties_breakdown(name, parts, ties, trims=trims)
            trimmed += tr
            dropped += dr
            if any(tr) or any(dr):
                ties_tensors[name] = (tuple(tr), tuple(dr))
        if progress is not None:
            progress("overlap", done, total)
    preview = TiesPreview(ties, tuple(int(x) for x in trimmed), tuple(int(x) for x in dropped),
                          ties_tensors)
    layers = {k: per_layer[k].pairs() for k in sorted(per_layer, key=_layer_key)}
    return OverlapReport(tuple(tickets), tuple(int(x) for x in grand.nnz), grand.pairs(),
                         per_tensor, layers, preview)


def _layer_key(layer: str) -> tuple[int, int]:
    return (1, 0) if layer == "other" else (0, int(layer))


def iter_tickets(tickets: Sequence[Mapping[str, SparseDelta]]
                 ) -> Iterator[tuple[str, list[SparseDelta | None]]]:
    """Stream ``(name, parts)`` over the tensors of several name → delta mappings.

    Names come in first-seen order (ticket by ticket); values are fetched one tensor at a
    time, so lazy mappings (decoding on ``__getitem__``) stream.
    """
    names = list(dict.fromkeys(name for t in tickets for name in t))
    for name in names:
        yield name, [t[name] if name in t else None for t in tickets]


def assert_disjoint(tensors: TensorStream, tickets: Sequence[str], *,
                    progress: Progress | None = None, total: int = 0,
                    max_listed: int = 20) -> None:
    """Check that no two tickets share an entry anywhere, before a ``disjoint`` merge.

    Raises:
        DisjointnessError: listing up to ``max_listed`` overlapping tensors with the pairs and
            counts, and the total; its ``overlaps`` attribute maps every overlapping tensor to
            ``{(i, j): count}``.
    """
    found: dict[str, dict[tuple[int, int], int]] = {}
    for done, (name, parts) in enumerate(tensors, 1):
        counts = overlap_counts([p.indices if p is not None else np.empty(0, np.int64)
                                 for p in parts])
        if counts:
            found[name] = counts
        if progress is not None:
            progress("overlap", done, total)
    if not found:
        return
    lines = [f"  {name}: " + ", ".join(f"{tickets[i]} & {tickets[j]}: {c}"
                                       for (i, j), c in sorted(pairs.items()))
             for name, pairs in list(found.items())[:max_listed]]
    more = len(found) - max_listed
    if more > 0:
        lines.append(f"  ... and {more} more tensors")
    total_shared = sum(c for pairs in found.values() for c in pairs.values())
    err = DisjointnessError(
        f"--method disjoint: the tickets share {total_shared} entries in {len(found)} tensors:\n"
        + "\n".join(lines)
        + "\nRun `lotavec overlap` for the full report, or merge with --method sum, mean or ties.")
    err.overlaps = found  # type: ignore[attr-defined]
    raise err
