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
  and rounds once to the weight's dtype, which reproduces every fine-tuned bf16/f16 value
  exactly (their float32 difference is exact unless the two exponents are more than 16 apart;
  such entries are counted as ``inexact`` after checking the rounding). This holds with PEFT's
  default ``autocast_adapter_dtype=True`` (adapter weights kept in float32); loading with
  ``autocast_adapter_dtype=False`` rounds the deltas to bf16 first and loses exactness.

Within those limits base + adapter gives the same weights, hence the same logits, as base + ticket.

**Import** (:func:`import_peft`). A plain LoRA adapter becomes a ticket: per target module
``ΔW = (B @ A)ᵀ? · scaling`` in float32 (``scaling = lora_alpha / r``, or ``/ √r`` with
``use_rslora``; ``rank_pattern``/``alpha_pattern`` matched as PEFT does; transposed for
``fan_in_fan_out`` layers such as GPT-2's ``Conv1D``), ``round(base + ΔW)`` to the base dtype —
exactly PEFT's ``merge_and_unload()`` on CPU — then lotavec's extraction picks entries (top-k or
all changed) and stores them losslessly.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, NotFoundError, TensorMismatchError, UnsupportedFeatureError
from ..format.dtypes import BITS, from_float32, to_float32
from ..format.safetensors_io import SafetensorsFile, build_header
from ..hfwriter import atomic_output_dir
from ..models import TensorSource, open_model
from ..ticket import Ticket, load_ticket
from . import ticket_base

Progress = Callable[[str, int, int], None] | None

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
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


# --- import: LoRA -> ticket ----------------------------------------------------------------------

_REFUSED = ("use_dora", "lora_bias", "modules_to_save", "trainable_token_indices", "layer_replication",
            "target_parameters", "alora_invocation_tokens", "use_qalora", "velora_config", "monteclora_config",
            "arrow_config", "kasa_config", "use_bdlora", "megatron_config")
_BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.(?P<ab>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


@dataclass(frozen=True)
class LoraModule:
    """One LoRA target: ``ΔW = (B @ A)·scaling``, transposed when ``fan_in_fan_out``."""

    tensor: str
    a_key: str
    b_key: str
    rank: int
    scaling: float
    fan_in_fan_out: bool


@dataclass(frozen=True)
class LoraAdapter:
    """A parsed plain-LoRA adapter folder (see :func:`read_lora`)."""

    path: str
    config: dict[str, Any]
    modules: dict[str, LoraModule] = field(default_factory=dict)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key`` rule: the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", module)``."""
    for p in patterns:
        if re.match(rf"(.*\.)?({p})$", module):
            return patterns[p]
    return default


def read_lora(adapter_dir: str | os.PathLike) -> LoraAdapter:
    """Read and check a LoRA adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).

    Raises:
        NotFoundError: the folder, config or safetensors weights are missing.
        UnsupportedFeatureError: not plain LoRA (another PEFT type, DoRA, LoRA biases,
            ``modules_to_save``, embedding/conv LoRA, a base-modifying init such as PiSSA...).
        ModelError: the config or weights are inconsistent (rank mismatch, missing A or B).
    """
    d = Path(adapter_dir)
    cfg_path = d / ADAPTER_CONFIG
    if not cfg_path.is_file():
        raise NotFoundError(f"{d}: no {ADAPTER_CONFIG}; pass the folder a PEFT adapter was saved to")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{cfg_path}: cannot read the adapter config: {e}") from None
    kind = str(cfg.get("peft_type", "")).upper()
    if kind != "LORA":
        raise UnsupportedFeatureError(f"{cfg_path}: peft_type is {cfg.get('peft_type')!r}; import-peft converts "
                                      "plain LoRA adapters only (peft_type LORA)")
    bad = [k for k in _REFUSED if cfg.get(k)]
    if cfg.get("bias", "none") != "none":
        bad.append(f"bias={cfg['bias']!r}")
    init = cfg.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_CHANGING_INITS):
        bad.append(f"init_lora_weights={init!r} (its base is a modified residual model; convert the adapter to "
                   "plain LoRA with save_pretrained(path_initial_model_for_weight_conversion=...))")
    if bad:
        raise UnsupportedFeatureError(f"{cfg_path}: not a plain LoRA adapter ({', '.join(bad)}); import-peft "
                                      "supports plain LoRA on Linear/Conv1D layers only")
    wpath = d / ADAPTER_WEIGHTS
    if not wpath.is_file():
        extra = " (only a pickled adapter_model.bin is there; lotavec never unpickles: re-save with safetensors)" \
            if (d / "adapter_model.bin").exists() else ""
        raise NotFoundError(f"{d}: no {ADAPTER_WEIGHTS}{extra}")
    with SafetensorsFile(wpath) as f:
        keys = {k: f.info(k).shape for k in f.tensors}
    pairs: dict[str, dict[str, str]] = {}
    for k in sorted(keys):
        m = _KEY.match(k)
        if m is None:
            raise UnsupportedFeatureError(f"{wpath}: tensor {k!r} is not a LoRA A/B weight (embedding LoRA, "
                                          "biases or saved modules are not supported)")
        pairs.setdefault(m["module"], {})[m["ab"]] = k
    alpha0, r0 = cfg.get("lora_alpha", 8), cfg.get("r", 8)
    rslora, fifo = bool(cfg.get("use_rslora")), bool(cfg.get("fan_in_fan_out"))
    mods = {}
    for mod, ab in pairs.items():
        if set(ab) != {"lora_A", "lora_B"}:
            raise ModelError(f"{wpath}: module {mod!r} has {sorted(ab)} but needs both lora_A and lora_B")
        sa, sb = keys[ab["lora_A"]], keys[ab["lora_B"]]
        if len(sa) != 2 or len(sb) != 2:
            raise UnsupportedFeatureError(f"{wpath}: module {mod!r} has {len(sa)}-D LoRA weights; only Linear/Conv1D "
                                          "LoRA (2-D A and B) is supported")
        r = int(_pattern_value(cfg.get("rank_pattern") or {}, mod, r0))
        alpha = _pattern_value(cfg.get("alpha_pattern") or {}, mod, alpha0)
        if sa[0] != r or sb[1] != r:
            raise ModelError(f"{wpath}: module {mod!r}: lora_A {list(sa)} / lora_B {list(sb)} do not have the "
                             f"rank r={r} that {ADAPTER_CONFIG} gives it")
        scaling = alpha / math.sqrt(r) if rslora else alpha / r
        mods[f"{mod}.weight"] = LoraModule(f"{mod}.weight", ab["lora_A"], ab["lora_B"], r, scaling, fifo)
    if not mods:
        raise ModelError(f"{wpath}: the adapter holds no LoRA weights")
    return LoraAdapter(os.fspath(d), cfg, mods)


class _LoraSource(TensorSource):
    """The base's LoRA-target tensors only: as they are, or with the adapter merged (lazily)."""

    def __init__(self, base: TensorSource, adapter: LoraAdapter, weights: SafetensorsFile, merged: bool):
        super().__init__("LoRA-merged" if merged else "base", f"{base.label}{' + LoRA' if merged else ''}")
        self._base, self._ad, self._w, self._merged = base, adapter, weights, merged
        self._info_map = {}
        for n, m in adapter.modules.items():
            if n not in base:
                raise TensorMismatchError(f"LoRA adapter {adapter.path}: targets {n!r}, which base model "
                                          f"{base.label} does not have")
            if any(n in g for g in base.tied_groups() if len(g) > 1):
                raise UnsupportedFeatureError(f"LoRA adapter {adapter.path}: targets {n!r}, which is tied to another "
                                              "tensor (e.g. LM head and embeddings); a ticket cannot express that")
            dtype, shape = base.info(n)
            a, b = weights.info(m.a_key).shape, weights.info(m.b_key).shape
            want = (a[1], b[0]) if m.fan_in_fan_out else (b[0], a[1])
            if tuple(shape) != want:
                hint = " (check fan_in_fan_out)" if tuple(shape) == want[::-1] else ""
                raise TensorMismatchError(f"tensor {n!r}: LoRA gives a {list(want)} update, base has {list(shape)}{hint}")
            self._info_map[n] = (dtype, tuple(shape))

    def _infos(self):
        return self._info_map

    def _array(self, name: str) -> np.ndarray:
        arr = self._base.array(name)
        if not self._merged:
            return arr
        return merged_weight(arr, self._info_map[name][0], self._ad.modules[name], self._w)

    def release(self, name: str) -> None:
        self._base.release(name)


def merged_weight(base: np.ndarray, dtype: str, m: LoraModule, weights: SafetensorsFile) -> np.ndarray:
    """``round_to_dtype(float32(base) + ΔW)`` as a storage array — PEFT's ``merge_and_unload`` on CPU.

    ``ΔW = transpose(B @ A, fan_in_fan_out) · scaling`` is computed with torch in float32, the
    same operations PEFT's ``lora.Linear.get_delta_weight`` performs on float32 adapter weights.
    """

    from ..torchio import to_storage, to_torch, torch_dtype

    a = to_torch(weights.array(m.a_key), weights.info(m.a_key).dtype).float()
    b = to_torch(weights.array(m.b_key), weights.info(m.b_key).dtype).float()
    delta = b @ a
    if m.fan_in_fan_out:
        delta = delta.T
    delta = delta * m.scaling
    w = to_torch(base, dtype).float() + delta
    return np.array(to_storage(w.to(torch_dtype(dtype)))[0])


def import_peft(adapter_dir: str | os.PathLike, base: Any, out: str | os.PathLike | None = None, *,
                density: float | None = None, all_changed: bool = False, scope: str = "global",
                base_ref: dict[str, Any] | None = None, progress: Progress = None):
    """Turn a plain LoRA adapter into a ticket.

    The fine-tuned weights are the LoRA merge, ``round(base + ΔW)`` per target module (see
    :func:`merged_weight`); the candidates are the LoRA target tensors, and entries are chosen
    by :func:`lotavec.extraction.extract` — ``density`` of the target entries by ``|Δ|``
    (``scope`` global or per tensor), or every entry the merge changes (``all_changed``: applying
    the ticket then equals merging the adapter). Values are stored losslessly (``ulpdiff``).

    Args:
        adapter_dir: a PEFT LoRA adapter folder.
        base: the base model (folder, ``.safetensors`` file, state dict or ``nn.Module``).
        out: ticket file to write; ``None`` keeps it in memory.
        density, all_changed, scope: which entries (exactly one of ``density`` / ``all_changed``).
        base_ref: ``{"repo_id", "revision"}`` of the base, recorded in the ticket.
        progress: ``progress(stage, done, total)``.

    Returns:
        :class:`lotavec.extraction.ExtractResult`.

    Raises:
        NotFoundError, UnsupportedFeatureError, ModelError: see :func:`read_lora`.
        TensorMismatchError: the adapter does not fit the base.
        SelectionError: neither or both of ``density`` / ``all_changed``.
    """
    from ..extraction import extract

    ad = read_lora(adapter_dir)
    bsrc = open_model(base, role="base")
    weights = SafetensorsFile(Path(ad.path) / ADAPTER_WEIGHTS)
    try:
        prov = {"source": {"base": os.fspath(base) if isinstance(base, (str, os.PathLike)) else type(base).__name__,
                           "peft_adapter": os.path.abspath(ad.path)},
                "import": {"from": "peft-lora", "modules": len(ad.modules),
                           "ranks": sorted({m.rank for m in ad.modules.values()}),
                           "lora_alpha": ad.config.get("lora_alpha"), "use_rslora": bool(ad.config.get("use_rslora")),
                           "merge": "round_to_base_dtype(float32(base) + transpose(B@A, fan_in_fan_out) * scaling)",
                           "candidates": "the LoRA target tensors"}}
        return extract(_LoraSource(bsrc, ad, weights, False), _LoraSource(bsrc, ad, weights, True), out,
                       density=density, all_changed=all_changed, scope=scope, include=[".*"],
                       base_ref=base_ref, provenance=prov, progress=progress)
    finally:
        weights.close()
        if bsrc is not base:
            bsrc.close()
