"""Mask selection: which entries of which tensors enter a ticket.

* :func:`select_topk` — exact, streaming, deterministic top-k by score (global or per tensor);
* :func:`iter_topk` — the same selection yielded tensor by tensor, memory independent of k;
* :func:`select_changed` — every changed entry (``--all-changed``);
* :func:`iter_values` — either selection with the selected values, read in the same pass;
* :func:`random_mask` — a uniformly random mask of exactly k entries (baseline);
* :func:`mask_stats` — per-tensor and total counts for reports.

Definitions of density, k, scope and the tie rule: :mod:`lotavec.mask.select`.
"""

from .random import random_mask
from .select import (
    Candidate,
    iter_topk,
    iter_values,
    resolve_density,
    resolve_k,
    select_changed,
    select_topk,
)
from .stats import mask_stats

__all__ = [
    "Candidate",
    "iter_topk",
    "iter_values",
    "mask_stats",
    "random_mask",
    "resolve_density",
    "resolve_k",
    "select_changed",
    "select_topk",
]
