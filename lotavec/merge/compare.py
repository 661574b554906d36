"""Overlap of tickets: the report a user reads before choosing a merge method (API twin of
``lotavec overlap``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ..models import open_model
from ..ticket import Ticket, load_ticket
from .config import MergeParams
from .methods import SparseDelta
from .overlap import OverlapReport, assert_disjoint, overlap_report

Progress = Callable[[str, int, int], None] | None


def _parts(tks: Sequence[Ticket], src: Any) -> Iterator[tuple[str, list[SparseDelta | None]]]:
    names = list(dict.fromkeys(n for t in tks for n in t.names))
    for n in names:
        parts: list[SparseDelta | None] = []
        for t in tks:
            if n not in t:
                parts.append(None)
                continue
            numel = t.info(n)["numel"]
            if src is None:
                idx = t.indices(n)
                parts.append(SparseDelta(idx, np.ones(idx.size, np.float32), numel))
            else:
                tt = t[n]
                parts.append(SparseDelta(tt.indices, tt.delta(np.take(src.array(n).reshape(-1), tt.indices)), numel))
        if src is not None and n in src:
            src.release(n)
        yield n, parts


def ticket_overlap(tickets: Sequence[Ticket | str], *, base: Any = None, ties: MergeParams | None = None,
                   progress: Progress = None) -> tuple[OverlapReport, bool]:
    """Pairwise overlap of tickets (total, per tensor, per layer), sign agreement and a TIES preview.

    Args:
        tickets: tickets or ticket paths / Hub ids.
        base: the base model; needed for the signs of the deltas (sign agreement, TIES preview).
            Without it, only the overlap counts are meaningful.
        ties: the ``ties``/``dare_ties`` parameters to preview (default: PEFT ``ties``, no trim).
        progress: ``progress(stage, done, total)``.

    Returns:
        ``(report, signs_known)``; when ``signs_known`` is false the report's sign fields and
        TIES preview are removed (``sign_agree`` = 0, ``ties`` = None).
    """
    tks = [t if isinstance(t, Ticket) else load_ticket(t) for t in tickets]
    labels = [t.path or f"ticket{i}" for i, t in enumerate(tks)]
    src = open_model(base, role="base") if base is not None else None
    try:
        total = len({n for t in tks for n in t.names})
        rep = overlap_report(_parts(tks, src), labels, ties=ties, progress=progress, total=total)
    finally:
        if src is not None:
            src.close()
    if src is None:
        strip = lambda ps: tuple(dataclasses.replace(p, sign_agree=0) for p in ps)  # noqa: E731
        rep = dataclasses.replace(rep, pairs=strip(rep.pairs), ties=None,
                                  tensors={k: strip(v) for k, v in rep.tensors.items()},
                                  layers={k: strip(v) for k, v in rep.layers.items()})
    return rep, src is not None


def check_disjoint_tickets(tickets: Sequence[Ticket], progress: Progress = None) -> None:
    """Raise :class:`~lotavec.errors.DisjointnessError` with a report if any tickets overlap."""
    labels = [t.path or f"ticket{i}" for i, t in enumerate(tickets)]
    total = len({n for t in tickets for n in t.names})
    assert_disjoint(_parts(tickets, None), labels, progress=progress, total=total)
