"""Extraction: a ticket from any base + fine-tuned pair (``lotavec extract``).

Candidates are chosen by module type (:func:`lotavec.models.select_candidates`), entries by an
exact streaming top-k of ``|fine-tuned − base|`` (:mod:`lotavec.mask`), and values are stored
losslessly (``ulpdiff``): applying the ticket to the base reproduces the fine-tuned value on every
selected entry bit-exactly and leaves the base elsewhere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .errors import DisjointnessError, SelectionError
from .format.dtypes import TICKET_DTYPES, to_float32
from .format.fingerprint import base_digest, base_sample
from .mask import Candidate, iter_topk, iter_values, resolve_k, select_changed, select_topk
from .models import TensorSource, check_compatible, open_model, select_candidates
from .native import kernels
from .ticket import Ticket, TicketTensor, TicketWriter, load_ticket

Progress = Callable[[str, int, int], None] | None


@dataclass(frozen=True)
class ExtractResult:
    """What :func:`extract` did.

    Attributes:
        path: the ticket file written (``None`` when returned in memory).
        ticket: the ticket (file-backed when ``path`` is set).
        candidates: names of the candidate tensors, in order.
        candidate_params: their total number of entries.
        nnz: selected entries; ``density`` = nnz / candidate_params.
        per_tensor: ``{name: nnz}`` for every candidate; ``numels`` their sizes.
        seconds: wall time.
        disjoint_from: ticket paths the result was verified disjoint from.
    """

    path: str | None
    ticket: Ticket
    candidates: list[str]
    candidate_params: int
    nnz: int
    per_tensor: dict[str, int]
    numels: dict[str, int]
    seconds: float
    disjoint_from: list[str] = field(default_factory=list)

    @property
    def density(self) -> float:
        return self.nnz / self.candidate_params if self.candidate_params else 0.0


#: Entries per step of the score computation: its temporaries stay in the CPU cache.
_SCORE_CHUNK = 1 << 15
#: Above this many bytes of selected indices (8 per entry), global selection streams tensor by
#: tensor (:func:`lotavec.mask.iter_topk`: two or three score passes, memory independent of k)
#: instead of holding the whole selection (:func:`lotavec.mask.select_topk`: usually one pass).
_HELD_SELECTION_BYTES = 16 << 20


def _scores(base: TensorSource, ft: TensorSource, name: str, dtype: str) -> Callable[[], np.ndarray]:
    def compute() -> np.ndarray:
        out = _abs_delta(base.array(name).reshape(-1), ft.array(name).reshape(-1), dtype)
        base.release(name)
        ft.release(name)
        return out

    return compute


def _candidate(bsrc: TensorSource, fsrc: TensorSource, name: str, exclude: np.ndarray | None,
               samples: dict[str, str]) -> Candidate:
    """A candidate whose passes read the storage arrays directly (compiled kernels)."""
    dtype = bsrc.info(name)[0]

    def pair() -> tuple[np.ndarray, np.ndarray, str]:
        return bsrc.array(name).reshape(-1), fsrc.array(name).reshape(-1), dtype

    def release() -> None:
        # The base's sampled fingerprint is taken while its pages are still mapped in (after the
        # release, its 4096 scattered reads would each fault a page back in).
        if name not in samples:
            samples[name] = base_sample(bsrc.array(name))
        bsrc.release(name)
        fsrc.release(name)

    return Candidate(name, bsrc.numel(name), _scores(bsrc, fsrc, name, dtype), exclude, pair=pair,
                     release=release)


def _abs_delta(base: np.ndarray, finetuned: np.ndarray, dtype: str) -> np.ndarray:
    """``|finetuned - base|`` in float32 of two flat storage arrays (the selection scores).

    Computed in cache-sized steps into one output array: the same values as converting both
    arrays to float32 first, at about half the memory traffic.
    """
    n = base.size
    out = np.empty(n, np.float32)
    if dtype == "F32":
        np.subtract(finetuned, base, out=out)
        return np.abs(out, out=out)
    tmp = np.empty(min(n, _SCORE_CHUNK), np.float32)
    bf16 = dtype == "BF16"
    for s in range(0, n, _SCORE_CHUNK):
        e = min(s + _SCORE_CHUNK, n)
        o, t = out[s:e], tmp[: e - s]
        if bf16:  # bfloat16 bits are the high half of the float32's
            ob, tb = o.view(np.uint32), t.view(np.uint32)
            np.copyto(ob, finetuned[s:e])
            ob <<= 16
            np.copyto(tb, base[s:e])
            tb <<= 16
        else:
            np.copyto(o, to_float32(finetuned[s:e], dtype))
            np.copyto(t, to_float32(base[s:e], dtype))
        np.subtract(o, t, out=o)
        np.abs(o, out=o)
    return out


def exclusions(tickets: Iterable[Any], names: Sequence[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Union of the entries of earlier tickets, per tensor (for LoTTO / ``--disjoint-from``).

    Args:
        tickets: :class:`Ticket` objects or anything :func:`load_ticket` accepts.
        names: the tensors of interest.

    Returns:
        ``({name: sorted unique int64 indices}, [ticket labels])``.
    """
    out: dict[str, np.ndarray] = {}
    labels = []
    for t in tickets:
        tk = t if isinstance(t, Ticket) else load_ticket(t)
        labels.append(tk.path or repr(tk))
        for n in tk.names:
            if n in names:
                idx = tk.indices(n)
                out[n] = np.union1d(out[n], idx) if n in out else idx
    return out, labels


def check_disjoint(ticket: Ticket, others: Iterable[Any]) -> None:
    """Raise :class:`DisjointnessError` if ``ticket`` shares any entry with ``others``."""
    for o in others:
        ot = o if isinstance(o, Ticket) else load_ticket(o)
        for n in ticket.names:
            if n in ot:
                both = np.intersect1d(ticket.indices(n), ot.indices(n), assume_unique=True)
                if both.size:
                    raise DisjointnessError(
                        f"tensor {n!r}: {both.size} entries are in both tickets ({ot.path or 'ticket'})"
                    )


def extract(base: Any, finetuned: Any, out: str | os.PathLike | None = None, *,
            density: float | None = None, sparsity: float | None = None, k: int | None = None,
            all_changed: bool = False, scope: str = "global",
            include: Sequence[str] = (), exclude: Sequence[str] = (),
            embeddings: bool = False, lm_head: bool = False, norms: bool = False, biases: bool = False,
            disjoint_from: Sequence[Any] = (), values: str = "ulpdiff",
            base_ref: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
            full_digest: bool = False, progress: Progress = None) -> ExtractResult:
    """Build a ticket from a base and a fine-tuned model.

    Args:
        base, finetuned: HF folders (single or sharded safetensors), ``.safetensors`` files, state
            dicts or ``nn.Module`` s.
        out: ticket file to write (atomically); ``None`` returns the ticket in memory.
        density / sparsity / k: how many entries (exactly one, unless ``all_changed``).
        all_changed: keep every entry that differs (lossless conversion of a full fine-tune).
        scope: ``"global"`` (one threshold across candidates, as LoTA) or ``"tensor"``.
        include, exclude: regexes adding / removing candidate tensors.
        embeddings, lm_head, norms, biases: also consider these tensors.
        disjoint_from: earlier tickets whose entries are not eligible (LoTTO); the result is
            verified disjoint from them.
        values: ``"ulpdiff"`` (default, lossless) or ``"raw"`` (lossless, base-free).
        base_ref: ``{"repo_id", "revision"}`` of the base, recorded in the ticket.
        provenance: extra provenance merged into the ticket's.
        full_digest: also record each base tensor's full blake2b digest (``base_digest``: one more
            read of every selected base tensor). By default only the sampled fingerprint is
            recorded, and ``lotavec verify --base --full`` / merge ``verify_base`` check only that.
        progress: ``progress(stage, done, total)``.

    Returns:
        :class:`ExtractResult`.

    Raises:
        TensorMismatchError, SelectionError, DisjointnessError, ModelError.
    """
    t0 = time.perf_counter()
    if all_changed and any(v is not None for v in (density, sparsity, k)):
        raise SelectionError("--all-changed keeps every changed entry; do not combine it with --density/--sparsity")
    if not all_changed and all(v is None for v in (density, sparsity, k)):
        raise SelectionError("say how many entries to keep: --density D, --sparsity S or --all-changed")
    if values not in ("ulpdiff", "raw"):
        raise SelectionError(f"values must be 'ulpdiff' or 'raw' for extraction, got {values!r}")
    bsrc = open_model(base, role="base")
    fsrc = open_model(finetuned, role="fine-tuned")
    try:
        check_compatible(bsrc, fsrc)
        names = select_candidates(bsrc, embeddings=embeddings, lm_head=lm_head, norms=norms, biases=biases,
                                  include=include, exclude=exclude)
        names = [n for n in names if bsrc.info(n)[0] in TICKET_DTYPES]
        if not names:
            raise SelectionError("no candidate tensors: check --include/--exclude and the model's dtype (BF16/F16/F32)")
        excl, labels = exclusions(disjoint_from, names)
        samples: dict[str, str] = {}
        cands = [_candidate(bsrc, fsrc, n, excl.get(n), samples) for n in names]
        how = dict(all_changed=all_changed, density=density, sparsity=sparsity, k=k, scope=scope, progress=progress)
        cand_params = sum(c.numel for c in cands)
        sel_info = {
            "rule": "all_changed" if all_changed else "topk_abs_delta",
            "scope": scope, "density": density, "sparsity": sparsity, "k": k,
            "selected": None, "candidate_tensors": len(names), "candidate_params": cand_params,
            "selected_density": None,
            "tie_rule": "equal |delta| at the threshold: earlier (candidate order, flat index) first",
            "include": list(include), "exclude": list(exclude),
            "embeddings": embeddings, "lm_head": lm_head, "norms": norms, "biases": biases,
            "disjoint_from": labels, "excluded_entries": int(sum(e.size for e in excl.values())),
        }
        prov = {
            "lotavec_version": __version__,
            "selection": sel_info,
            "source": {"base": str(base) if isinstance(base, (str, os.PathLike)) else type(base).__name__,
                       "finetuned": str(finetuned) if isinstance(finetuned, (str, os.PathLike)) else type(finetuned).__name__},
            **(provenance or {}),
        }
        ref = dict(base_ref or {})
        per_tensor: dict[str, int] = {}
        if kernels("select") is not None:  # selection and values in one pass, on two threads
            tensors = _native_tensors(bsrc, cands, per_tensor, values, full_digest, samples, how)
        else:
            tensors = _ticket_tensors(bsrc, fsrc, _selection(cands, **how), per_tensor, values, progress,
                                      len(names), full_digest)
        if out is not None:
            with TicketWriter(out, base=ref, provenance=prov) as w:
                for t in tensors:
                    w.add(t)
                _record_selected(sel_info, per_tensor, cand_params)  # shared with w.provenance
            ticket = load_ticket(out)
        else:
            kept = list(tensors)
            _record_selected(sel_info, per_tensor, cand_params)
            ticket = Ticket(kept, base=ref, provenance=prov)
        if disjoint_from:
            check_disjoint(ticket, disjoint_from)
        return ExtractResult(os.fspath(out) if out is not None else None, ticket, names, cand_params,
                             int(sel_info["selected"]), per_tensor, {c.name: c.numel for c in cands},
                             time.perf_counter() - t0, labels)
    finally:
        bsrc.close()
        fsrc.close()


def _selection(cands: list[Candidate], *, all_changed: bool, density: float | None, sparsity: float | None,
               k: int | None, scope: str, progress: Progress) -> Iterable[tuple[str, np.ndarray]]:
    """``(name, selected flat indices)`` per candidate, in order; streamed when the whole
    selection would not fit the memory bound (see ``_HELD_SELECTION_BYTES``)."""
    if all_changed:
        return select_changed(cands, progress=progress).items()
    if scope == "global":
        total = sum(c.numel for c in cands)
        eligible = sum(c.eligible for c in cands)
        kk = resolve_k(total, k=k, density=density, sparsity=sparsity, eligible=eligible)
        if 8 * kk <= _HELD_SELECTION_BYTES:
            return select_topk(cands, density=density, sparsity=sparsity, k=k, scope=scope, progress=progress).items()
    # Per-tensor scope computes each tensor's scores once either way.
    return iter_topk(cands, density=density, sparsity=sparsity, k=k, scope=scope, progress=progress)


def _record_selected(sel_info: dict[str, Any], per_tensor: dict[str, int], cand_params: int) -> None:
    nnz = sum(per_tensor.values())
    sel_info["selected"] = nnz
    sel_info["selected_density"] = nnz / cand_params if cand_params else 0.0


def _native_tensors(bsrc: TensorSource, cands: list[Candidate], per_tensor: dict[str, int], values: str,
                    full_digest: bool, samples: dict[str, str], how: dict[str, Any]):
    """Like :func:`_ticket_tensors`, with the values read by the selection's last pass."""
    for n, idx, payload in iter_values(cands, values=values, **how):
        per_tensor[n] = int(idx.size)
        if idx.size:
            dtype, shape = bsrc.info(n)
            digest = None
            if full_digest:
                digest = base_digest(bsrc.array(n))
                bsrc.release(n)
            sample = samples.get(n) or base_sample(bsrc.array(n))
            yield TicketTensor(n, tuple(shape), dtype, idx, values, payload, sample, digest)
        del idx, payload
        if how["progress"]:
            how["progress"]("write", len(per_tensor), len(cands))


def _ticket_tensors(bsrc: TensorSource, fsrc: TensorSource, selection: Iterable[tuple[str, np.ndarray]],
                    per_tensor: dict[str, int], values: str, progress: Progress, total: int,
                    full_digest: bool = False):
    """Ticket tensors of the non-empty selections; fills ``per_tensor`` with every count."""
    for i, (n, idx) in enumerate(selection):
        per_tensor[n] = int(idx.size)
        if idx.size:
            dtype = bsrc.info(n)[0]
            b = bsrc.array(n)
            f = fsrc.array(n).reshape(-1)
            yield TicketTensor.from_finetuned(n, b, np.take(f, idx), idx, dtype, values=values,
                                              digest=full_digest, trusted_indices=True)
            bsrc.release(n)
            fsrc.release(n)
        del idx
        if progress:
            progress("write", i + 1, total)
