"""Apply and unapply tickets in memory, on a model's own device (hot-swapping).

``apply(model, ticket)`` then ``unapply(model, ticket)`` restores every weight bit-for-bit:

* weight 1 with a lossless codec (``ulpdiff``/``raw``): the fine-tuned bit patterns are written
  exactly; unapply subtracts the stored bit-pattern difference (wrap-around integer arithmetic,
  exact), or for ``raw`` restores the base values saved at apply time;
* any other weight, or ``f32delta``: ``base + weight·delta`` is computed in float32 and rounded;
  the overwritten base values are saved at apply time and put back by unapply.

Several tickets can be applied to one model as long as they do not share entries: each later
ticket is checked against the fingerprints the tensors had before the first ticket touched them.

Saved values live on the model object (``model._lotavec_undo``), or, for a plain state dict, in a
registry that holds the dict itself while any ticket is applied to it; both are removed by
:func:`unapply`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import (
    BaseMismatchError,
    CorruptTicketError,
    FingerprintMismatchError,
    NotFoundError,
    TensorMismatchError,
)
from ..format.dtypes import BITS, storage_dtype
from ..format.fingerprint import base_sample
from ..models import open_model
from ..ticket import Ticket, TicketTensor, load_ticket
from ..torchio import dtype_name, torch_dtype

_INT = {2: torch.int16, 4: torch.int32}
_registry: dict[int, tuple[dict, dict]] = {}
_TENSORS = "__tensors__"  # store key: {tensor name: {"sample": pre-ticket fingerprint, "tickets": {key: indices}}}


def _undo_store(model: Any) -> dict:
    if isinstance(model, dict):
        entry = _registry.get(id(model))
        if entry is None or entry[0] is not model:  # the registry holds the dict: ids are not reused
            entry = _registry[id(model)] = (model, {})
        return entry[1]
    store = getattr(model, "_lotavec_undo", None)
    if store is None:
        store = {}
        object.__setattr__(model, "_lotavec_undo", store)
    return store


def _tensors(model: Any) -> tuple[dict[str, torch.Tensor], Any]:
    src = open_model(model, role="model")
    names = {n: src.tensor(n) for n in src.names()}
    for group in src.tied_groups():
        for alias in group[1:]:
            names.setdefault(alias, names.get(group[0]))
    return names, src


def _ticket_key(ticket: Ticket) -> str:
    return ticket.path or f"mem-{id(ticket)}"


def _bits_view(p: torch.Tensor) -> torch.Tensor:
    return p.view(_INT[p.element_size()]).view(-1)


def apply(model: Any, ticket: Ticket | str, weight: float = 1.0, *, check_base: bool = True) -> None:
    """Apply a ticket in place to an ``nn.Module`` or a ``dict[str, torch.Tensor]``.

    Args:
        model: the model (parameters are modified in place, on their device).
        ticket: a :class:`Ticket` or a path/Hub id.
        weight: scale of the ticket's delta (1 reproduces the fine-tuned weights exactly).
        check_base: refuse a model whose tensors differ from the ticket's base (sampled fingerprint).

    Raises:
        TensorMismatchError, FingerprintMismatchError: the model is not the ticket's base.
        BaseMismatchError: this ticket is already applied to this model.
    """
    tk = ticket if isinstance(ticket, Ticket) else load_ticket(ticket)
    store = _undo_store(model)
    key = _ticket_key(tk)
    if key in store:
        raise BaseMismatchError(f"ticket {key} is already applied to this model; unapply it first")
    tensors, src = _tensors(model)
    touched = store.setdefault(_TENSORS, {})
    undo: dict[str, Any] = {"weight": float(weight), "saved": {}}
    with torch.no_grad():
        parts = []
        for tt in tk:
            p = tensors.get(tt.name)
            if p is None:
                raise TensorMismatchError(f"model has no tensor {tt.name!r} that the ticket changes")
            if tuple(p.shape) != tt.shape:
                raise TensorMismatchError(f"tensor {tt.name!r}: ticket expects shape {list(tt.shape)}, model has {list(p.shape)}")
            rec = touched.get(tt.name)
            if rec is not None and check_base:
                for other, idx in rec["tickets"].items():
                    if np.intersect1d(idx, tt.indices, assume_unique=True).size:
                        raise BaseMismatchError(
                            f"tensor {tt.name!r}: ticket {key} shares entries with the applied ticket {other}; "
                            "unapply it first or merge them with `lotavec merge`")
            if check_base:
                if rec is None:
                    tt.check_base(_as_ticket_storage(p, tt), tt.dtype, where="model")
                elif tt.base_sample is not None and rec["sample"] is not None and tt.base_sample != rec["sample"]:
                    raise FingerprintMismatchError(
                        f"tensor {tt.name!r}: the model (before the tickets applied to it) differs from the base "
                        "this ticket was made from; use that base, or check_base=False")
            parts.append((tt, p))
        for tt, p in parts:
            if tt.name not in touched:
                sample = base_sample(_as_ticket_storage(p, tt))
                touched[tt.name] = {"sample": sample, "tickets": {}}
            touched[tt.name]["tickets"][key] = tt.indices
            undo["saved"][tt.name] = _apply_one(tt, p, weight)
    store[key] = undo


def _apply_one(tt: TicketTensor, p: torch.Tensor, weight: float) -> torch.Tensor | None:
    idx = torch.from_numpy(tt.indices).to(p.device)
    flat = p.view(-1)
    same = dtype_name(p.dtype) == tt.dtype
    if weight == 1.0 and same and tt.values == "ulpdiff":
        d = torch.from_numpy(tt.payload.view(np.dtype(f"<i{tt.payload.dtype.itemsize}"))).to(p.device)
        bits = _bits_view(p)
        new_bits = bits.index_select(0, idx) + d  # wrap-around add: exact, invertible
        _refuse_nonfinite(tt, new_bits)
        bits.index_put_((idx,), new_bits)
        return None
    saved = flat.index_select(0, idx).clone()
    b = saved.to(torch_dtype(tt.dtype)).cpu()  # exact when the model holds the ticket's dtype (or wider)
    b_np = b.view(_INT[b.element_size()]).numpy().view(storage_dtype(tt.dtype))
    if weight == 1.0:
        new = torch.from_numpy(np.ascontiguousarray(tt.finetuned(b_np)).view(_np_int(tt))).view(torch_dtype(tt.dtype))
    else:
        new = (b.float() + float(weight) * torch.from_numpy(np.ascontiguousarray(tt.delta(b_np)))).to(torch_dtype(tt.dtype))
    new = new.to(device=p.device, dtype=p.dtype)
    if not torch.isfinite(new).all():
        raise CorruptTicketError(f"tensor {tt.name!r}: applying the ticket (weight {weight:g}) gives non-finite values")
    flat.index_put_((idx,), new)
    return saved


_EXP = {"BF16": 0x7F80, "F16": 0x7C00, "F32": 0x7F800000}


def _refuse_nonfinite(tt: TicketTensor, new_bits: torch.Tensor) -> None:
    """Raise before writing if a bit-pattern result encodes Inf or NaN."""
    m = _EXP[tt.dtype]
    if ((new_bits & m) == m).any():
        raise CorruptTicketError(
            f"tensor {tt.name!r}: applying the ticket gives non-finite values; the model is not the "
            "ticket's base, or the ticket is corrupt")


def _as_ticket_storage(p: torch.Tensor, tt: TicketTensor) -> np.ndarray:
    """The model tensor as a storage array of the ticket's dtype (a model upcast from the ticket's
    dtype converts back exactly, so its fingerprint matches; other weights do not)."""
    t = p.detach()
    if dtype_name(t.dtype) != tt.dtype:
        t = t.to(torch_dtype(tt.dtype))
    t = t.cpu().contiguous()
    return t.view(_INT[t.element_size()]).numpy().view(storage_dtype(tt.dtype)).reshape(tuple(t.shape))


def _np_int(tt: TicketTensor) -> np.dtype:
    return np.dtype(f"<i{BITS[tt.dtype].itemsize}")


def unapply(model: Any, ticket: Ticket | str) -> None:
    """Undo :func:`apply` exactly (bit-for-bit restore of the touched weights).

    Raises:
        NotFoundError: the ticket is not applied to this model.
    """
    tk = ticket if isinstance(ticket, Ticket) else load_ticket(ticket)
    store = _undo_store(model)
    key = _ticket_key(tk)
    if key not in store:
        raise NotFoundError(f"ticket {key} is not applied to this model")
    undo = store.pop(key)
    touched = store.get(_TENSORS, {})
    for name in list(touched):
        touched[name]["tickets"].pop(key, None)
        if not touched[name]["tickets"]:
            del touched[name]
    if not touched:
        store.pop(_TENSORS, None)
    tensors, _ = _tensors(model)
    with torch.no_grad():
        for tt in tk:
            p = tensors[tt.name]
            idx = torch.from_numpy(tt.indices).to(p.device)
            saved = undo["saved"].get(tt.name)
            if saved is None:
                d = torch.from_numpy(tt.payload.view(np.dtype(f"<i{tt.payload.dtype.itemsize}"))).to(p.device)
                bits = _bits_view(p)
                bits.index_put_((idx,), bits.index_select(0, idx) - d)
            else:
                p.view(-1).index_put_((idx,), saved)
    if isinstance(model, dict) and not store:
        _registry.pop(id(model), None)
