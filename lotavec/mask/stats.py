"""Per-tensor and total counts of a selection, for reports, tickets and the CLI summary."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import SelectionError


def mask_stats(selection: Mapping[str, np.ndarray], numels: Mapping[str, int]) -> dict:
    """Summarise a selection.

    Args:
        selection: ``{name: flat indices}`` (as returned by :func:`select_topk`); tensors absent
            from it count as empty.
        numels: ``{name: numel}`` of every candidate tensor (defines the order and the totals).

    Returns:
        ``{"tensors": {name: {"nnz", "numel", "density"}}, "nnz", "numel", "density",
        "tensors_total", "tensors_selected", "density_min", "density_max"}``; densities are
        floats (0.0 for an empty tensor), counts are ints.

    Raises:
        SelectionError: a selected tensor missing from ``numels``, or more indices than entries.
    """
    extra = [n for n in selection if n not in numels]
    if extra:
        raise SelectionError(f"selection has tensors that are not candidates: {extra[:5]}")
    per = {}
    for name, numel in numels.items():
        numel = int(numel)
        nnz = int(np.asarray(selection.get(name, ())).size)
        if nnz > numel:
            raise SelectionError(f"tensor {name!r}: {nnz} selected indices but numel is {numel}")
        per[name] = {"nnz": nnz, "numel": numel, "density": nnz / numel if numel else 0.0}
    nnz = sum(t["nnz"] for t in per.values())
    numel = sum(t["numel"] for t in per.values())
    dens = [t["density"] for t in per.values() if t["numel"]]
    return {
        "tensors": per,
        "nnz": nnz,
        "numel": numel,
        "density": nnz / numel if numel else 0.0,
        "tensors_total": len(per),
        "tensors_selected": sum(1 for t in per.values() if t["nnz"]),
        "density_min": min(dens, default=0.0),
        "density_max": max(dens, default=0.0),
    }
