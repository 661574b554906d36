"""Exact masked training: only the ticket's entries of a model are trainable.

Design. Masking gradients is not enough: AdamW's decoupled weight decay and any optimizer's momentum
move entries whose gradient is zero. :class:`SparseTuner` therefore never lets an optimizer see a
dense weight. For every masked tensor ``W`` it

* freezes ``W`` (``requires_grad=False``; it is never written while training), and
* registers a ``torch.nn.utils.parametrize`` parametrization holding one 1-D trainable
  ``nn.Parameter`` ``values`` with the ``nnz`` masked entries. Every access to ``module.weight``
  returns ``W.flatten().index_copy(0, idx, values).view_as(W)``: the frozen base with the trainable
  values scattered in.

The optimizer only ever holds the ``values`` parameters, so off-mask entries are bit-identical to
the base by construction, whatever the optimizer or precision; optimizer state and gradients exist
only for the ``nnz`` entries. The gradient of ``values`` is a gather of the dense weight gradient,
which the backward pass computes anyway (and a full fine-tune keeps in ``.grad``). Cost per step:
one dense copy of each masked tensor per access (a tied embedding is accessed twice per forward),
against a full fine-tune's dense optimizer update. In fp32 without autocast the scattered copy of
each masked matrix is kept for the backward pass (one extra dense copy, still less than a full
fine-tune's gradient + two Adam moments).

Distributed training. The ``values`` are ordinary parameters and the indices are plain tensors
(not buffers, so DDP does not broadcast them every step): DDP all-reduces only the ``nnz`` values.
FSDP is **not tested**: FSDP1 mixes frozen and trainable parameters in one flat parameter only with
``use_orig_params=True``; FSDP2 would shard each 1-D ``values`` parameter, and :meth:`export` then
needs the full (gathered) values. The exactness argument (frozen originals never reach the
optimizer) is unchanged, but verify before relying on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import TensorMismatchError, TrainingError

__all__ = ["SparseTuner", "optimizer_state_bytes", "ExportedEntries"]

#: What :meth:`SparseTuner.export` returns per tensor: (flat indices int64, storage values, dtype name).
ExportedEntries = dict[str, tuple[np.ndarray, np.ndarray, str]]

_DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


class _ScatterValues(nn.Module):
    """Parametrization: the frozen tensor with trainable ``values`` written at flat ``indices``."""

    def __init__(self, indices: torch.Tensor, values: torch.Tensor):
        super().__init__()
        # A plain attribute, not a buffer: DDP would broadcast buffers at every forward.
        self._indices = indices
        self.values = nn.Parameter(values)

    def indices_on(self, device: torch.device) -> torch.Tensor:
        """The flat indices on ``device`` (moved once, then cached)."""
        if self._indices.device != device:
            self._indices = self._indices.to(device)
        return self._indices

    def forward(self, base: torch.Tensor) -> torch.Tensor:
        values = self.values if self.values.dtype == base.dtype else self.values.to(base.dtype)
        idx = self.indices_on(base.device)
        return base.reshape(-1).index_copy(0, idx, values).view_as(base)


@dataclass
class _Group:
    """One masked tensor (possibly shared by several modules through weight tying)."""

    name: str  # the name the caller used in ``masks``
    sites: list[tuple[nn.Module, str]]  # (module, attribute) pairs that hold the tensor
    base: nn.Parameter  # the frozen dense tensor
    scatter: _ScatterValues


def _as_index_tensor(name: str, idx, numel: int) -> torch.Tensor:
    """Validate one mask (sorted unique flat indices) and return it as an int64 CPU tensor."""
    if isinstance(idx, torch.Tensor):
        arr = idx.detach().cpu().numpy()
    else:
        arr = np.asarray(idx)
    if arr.ndim != 1:
        raise TrainingError(f"mask for {name!r}: expected a 1-D array of flat indices, found shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TrainingError(f"mask for {name!r}: expected integer flat indices, found dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size:
        if arr[0] < 0 or arr[-1] >= numel:
            raise TensorMismatchError(
                f"mask for {name!r}: indices must lie in [0, {numel}) for a tensor of {numel} entries, "
                f"found range [{int(arr.min())}, {int(arr.max())}]; is the mask for another model?"
            )
        if arr.size > 1 and not bool(np.all(np.diff(arr) > 0)):
            raise TrainingError(f"mask for {name!r}: flat indices must be strictly increasing (sorted, no duplicates)")
    return torch.from_numpy(np.ascontiguousarray(arr))


def _to_storage(t: torch.Tensor) -> np.ndarray:
    """A CPU torch tensor as a numpy storage array (BF16 as uint16 bit patterns)."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).copy()
    return t.numpy().copy()


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by an optimizer's per-parameter state tensors (moments, factored stats, steps).

    Args:
        optimizer: any ``torch.optim.Optimizer`` (also transformers' Adafactor).

    Returns:
        The sum of ``nbytes`` over every tensor in ``optimizer.state``.
    """
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total


class SparseTuner:
    """Make only the masked entries of a model trainable, exactly.

    Args:
        model: a ``transformers`` model or any ``nn.Module``. It is modified in place: every
            parameter is frozen and the masked tensors get parametrizations. :meth:`merge_into_model`
            or :meth:`restore_base` returns it to a plain module.
        masks: ``{parameter name: sorted unique flat indices}`` (int64 numpy arrays or torch
            tensors, C order). Names are the model's parameter names; a tied tensor may be named by
            any of its names (give it once, or twice with identical indices). Empty masks are skipped.
        master_dtype: dtype of the trainable values (default: the tensor's own dtype). Use
            ``torch.float32`` to keep fp32 master values for a bf16/fp16 model; the effective weights
            and :meth:`export` round them to the model dtype.

    Raises:
        TensorMismatchError: a mask names a tensor the model lacks, or indices out of range.
        TrainingError: malformed indices, a non-float tensor, no trainable entry at all, a tied
            tensor given twice with different indices, or a tensor that is already parametrized.

    Example:
        >>> tuner = SparseTuner(model, {"model.layers.0.mlp.up_proj.weight": idx})  # doctest: +SKIP
        >>> opt = torch.optim.AdamW(tuner.trainable_parameters(), lr=1e-4, weight_decay=0.1)  # doctest: +SKIP
        >>> ...train...; entries = tuner.export(); tuner.merge_into_model()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, object], *, master_dtype: torch.dtype | None = None):
        self.model = model
        self._active = True
        self._requires_grad = {id(p): (p, p.requires_grad) for p in model.parameters()}
        sites_by_id, params_by_id, first_name = self._index_model(model)
        chosen: dict[int, tuple[str, torch.Tensor]] = {}
        for name, idx in masks.items():
            param = self._lookup(model, params_by_id, name)
            if not param.dtype.is_floating_point or param.dtype not in _DTYPE_NAMES:
                raise TrainingError(f"mask for {name!r}: tensor dtype {param.dtype} cannot be trained; "
                                    f"expected one of bfloat16, float16, float32")
            index = _as_index_tensor(name, idx, param.numel())
            key = id(param)
            if key in chosen:
                other, prev = chosen[key]
                if not torch.equal(prev, index):
                    raise TrainingError(f"masks for {other!r} and {name!r} name the same (tied) tensor with "
                                        "different indices; give the tied tensor one mask")
                continue
            if any(isinstance(m, parametrize.ParametrizationList) or parametrize.is_parametrized(m, a)
                   for m, a in sites_by_id[key]):
                raise TrainingError(f"{first_name[key]!r} is already parametrized; unwrap it first")
            if index.numel():
                chosen[key] = (name, index)
        if not chosen:
            raise TrainingError("the masks select no entry of the model: nothing to train")
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        self._groups: list[_Group] = []
        try:
            for key, (name, index) in chosen.items():
                base = params_by_id[key]
                values = base.detach().reshape(-1)[index.to(base.device)].to(master_dtype or base.dtype).clone()
                group = _Group(name, [], base, _ScatterValues(index.to(base.device), values))
                self._groups.append(group)
                for module, attr in sites_by_id[key]:
                    parametrize.register_parametrization(module, attr, group.scatter)
                    group.sites.append((module, attr))
        except BaseException:
            self._unwrap()  # leave the model as it was
            raise

    # --- construction helpers ------------------------------------------------------------------

    @staticmethod
    def _index_model(model: nn.Module):
        """Map every parameter (by id) to all (module, attr) sites holding it and its first name."""
        sites: dict[int, list[tuple[nn.Module, str]]] = {}
        params: dict[int, nn.Parameter] = {}
        first_name: dict[int, str] = {}
        for mod_name, module in model.named_modules(remove_duplicate=False):
            for attr, p in module.named_parameters(recurse=False, remove_duplicate=False):
                if p is None:
                    continue
                key = id(p)
                site = (module, attr)
                if not any(m is module and a == attr for m, a in sites.get(key, [])):
                    sites.setdefault(key, []).append(site)
                params[key] = p
                first_name.setdefault(key, f"{mod_name}.{attr}" if mod_name else attr)
        return sites, params, first_name

    @staticmethod
    def _lookup(model: nn.Module, params_by_id: dict, name: str) -> nn.Parameter:
        try:
            param = model.get_parameter(name)
        except AttributeError:
            names = [n for n, _ in model.named_parameters()]
            hint = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise TensorMismatchError(f"mask names tensor {name!r}, which the model does not have "
                                      f"(its parameters are named like: {hint})") from None
        if id(param) not in params_by_id:
            raise TensorMismatchError(f"mask names {name!r}, which is not a parameter of the model")
        return param

    def _check_active(self) -> None:
        if not self._active:
            raise TrainingError("this SparseTuner was already merged or removed; create a new one")

    # --- inspection ----------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The 1-D trainable value parameters, one per masked tensor (give these to the optimizer)."""
        self._check_active()
        return [g.scatter.values for g in self._groups]

    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        """``{mask name: values parameter}``."""
        self._check_active()
        return {g.name: g.scatter.values for g in self._groups}

    @property
    def names(self) -> list[str]:
        """The masked tensors' names (as given in ``masks``; tied tensors once)."""
        return [g.name for g in self._groups]

    def num_trainable(self) -> int:
        """Number of trainable entries (sum of mask sizes)."""
        return sum(g.scatter.values.numel() for g in self._groups)

    def indices(self, name: str) -> torch.Tensor:
        """The flat indices of the masked tensor ``name`` (int64, CPU)."""
        return self._group(name).scatter._indices.cpu()

    def _group(self, name: str) -> _Group:
        for g in self._groups:
            if g.name == name:
                return g
        raise TensorMismatchError(f"{name!r} is not a masked tensor of this tuner; masked: {self.names[:5]}")

    # --- results -------------------------------------------------------------------------------

    @torch.no_grad()
    def export(self, *, changed_only: bool = False) -> ExportedEntries:
        """The trained values at the masked entries, in each tensor's own dtype.

        Args:
            changed_only: drop entries whose value is bit-identical to the base.

        Returns:
            ``{name: (indices int64 np.ndarray, values storage np.ndarray, dtype name)}``;
            values are rounded to the model dtype (BF16 as uint16 bit patterns), dtype names are
            ``"BF16"``, ``"F16"`` or ``"F32"``.
        """
        self._check_active()
        out: ExportedEntries = {}
        for g in self._groups:
            idx = g.scatter._indices.cpu()
            vals = g.scatter.values.detach().to(g.base.dtype).cpu()
            if changed_only:
                base_vals = g.base.detach().reshape(-1)[idx.to(g.base.device)].cpu()
                keep = _to_storage(vals) != _to_storage(base_vals)
                idx, vals = idx[torch.from_numpy(keep)], vals[torch.from_numpy(keep)]
            out[g.name] = (idx.numpy().astype(np.int64), _to_storage(vals), _DTYPE_NAMES[g.base.dtype])
        return out

    def values_state(self) -> dict[str, torch.Tensor]:
        """``{name: detached copy of the trainable values}`` (for checkpoints)."""
        self._check_active()
        return {g.name: g.scatter.values.detach().clone() for g in self._groups}

    @torch.no_grad()
    def load_values_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load values saved by :meth:`values_state`.

        Raises:
            TensorMismatchError: a name is missing or a size differs.
        """
        self._check_active()
        for g in self._groups:
            if g.name not in state:
                raise TensorMismatchError(f"checkpoint has no trainable values for {g.name!r}")
            v = state[g.name]
            if v.shape != g.scatter.values.shape:
                raise TensorMismatchError(f"checkpoint values for {g.name!r} have shape {tuple(v.shape)}, "
                                          f"expected {tuple(g.scatter.values.shape)}")
            g.scatter.values.copy_(v)

    @torch.no_grad()
    def merge_into_model(self) -> nn.Module:
        """Write the trained values into the dense weights and remove the parametrizations.

        Returns:
            The model, a plain module again (parameter objects and ``requires_grad`` flags as before).
        """
        self._check_active()
        for g in self._groups:
            idx = g.scatter.indices_on(g.base.device)
            vals = g.scatter.values.detach().to(g.base.dtype)
            g.base.copy_(g.base.reshape(-1).index_copy(0, idx, vals).view_as(g.base))
        return self._unwrap()

    def restore_base(self) -> nn.Module:
        """Remove the parametrizations without writing the trained values (the model is the base again)."""
        self._check_active()
        return self._unwrap()

    def _unwrap(self) -> nn.Module:
        for g in self._groups:
            for module, attr in g.sites:
                parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        for p, flag in self._requires_grad.values():
            p.requires_grad_(flag)
        self._active = False
        return self.model

