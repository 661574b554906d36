"""LoRA adapter → ticket (``lotavec import-peft``); see :mod:`lotavec.bridges.peft` for the overview.

A plain LoRA adapter becomes a ticket: per target module ``ΔW = transpose(B @ A, fan_in_fan_out)
· scaling`` in float32 (``scaling = lora_alpha / r``, or ``/ √r`` with ``use_rslora``;
``rank_pattern``/``alpha_pattern`` matched as PEFT matches them), ``round(base + ΔW)`` to the base
dtype — exactly what PEFT's ``merge_and_unload()`` computes on CPU with its default float32
adapter weights — then lotavec's extraction picks entries and stores them losslessly.
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
from ..format.safetensors_io import SafetensorsFile
from ..models import TensorSource, open_model

Progress = Callable[[str, int, int], None] | None

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

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
