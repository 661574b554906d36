"""Tickets ⇄ PEFT: export a ticket as a SHiRA adapter, import a LoRA adapter as a ticket.

**Export** (:func:`export_peft`). PEFT's SHiRA adapters (``peft.ShiraConfig``) are sparse: for each
adapted ``nn.Linear`` the checkpoint stores ``shira_indices`` (``I32 [2, N]``: row, column) and
``shira_weight`` (``F32 [N]``), and the forward pass uses ``W + sparse(indices, weight)``. PEFT
loads the stored indices, so SHiRA carries a ticket's exact entries, with these limits:

* only ``nn.Linear`` weights (not GPT-2's ``Conv1D``, embeddings, norms, biases, or an LM head
  tied to the embeddings) — other ticket tensors are left out and listed;
* one ``r`` for the whole adapter, and every adapted layer holds exactly ``r·(in+out)`` entries,
  at most ``in·out`` of them. :func:`export_peft` picks the ``r`` that carries the most entries,
  pads each layer with ``-0.0`` deltas at positions the ticket does not touch (``x + -0.0 = x``
  for every ``x``: no weight changes), and leaves out layers the chosen ``r`` cannot hold;
* deltas are ``float32`` (``fine-tuned − base``). PEFT adds them to the base weight in float32
  and rounds once to the weight's dtype. That reproduces the fine-tuned value whenever the
  float32 difference is exact — always for bf16/f16 values whose exponents are at most 16 (bf16)
  or 13 (f16) apart, not always for F32 tensors. Every carried entry is checked with the same
  arithmetic and the ones that do not round back are counted as ``inexact``. This holds with PEFT's
  default ``autocast_adapter_dtype=True`` (adapter weights kept in float32); loading with
  ``autocast_adapter_dtype=False`` rounds the deltas to bf16 first and loses exactness.

Within those limits base + adapter gives the same weights, hence the same logits, as base + ticket.

**Import** (:func:`import_peft`, defined in :mod:`lotavec.bridges.lora`): a plain LoRA adapter
becomes a ticket whose weights equal PEFT's ``merge_and_unload()`` (bit-exact on CPU).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelError, TensorMismatchError
from ..format.dtypes import BITS, from_float32, to_float32
from ..format.safetensors_io import build_header
from ..hfwriter import atomic_output_dir
from ..models import TensorSource, open_model
from ..ticket import Ticket, load_ticket
from . import ticket_base
from .lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LoraAdapter,
    LoraModule,
    import_peft,
    merged_weight,
    read_lora,
)

__all__ = ["PeftExport", "choose_r", "export_peft", "import_peft", "read_lora", "merged_weight",
           "LoraAdapter", "LoraModule", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS"]

Progress = Callable[[str, int, int], None] | None

_PREFIX = "base_model.model."


# --- export: ticket -> SHiRA ---------------------------------------------------------------------


@dataclass(frozen=True)
class PeftExport:
    """What :func:`export_peft` wrote.

    Attributes:
        path: the adapter folder.
        r: the SHiRA ``r`` (each adapted layer holds ``r·(in+out)`` entries).
        carried: ticket tensors in the adapter; ``nnz_carried`` their entries.
        skipped: ticket tensors left out → why.
        nnz_total: entries of the whole ticket.
        padded: ``-0.0`` entries added to fill layers up to ``r·(in+out)``.
        inexact: carried entries where ``round(base + float32 delta)`` differs from the
            fine-tuned value (0 unless exponents differ by more than 16).
    """

    path: str
    r: int
    carried: list[str]
    skipped: dict[str, str]
    nnz_carried: int
    nnz_total: int
    padded: int
    inexact: int

    @property
    def exact(self) -> bool:
        """Whether base + adapter reproduces base + ticket on every weight."""
        return not self.skipped and self.inexact == 0 and self.nnz_carried == self.nnz_total

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (what ``lotavec export --to peft --json`` prints)."""
        return {"to": "peft", "path": self.path, "peft_type": "SHIRA", "r": self.r, "exact": self.exact,
                "carried_tensors": len(self.carried), "nnz_carried": self.nnz_carried,
                "nnz_total": self.nnz_total, "padded": self.padded, "inexact": self.inexact,
                "skipped": self.skipped}


def _meta_model(src: TensorSource) -> Any:
    """The base architecture as a module tree (the module itself, or built on the meta device)."""
    if src.module is not None:
        return src.module
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not src.config:
        raise ModelError(f"base model {src.label}: exporting to PEFT needs the architecture; give the base model "
                         "folder (with config.json), not a bare .safetensors file")
    try:
        cfg = AutoConfig.for_model(**src.config)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)
    except Exception as e:  # unknown/custom architectures: say so rather than guess module types
        raise ModelError(f"base model {src.label}: transformers cannot build its architecture "
                         f"({src.config.get('model_type')!r}): {e}") from None


def _linear_shapes(ticket: Ticket, model: Any) -> tuple[dict[str, tuple[int, int, int]], dict[str, str]]:
    """``({tensor: (nnz, in, out)} for SHiRA-able tensors, {tensor: reason} for the rest)``."""
    import torch

    modules = dict(model.named_modules())
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        emb = None
    ok, skipped = {}, {}
    for n in ticket.names:
        info = ticket.info(n)
        if info["nnz"] == 0:
            continue
        mod = modules.get(n[: -len(".weight")]) if n.endswith(".weight") else None
        if mod is None:
            skipped[n] = "not the weight of a module (bias, norm or other parameter): SHiRA adapts nn.Linear weights only"
        elif not isinstance(mod, torch.nn.Linear):
            skipped[n] = f"{type(mod).__name__} module: SHiRA adapts only torch.nn.Linear layers"
        elif emb is not None and mod.weight is getattr(emb, "weight", None):
            skipped[n] = "LM head tied to the input embeddings: an adapter on it would not change the embeddings"
        elif tuple(info["shape"]) != (mod.out_features, mod.in_features):
            raise TensorMismatchError(f"tensor {n!r}: ticket shape {info['shape']}, the model's Linear is "
                                      f"[{mod.out_features}, {mod.in_features}]")
        else:
            ok[n] = (int(info["nnz"]), mod.in_features, mod.out_features)
    return ok, skipped


def choose_r(layers: dict[str, tuple[int, int, int]]) -> tuple[int, dict[str, str]]:
    """The single SHiRA ``r`` carrying the most entries, and the layers it cannot carry.

    A layer with ``nnz`` entries, ``in`` inputs and ``out`` outputs is carried when
    ``nnz ≤ r·(in+out) ≤ in·out`` (PEFT refuses more SHiRA entries than weights).

    Args:
        layers: tensor name → ``(nnz, in, out)``.

    Returns:
        ``(r, {tensor: reason})`` (``r`` is 0 when no layer can be carried).
    """
    need = {n: math.ceil(z / (i + o)) for n, (z, i, o) in layers.items()}
    cap = {n: (i * o) // (i + o) for n, (z, i, o) in layers.items()}
    best, best_r = -1, 0
    for r in sorted(set(need.values())):
        carried = sum(layers[n][0] for n in layers if need[n] <= r <= cap[n])
        if carried > best:
            best, best_r = carried, r
    out = {}
    for n, (z, i, o) in layers.items():
        if need[n] > cap[n]:
            out[n] = (f"{z} entries exceed what SHiRA can hold in a {o}x{i} layer "
                      f"(at most r·(in+out) = {cap[n] * (i + o)} with r ≤ {cap[n]})")
        elif need[n] > best_r:
            out[n] = f"needs r ≥ {need[n]}; the adapter's single r is {best_r} (chosen to carry the most entries)"
        elif best_r > cap[n]:
            out[n] = (f"the adapter's r = {best_r} gives {best_r * (i + o)} SHiRA entries, more than the "
                      f"{i * o} weights of this {o}x{i} layer (PEFT refuses)")
    return best_r, out


def export_peft(ticket: Ticket | str | os.PathLike, out_dir: str | os.PathLike, *, base: Any = None,
                check_base: bool = True, overwrite: bool = False, progress: Progress = None) -> PeftExport:
    """Write a ticket as a PEFT SHiRA adapter folder (``adapter_config.json``, ``adapter_model.safetensors``).

    ``peft.PeftModel.from_pretrained(base_model, out_dir)`` loads it. What SHiRA cannot carry
    (see the module docstring: non-Linear tensors, tied LM heads, layers the single ``r``
    cannot hold) is left out and listed in :attr:`PeftExport.skipped` and the folder's README.

    Args:
        ticket: a :class:`Ticket` or a ticket path / Hub id.
        out_dir: the adapter folder to create (atomically).
        base: the base model (folder or Hub id; a state dict or ``nn.Module`` also works); default
            the ticket's recorded ``base.repo_id``. Needed for the deltas and the module types.
        check_base: refuse a base whose tensors differ from the ticket's (sampled fingerprint).
        overwrite: replace an existing ``out_dir``.
        progress: ``progress(stage, done, total)``, per carried tensor.

    Returns:
        :class:`PeftExport`.

    Raises:
        ModelError: no base; the architecture cannot be built; no ticket tensor can be carried.
        TensorMismatchError, FingerprintMismatchError: the base is not the ticket's.
        OutputExistsError: ``out_dir`` exists and ``overwrite`` is false.
    """
    tk = ticket if isinstance(ticket, Ticket) else load_ticket(ticket)
    src = open_model(ticket_base(tk, base), role="base")
    try:
        layers, skipped = _linear_shapes(tk, _meta_model(src))
        r, too_big = choose_r(layers)
        skipped.update(too_big)
        carried = [n for n in tk.names if n in layers and n not in too_big]
        if not carried:
            raise ModelError(f"ticket {tk.path or '(in memory)'}: no tensor can be carried by a PEFT SHiRA adapter: "
                             + "; ".join(f"{n}: {why}" for n, why in list(skipped.items())[:5]))
        sizes = {n: r * (layers[n][1] + layers[n][2]) for n in carried}
        entries = []
        for n in carried:
            mod = _PREFIX + n[: -len(".weight")]
            entries += [(f"{mod}.shira_indices", "I32", (2, sizes[n]), 8 * sizes[n]),
                        (f"{mod}.shira_weight", "F32", (sizes[n],), 4 * sizes[n])]
        header, _ = build_header(entries, {"format": "pt", "lotavec.ticket": os.path.basename(tk.path or ""),
                                           "lotavec.base": json.dumps(tk.base, default=str)})
        inexact = padded = 0
        with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
            with open(tmp / ADAPTER_WEIGHTS, "wb") as fh:
                fh.write(header)
                for k, n in enumerate(carried, 1):
                    rows_cols, values, bad = _shira_entries(tk, n, src, sizes[n], layers[n][1], check_base)
                    fh.write(memoryview(rows_cols).cast("B"))
                    fh.write(memoryview(values).cast("B"))
                    inexact += bad
                    padded += sizes[n] - layers[n][0]
                    if progress is not None:
                        progress("export", k, len(carried))
            config = _shira_config(r, carried, tk, base)
            (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            result = PeftExport(os.fspath(out_dir), r, carried, skipped, sum(layers[n][0] for n in carried),
                                tk.nnz, padded, inexact)
            (tmp / "README.md").write_text(_readme(result, tk), encoding="utf-8")
    finally:
        if src is not base:
            src.close()
    return result


def _shira_entries(tk: Ticket, name: str, src: TensorSource, size: int, fan_in: int,
                   check: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """``(int32 [2, size] rows/cols, float32 [size] deltas, inexact count)`` of one tensor."""
    tt = tk[name]
    arr = src.array(name)
    if check:
        tt.check_base(arr, src.info(name)[0])
    elif src.info(name)[0] != tt.dtype or tuple(arr.shape) != tt.shape:
        raise TensorMismatchError(f"tensor {name!r}: ticket expects {tt.dtype}{list(tt.shape)}, "
                                  f"base has {src.info(name)[0]}{list(arr.shape)}")
    base_at = np.take(arr.reshape(-1), tt.indices)
    src.release(name)
    delta = np.ascontiguousarray(tt.delta(base_at), dtype=np.float32)
    redo = from_float32(to_float32(base_at, tt.dtype) + delta, tt.dtype)
    want = np.ascontiguousarray(tt.finetuned(base_at))
    inexact = int(np.count_nonzero(np.ascontiguousarray(redo).view(BITS[tt.dtype]) != want.view(BITS[tt.dtype])))
    pad = size - tt.nnz
    # The first `pad` positions the ticket leaves alone, with delta -0.0 (x + -0.0 == x, bit for bit).
    free = np.setdiff1d(np.arange(min(tt.numel, tt.nnz + pad), dtype=np.int64), tt.indices,
                        assume_unique=True)[:pad]
    idx = np.concatenate([tt.indices, free])
    vals = np.concatenate([delta, np.full(pad, -0.0, np.float32)])
    order = np.argsort(idx, kind="stable")
    idx, vals = idx[order], vals[order]
    rows_cols = np.stack([idx // fan_in, idx % fan_in]).astype("<i4")
    return np.ascontiguousarray(rows_cols), np.ascontiguousarray(vals, dtype="<f4"), inexact


def _shira_config(r: int, carried: list[str], tk: Ticket, base: Any) -> dict[str, Any]:
    base_name = tk.base.get("repo_id") or (os.fspath(base) if isinstance(base, (str, os.PathLike)) else None)
    return {
        "peft_type": "SHIRA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "mask_type": "random",  # only used to size the layers before PEFT loads the stored indices
        "random_seed": 0,
        "target_modules": sorted(n[: -len(".weight")] for n in carried),
        "fan_in_fan_out": False,
        "init_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
        "base_model_name_or_path": base_name,
        "revision": tk.base.get("revision"),
    }


def _readme(r: PeftExport, tk: Ticket) -> str:
    lines = ["# SHiRA adapter exported by lotavec", "",
             f"Source ticket: `{os.path.basename(tk.path or 'in-memory ticket')}`; base: "
             f"`{tk.base.get('repo_id') or 'unknown'}`{('@' + tk.base['revision']) if tk.base.get('revision') else ''}.",
             "", "```python", "from peft import PeftModel",
             "model = PeftModel.from_pretrained(base_model, 'THIS_FOLDER')  # keep autocast_adapter_dtype=True",
             "```", "",
             f"r = {r.r}; {len(r.carried)} tensors, {r.nnz_carried:,} of the ticket's {r.nnz_total:,} entries "
             f"({r.padded:,} padding entries with delta -0.0, which change nothing)."]
    if r.exact:
        lines.append("Base + this adapter reproduces base + ticket exactly (float32 deltas, one rounding).")
    else:
        lines += ["", "**Not exact**: base + this adapter differs from base + ticket on:"]
        lines += [f"- `{n}`: {why}" for n, why in r.skipped.items()]
        if r.inexact:
            lines.append(f"- {r.inexact} entries whose float32 delta does not round back to the fine-tuned value")
    return "\n".join(lines) + "\n"
