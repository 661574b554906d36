"""Reports about tickets: sizes, densities and the entropy floor (used by ``lotavec inspect``)."""

from __future__ import annotations

import math
import os
from typing import Any

from .format.manifest import FORMAT_MAJOR
from .ticket import Ticket


def entropy_bits(p: float) -> float:
    """Binary entropy H(p) in bits."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def ticket_report(ticket: Ticket) -> dict[str, Any]:
    """Per-tensor and total sizes of a file-backed ticket, with the mask's entropy floor.

    Returns:
        A JSON-ready dict with ``format_version``, ``total_bytes`` (file size), ``total_numel``,
        ``total_nnz``, ``density``, ``bits_per_param``, ``mask_bits``, ``mask_floor_bits``,
        ``mask_vs_floor``, ``value_bits_per_nnz``, ``base``, ``provenance`` and ``tensors``
        (each with ``name``, ``shape``, ``dtype``, ``nnz``, ``numel``, ``density``, ``values``,
        ``mask_codecs``, ``bytes``, ``mask_bytes``, ``value_bytes``, ``bits_per_param``).
    """
    f = ticket._file
    tensors = []
    tot_mask = tot_val = tot_nnz = tot_numel = 0
    floor = 0.0
    for name in ticket.names:
        info = ticket.info(name)
        mb = vb = 0
        if f is not None:
            e = f.entry(name)
            mb = sum(c.mask_bytes for c in e.chunks)
            vb = sum(c.value_bytes for c in e.chunks)
        numel, nnz = info["numel"], info["nnz"]
        p = nnz / numel if numel else 0.0
        floor += numel * entropy_bits(p)
        tensors.append({
            "name": name, "shape": info["shape"], "dtype": info["dtype"], "nnz": nnz, "numel": numel,
            "density": p, "values": info["values"], "mask_codecs": info["mask_codecs"],
            "bytes": mb + vb, "mask_bytes": mb, "value_bytes": vb,
            "bits_per_param": 8 * (mb + vb) / numel if numel else 0.0,
        })
        tot_mask += mb
        tot_val += vb
        tot_nnz += nnz
        tot_numel += numel
    total_bytes = os.path.getsize(ticket.path) if ticket.path else tot_mask + tot_val
    return {
        "path": ticket.path,
        "format_version": f.manifest.version[0] if f is not None else FORMAT_MAJOR,
        "format_minor": f.manifest.version[1] if f is not None else 0,
        "total_bytes": total_bytes,
        "total_numel": tot_numel,
        "total_nnz": tot_nnz,
        "density": tot_nnz / tot_numel if tot_numel else 0.0,
        "bits_per_param": 8 * total_bytes / tot_numel if tot_numel else 0.0,
        "mask_bits": 8 * tot_mask,
        "mask_floor_bits": floor,
        "mask_vs_floor": (8 * tot_mask / floor) if floor else None,
        "value_bits_per_nnz": 8 * tot_val / tot_nnz if tot_nnz else 0.0,
        "base": ticket.base,
        "provenance": ticket.provenance,
        "tensors": tensors,
    }
