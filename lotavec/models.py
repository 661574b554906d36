"""Read model weights lazily from anything a user may hold: folders, files, state dicts, modules.

:func:`open_model` returns a :class:`TensorSource`: names, dtypes and shapes, and each tensor as
a read-only *storage array* (BF16 as ``uint16`` bits). Safetensors files are memory-mapped, so an
array costs nothing until it is read, and :meth:`TensorSource.release` drops its pages again,
which keeps the resident set flat while streaming through a model.

Which tensors are worth a ticket is decided by what they *are* (:func:`classify`,
:func:`select_candidates`), and :func:`check_compatible` explains how two
models differ.

Example:
    >>> with open_model("path/to/model") as src:  # doctest: +SKIP
    ...     for name in src.names():
    ...         w = src.array(name)
    ...         src.release(name)
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError, NotFoundError, SelectionError, TensorMismatchError
from .format.dtypes import TICKET_DTYPES
from .format.safetensors_io import SafetensorsFile

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


class TensorSource:
    """Lazy, read-only access to the named tensors of one model.

    Attributes:
        role: what the model is to the caller (``"base"``, ``"fine-tuned"``...), used in messages.
        path: the model folder, or ``None`` (single file, state dict, module).
        config: the parsed ``config.json`` (or the module's config as a dict), or ``None``.
        module: the ``nn.Module`` the source was opened from, or ``None``.
    """

    role: str
    path: Path | None
    config: dict[str, Any] | None
    module: Any

    def __init__(self, role: str, label: str):
        self.role = role
        self.label = label
        self.path = None
        self.config = None
        self.module = None
        self._tied: list[tuple[str, ...]] = []

    # --- to implement ------------------------------------------------------------------------
    def _infos(self) -> Mapping[str, tuple[str, tuple[int, ...]]]:
        raise NotImplementedError

    def _array(self, name: str) -> np.ndarray:
        raise NotImplementedError

    # --- public API --------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Tensor names, sorted (tied aliases appear once, see :meth:`tied_groups`)."""
        return sorted(self._infos())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.resolve(name) in self._infos()

    def __len__(self) -> int:
        return len(self._infos())

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """``(dtype name, shape)`` of a tensor.

        Raises:
            NotFoundError: no such tensor.
        """
        try:
            return self._infos()[self.resolve(name)]
        except KeyError:
            raise NotFoundError(self._missing(name)) from None

    def resolve(self, name: str) -> str:
        """The stored name for ``name``: itself, or the stored member of its tied group."""
        if name in self._infos():
            return name
        for group in self.tied_groups():
            if name in group:
                return group[0]
        return name

    def numel(self, name: str) -> int:
        """Number of entries of a tensor."""
        return math.prod(self.info(name)[1])

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only storage array (zero-copy where the source allows).

        Raises:
            NotFoundError: no such tensor.
        """
        stored = self.resolve(name)
        if stored not in self._infos():
            raise NotFoundError(self._missing(name))
        return self._array(stored)

    def release(self, name: str) -> None:
        """Drop the memory pages of a tensor that was read (arrays taken before stay valid)."""

    def populate(self, name: str) -> None:
        """Map the memory pages of a tensor about to be read whole (a hint; see
        :meth:`SafetensorsFile.populate`)."""

    def address(self, name: str) -> int | None:
        """Memory address of the tensor's stored bytes where it is memory-mapped (valid until
        :meth:`close`), for compiled code that reads it; ``None`` for other sources."""
        return None

    def tied_groups(self) -> list[tuple[str, ...]]:
        """Groups of names sharing one storage, the stored name first.

        E.g. ``[("model.embed_tokens.weight", "lm_head.weight")]`` for a model with tied
        embeddings whose checkpoint stores only the embedding. Only the first name of a group is
        in :meth:`names` unless the checkpoint stores several copies.
        """
        return list(self._tied)

    def close(self) -> None:
        """Release files and mappings."""

    def __enter__(self) -> TensorSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.role}: {self.label}, {len(self)} tensors>"

    def _missing(self, name: str) -> str:
        return f"{self.role} model {self.label}: no tensor named {name!r} ({len(self)} tensors present)"


class SafetensorsSource(TensorSource):
    """A single safetensors file or an HF folder (single or sharded), memory-mapped."""

    def __init__(self, files: dict[str, SafetensorsFile], name_to_file: dict[str, str], *,
                 role: str, label: str, path: Path | None, config: dict | None):
        super().__init__(role, label)
        self.path = path
        self.config = config
        self._files = files
        self._where = name_to_file
        self._info_map = {n: (files[f].info(n).dtype, files[f].info(n).shape) for n, f in name_to_file.items()}
        self._tied_done = False

    def tied_groups(self) -> list[tuple[str, ...]]:
        if not self._tied_done:  # needs the architecture: computed on first use only
            self._tied = _folder_tied_groups(self._info_map, self.config)
            self._tied_done = True
        return list(self._tied)

    def _infos(self):
        return self._info_map

    def _array(self, name):
        return self._files[self._where[name]].array(name)

    def file_of(self, name: str) -> str:
        """Path of the safetensors file holding ``name``."""
        self.info(name)
        return self._files[self._where[self.resolve(name)]].path

    def release(self, name: str) -> None:
        name = self.resolve(name)
        if name in self._where:
            self._files[self._where[name]].advise_done(name)

    def populate(self, name: str) -> None:
        name = self.resolve(name)
        if name in self._where:
            self._files[self._where[name]].populate(name)

    def address(self, name: str) -> int | None:
        name = self.resolve(name)
        return self._files[self._where[name]].address(name) if name in self._where else None

    def close(self) -> None:
        for f in self._files.values():
            f.close()


class TorchSource(TensorSource):
    """A ``dict[str, torch.Tensor]`` or the state dict of an ``nn.Module`` (tied tensors once)."""

    def __init__(self, tensors: Mapping[str, Any], *, role: str, label: str, module: Any = None):
        from .torchio import dtype_name

        super().__init__(role, label)
        self.module = module
        cfg = getattr(module, "config", None)
        self.config = cfg.to_dict() if hasattr(cfg, "to_dict") else None
        # Transformers models may rename tensors on save (GPT-NeoX: lm_head -> embed_out); use
        # the checkpoint names so a module and its saved folder have the same tensor names.
        to_ckpt = _checkpoint_names(module, list(tensors)) if module is not None else {}
        self._module_names = {to_ckpt.get(n, n): n for n in tensors}
        self._tensors: dict[str, Any] = {}
        groups: dict[tuple, list[str]] = {}
        for mname, t in tensors.items():
            name = to_ckpt.get(mname, mname)
            if not hasattr(t, "data_ptr"):
                raise ModelError(f"{role} state dict: entry {name!r} is a {type(t).__name__}, not a torch.Tensor")
            key = (t.device.type, t.device.index, t.untyped_storage().data_ptr(), t.storage_offset(),
                   tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else (name,)
            groups.setdefault(key, []).append(name)
            if len(groups[key]) == 1:
                self._tensors[name] = t
        self._tied = [tuple(g) for g in groups.values() if len(g) > 1]
        self._info_map = {n: (dtype_name(t.dtype), tuple(t.shape)) for n, t in self._tensors.items()}

    def _infos(self):
        return self._info_map

    def _array(self, name):
        from .torchio import to_storage

        return to_storage(self._tensors[name])[0]

    def tensor(self, name: str):
        """The underlying torch tensor (shares memory with the module/state dict)."""
        self.info(name)
        return self._tensors[self.resolve(name)]

    def module_name(self, name: str) -> str:
        """The module's own state-dict name for a (checkpoint) tensor name."""
        return self._module_names.get(name, name)


def _checkpoint_names(model: Any, names: list[str]) -> dict[str, str]:
    """Module state-dict name -> checkpoint name, for the renamings transformers applies on save."""
    try:
        from transformers import PreTrainedModel
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5 saves module names as they are
        return {}
    if not isinstance(model, PreTrainedModel):
        return {}
    import torch

    # revert_weight_conversion rebuilds the model's conversion mapping on every call unless the
    # model carries one (models from from_pretrained do): build it once for the whole loop
    # (~1.5 ms per tensor otherwise), and leave the model as it was.
    attached = False
    if getattr(model, "_weight_conversions", None) is None:
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import PrefixChange

            conv = [c for c in get_model_conversion_mapping(model, add_legacy=False) if not isinstance(c, PrefixChange)]
        except Exception:
            conv = None
        if conv == []:
            return {}  # nothing renamed
        if conv is not None:
            model._weight_conversions = conv
            attached = True
    out = {}
    try:
        for n in names:
            try:  # one name at a time on an empty tensor: renamings only, no data touched
                keys = list(revert_weight_conversion(model, {n: torch.empty(0, device="meta")}))
            except Exception:
                continue
            if len(keys) == 1:
                out[n] = keys[0]
    finally:
        if attached:
            del model._weight_conversions
    return out


def open_model(obj: Any, *, role: str = "base") -> TensorSource:
    """Open a model's weights for lazy, read-only access.

    Args:
        obj: an HF model folder (``model.safetensors``, or shards with
            ``model.safetensors.index.json``), a ``.safetensors`` file, a
            ``dict[str, torch.Tensor]``, an ``nn.Module`` (its ``state_dict()``), or a
            :class:`TensorSource` (returned as is), or a Hub id ``org/name[@revision]``
            (downloaded once, pinned to its commit sha; an existing local path wins).
        role: what this model is to the caller, used in error messages.

    Returns:
        A :class:`TensorSource`; close it (or use ``with``) to release the mappings.

    Raises:
        NotFoundError: the path, or a shard named by the index, does not exist.
        ModelError: a folder with only ``.bin`` weights, a malformed index, a tensor stored in
            two shards, or an object of another type.
        FormatError: a safetensors file is malformed.
    """
    if isinstance(obj, TensorSource):
        return obj
    if isinstance(obj, (str, os.PathLike)):  # an existing local path wins over a Hub id
        p = Path(obj)
        if p.is_dir():
            return _open_folder(p, role)
        if p.is_file():
            if p.suffix != ".safetensors":
                raise ModelError(f"{p}: expected a .safetensors file or a model folder; found a {p.suffix or 'extensionless'} file")
            f = SafetensorsFile(p)
            return SafetensorsSource({str(p): f}, dict.fromkeys(f.tensors, str(p)), role=role,
                                     label=str(p), path=None, config=None)
        from . import hub

        if isinstance(obj, str) and hub.parse_ref(obj) is not None:
            return _open_folder(Path(hub.resolve_model(obj).path), role)
        raise NotFoundError(f"{role} model {p}: no such file or folder (nor a Hub id org/name[@revision])")
    if isinstance(obj, Mapping):
        return TorchSource(obj, role=role, label="state dict")
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(obj, torch.nn.Module):
        return TorchSource(obj.state_dict(), role=role, label=type(obj).__name__, module=obj)
    raise ModelError(f"{role} model: cannot open a {type(obj).__name__}; pass a model folder, a "
                     ".safetensors file, a dict of torch tensors or an nn.Module")


def _read_json(path: Path, role: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{role} model: cannot read {path}: {e}") from None


def _open_folder(folder: Path, role: str) -> TensorSource:
    config = _read_json(folder / "config.json", role) if (folder / "config.json").is_file() else None
    index = folder / INDEX_NAME
    if index.is_file():
        doc = _read_json(index, role)
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(v, str) for v in wmap.values()):
            raise ModelError(f"{role} model: {index} has no valid 'weight_map' (name -> shard file)")
        shard_names = sorted(set(wmap.values()))
    elif (folder / SINGLE_NAME).is_file():
        wmap, shard_names = None, [SINGLE_NAME]
    else:
        raise _no_weights_error(folder, role)
    files: dict[str, SafetensorsFile] = {}
    where: dict[str, str] = {}
    try:
        for shard in shard_names:
            sp = folder / shard
            if os.path.dirname(shard) or not sp.is_file():
                raise NotFoundError(f"{role} model: {index} names shard {shard!r}, which is missing from "
                                    f"{folder}; re-download or re-save the model so all shards are present")
            files[shard] = f = SafetensorsFile(sp)
            for name in f.tensors:
                if name in where:
                    raise ModelError(f"{role} model {folder}: tensor {name!r} is stored in both {where[name]} and {shard}")
                where[name] = shard
        for name, shard in (wmap or {}).items():
            if where.get(name) != shard:
                raise ModelError(f"{role} model: {index} maps {name!r} to {shard}, but that file does not contain it")
    except BaseException:
        for f in files.values():
            f.close()
        raise
    return SafetensorsSource(files, where, role=role, label=str(folder), path=folder, config=config)


def _no_weights_error(folder: Path, role: str) -> Exception:
    bins = sorted(p.name for p in folder.glob("*.bin"))
    others = sorted(p.name for p in folder.glob("*.safetensors"))
    if bins:
        return ModelError(
            f"{role} model {folder}: only PyTorch pickle weights ({', '.join(bins[:3])}) found; lotavec reads "
            "safetensors only (pickles can run code). Convert once with: python -c \"from transformers import "
            f"AutoModelForCausalLM as M; M.from_pretrained('{folder}').save_pretrained('{folder}-safetensors')\""
        )
    if others:
        return ModelError(f"{role} model {folder}: no {SINGLE_NAME} or {INDEX_NAME}; found {', '.join(others[:3])}. "
                          "Pass the .safetensors file itself, or rename it to model.safetensors")
    if not (folder / "config.json").is_file():
        return NotFoundError(f"{role} model {folder}: not a model folder (no config.json, no safetensors weights)")
    return NotFoundError(f"{role} model {folder}: no weights ({SINGLE_NAME} or {INDEX_NAME}) in the folder")


def _folder_tied_groups(infos: Mapping[str, tuple], config: dict | None) -> list[tuple[str, ...]]:
    """Tied input/output embeddings of a checkpoint, from config.json and the stored names."""
    if not config:
        return []
    if config.get("tie_word_embeddings") is False:
        return []
    pair = _meta_info(json.dumps(config, sort_keys=True), frozenset(infos))[1]
    if pair is None or pair[0] not in infos:
        return []
    return [pair]


# --- what each tensor is ----------------------------------------------------------------------

#: Kinds :func:`classify` assigns. ``linear``: the 2-D weight of an ``nn.Linear`` (or GPT-2
#: ``Conv1D``) inside a transformer block; ``embedding``: an ``nn.Embedding`` weight (token or
#: position); ``lm_head``: the output embedding; ``norm``: parameters of normalization layers
#: (weights and biases); ``bias``: other biases; ``other``: everything else (linear layers
#: outside the blocks, buffers, custom parameters).
KINDS = ("linear", "embedding", "lm_head", "norm", "bias", "other")

_NUMBERED = re.compile(r"(^|\.)\d+\.")
_NORMISH = re.compile(r"(norm|(^|\.)ln_?\w*\.|layernorm|rmsnorm)", re.IGNORECASE)
_HEADISH = re.compile(r"(^|\.)(lm_head|embed_out|output)\.weight$")
_EMBISH = re.compile(r"(embed|(^|\.)wte\.|(^|\.)wpe\.|tok_embeddings)")


def _module_kinds(model) -> dict[str, str]:
    """Kind of every parameter and buffer name of a module tree (tied names all listed)."""
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
        linear_types: tuple = (torch.nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover - transformers is a dependency
        linear_types = (torch.nn.Linear,)
    block_types = set(getattr(model, "_no_split_modules", None) or ())
    try:
        out_emb = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        out_emb = None
    norm_types = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm, torch.nn.modules.batchnorm._BatchNorm)
    kinds: dict[str, str] = {}

    def visit(mod, prefix: str, in_block: bool) -> None:
        is_norm = isinstance(mod, norm_types) or "norm" in type(mod).__name__.lower()
        for pname, p in mod.named_parameters(recurse=False):
            if out_emb is not None and mod is out_emb:
                kind = "lm_head" if pname == "weight" else "bias"
            elif isinstance(mod, torch.nn.Embedding):
                kind = "embedding"
            elif is_norm:
                kind = "norm"
            elif pname == "bias":
                kind = "bias"
            elif in_block and isinstance(mod, linear_types) and pname == "weight" and p.dim() == 2:
                kind = "linear"
            else:
                kind = "other"
            kinds[prefix + pname] = kind
        for bname, _ in mod.named_buffers(recurse=False):
            kinds[prefix + bname] = "other"
        for cname, child in mod.named_children():
            child_in_block = in_block or isinstance(mod, torch.nn.ModuleList) or type(child).__name__ in block_types
            visit(child, f"{prefix}{cname}.", child_in_block)

    visit(model, "", False)
    return kinds


@functools.lru_cache(maxsize=8)
def _meta_info(config_json: str, stored: frozenset[str] = frozenset()
               ) -> tuple[dict[str, str] | None, tuple[str, str] | None]:
    """Instantiate the architecture of a config.json on the meta device (no memory, no weights).

    ``stored``: the checkpoint's tensor names; when they already hold every module name (tied
    aliases aside), transformers' save-time renamings are not looked up (that lookup builds its
    table of every architecture's conversions, ~0.2 s, once per process).

    Returns:
        ``(checkpoint name -> kind or None when the architecture is unknown, tied (embedding,
        lm_head) checkpoint names or None)``.
    """
    import torch

    try:
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

        doc = json.loads(config_json)
        cfg = AutoConfig.for_model(**doc)
        with torch.device("meta"):
            try:
                model = AutoModelForCausalLM.from_config(cfg)
            except ValueError:
                model = AutoModel.from_config(cfg)
    except Exception:  # unknown or custom architecture: callers fall back to the name heuristic
        return None, None
    kinds = _module_kinds(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    to_ckpt = {n: n for n in kinds}
    first: dict[int, str] = {}
    for n, p in params.items():
        first.setdefault(id(p), n)
    aliases = {n for n, p in params.items() if first[id(p)] != n}
    if not stored or not set(params) - aliases <= stored:  # buffers are not stored
        to_ckpt.update(_checkpoint_names(model, list(kinds)))
    ckpt_kinds = {to_ckpt[n]: k for n, k in kinds.items()}
    for n, k in kinds.items():
        ckpt_kinds.setdefault(n, k)
    tied = None
    try:
        emb, out = model.get_input_embeddings(), model.get_output_embeddings()
        if emb is not None and out is not None and out.weight is emb.weight:
            names = {id(p): n for n, p in model.named_parameters()}  # first (stored) name
            alias = [n for n, p in params.items() if p is out.weight and n != names[id(p)]]
            if alias:
                tied = (to_ckpt[names[id(out.weight)]], to_ckpt[alias[0]])
    except (AttributeError, NotImplementedError, KeyError):
        pass
    return ckpt_kinds, tied


def _heuristic_kind(name: str, shape: tuple[int, ...]) -> str:
    """Kind of a tensor from its name and shape alone (no architecture known).

    Rules, first match wins: names with a norm-like part (``norm``, ``ln_*``) are ``norm``;
    ``*.bias`` is ``bias``; ``lm_head.weight``/``embed_out.weight``/``output.weight`` are
    ``lm_head``; names with ``embed``/``wte``/``wpe`` are ``embedding``; other 1-D weights are
    ``norm``; 2-D ``*.weight`` under a numbered block (``...layers.3.``) is ``linear``; the rest
    ``other``.
    """
    if _NORMISH.search(name):
        return "norm"
    if name.endswith("bias"):
        return "bias"
    if _HEADISH.search(name):
        return "lm_head"
    if _EMBISH.search(name):
        return "embedding"
    if len(shape) == 1 and name.endswith("weight"):
        return "norm"
    if len(shape) == 2 and name.endswith(".weight") and _NUMBERED.search(name):
        return "linear"
    return "other"


def _known_kinds(src: TensorSource) -> tuple[dict[str, str], str]:
    """``(name -> kind for stored and aliased names, how)``; ``how`` is module/config/heuristic."""
    known: dict[str, str] | None = None
    how = "heuristic"
    if src.module is not None:
        mk = _module_kinds(src.module)
        to_ckpt = _checkpoint_names(src.module, list(mk))
        known, how = {to_ckpt.get(n, n): k for n, k in mk.items()}, "module"
    elif src.config:
        known = _meta_info(json.dumps(src.config, sort_keys=True), frozenset(src.names()))[0]
        how = "config" if known is not None else how
    known = dict(known or {})
    out: dict[str, str] = {}
    for name in src.names():
        kind = known.get(name)
        if kind is None and how != "heuristic":
            kind = next((known[v] for v in _prefix_variants(name) if v in known), None)
        out[name] = kind or _heuristic_kind(name, src.info(name)[1])
    for group in src.tied_groups():
        for alias in group[1:]:
            out.setdefault(alias, known.get(alias) or _heuristic_kind(alias, src.info(group[0])[1]))
    return out, how


def _prefix_variants(name: str) -> list[str]:
    """The same name with the usual base-model prefix added or removed (``model.``...)."""
    prefixes = ["model.", "transformer.", "gpt_neox."]
    out = [p + name for p in prefixes]
    out += [name[len(p):] for p in prefixes if name.startswith(p)]
    return out


def classify(source: Any) -> dict[str, str]:
    """What each stored tensor of a model is (one of :data:`KINDS`).

    The decision uses, in this order: the module tree of an ``nn.Module`` source; the
    architecture of ``config.json`` instantiated on the meta device (folders); a name/shape
    heuristic for bare files and state dicts (see ``_heuristic_kind``).

    Args:
        source: anything :func:`open_model` accepts.

    Returns:
        ``{name: kind}`` for every name of ``source.names()``.
    """
    src = open_model(source)
    try:
        kinds, _ = _known_kinds(src)
        return {n: kinds[n] for n in src.names()}
    finally:
        if src is not source:
            src.close()


def select_candidates(
    source: Any,
    *,
    embeddings: bool = False,
    lm_head: bool = False,
    norms: bool = False,
    biases: bool = False,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> list[str]:
    """Names of the tensors eligible for a ticket, chosen by what they are.

    1. Start from the kinds asked for (see :func:`classify`): ``linear`` always (the 2-D
       weights of the linear layers inside the transformer blocks: attention and MLP
       projections), plus ``embedding``/``lm_head``/``norm``/``bias`` when the flag is set.
    2. ``include``: add every tensor whose name matches one of these regexes (``re.search``),
       whatever its kind.
    3. ``exclude``: remove every tensor whose name matches one of these regexes (exclude wins
       over include).

    Tied tensors count once, under their stored name: a tied group (e.g. embeddings and LM
    head) is selected when any member's kind is asked for or any member's name matches an
    ``include``, and dropped when any member matches an ``exclude``. Only floating tensors a
    ticket can carry (BF16, F16, F32) are ever returned.

    Args:
        source: anything :func:`open_model` accepts.
        embeddings, lm_head, norms, biases: also select these kinds.
        include, exclude: regular expressions on tensor names.

    Returns:
        Sorted stored names.

    Raises:
        SelectionError: an invalid regex, an ``include`` matching no tensor, or an empty result.
    """
    inc, exc = _compile(include, "include"), _compile(exclude, "exclude")
    wanted = {"linear"} | {k for k, on in (("embedding", embeddings), ("lm_head", lm_head),
                                           ("norm", norms), ("bias", biases)) if on}
    src = open_model(source)
    try:
        kinds, how = _known_kinds(src)
        members = {n: (n,) for n in src.names()}
        for group in src.tied_groups():
            stored = [m for m in group if m in members]
            for m in stored[1:]:  # several stored copies of one tied tensor: keep the first
                members.pop(m, None)
            if stored:
                members[stored[0]] = tuple(group)
        hit = dict.fromkeys([p.pattern for p in inc], 0)
        chosen = []
        for name, group in sorted(members.items()):
            on = any(kinds.get(m) in wanted for m in group)
            for p in inc:
                if any(p.search(m) for m in group):
                    hit[p.pattern] += 1
                    on = True
            if on and any(p.search(m) for p in exc for m in group):
                on = False
            if on and src.info(name)[0] in TICKET_DTYPES:
                chosen.append(name)
        unused = [p for p, n in hit.items() if n == 0]
        if unused:
            raise SelectionError(f"{src.role} model {src.label}: --include pattern(s) {unused} match no tensor; "
                                 f"names look like {src.names()[:3]}")
        if not chosen:
            counts = {k: list(kinds.values()).count(k) for k in KINDS}
            raise SelectionError(
                f"{src.role} model {src.label}: no candidate tensors (kinds found by {how}: {counts}); "
                "turn on embeddings/lm_head/norms/biases or name tensors with --include REGEX")
        return chosen
    finally:
        if src is not source:
            src.close()


def _compile(patterns: Iterable[str], flag: str) -> list[re.Pattern]:
    if isinstance(patterns, str):
        patterns = [patterns]
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise SelectionError(f"--{flag} {p!r} is not a valid regular expression: {e}") from None
    return out


def check_compatible(base: Any, other: Any, names: Iterable[str] | None = None, *,
                     check_vocab: bool = True) -> None:
    """Check that ``other`` (e.g. a fine-tune) has the tensors of ``base`` with the same shapes and dtypes.

    Args:
        base, other: anything :func:`open_model` accepts.
        names: tensors to compare; default: all of them, and then ``other`` must not have
            tensors ``base`` lacks either.
        check_vocab: also refuse a resized vocabulary (embedding / LM head rows differ), even
            when those tensors are not in ``names``.

    Raises:
        TensorMismatchError: every problem found, each naming its tensor; a resized vocabulary
            gets its own explanation of what happened and what to do.
    """
    b = open_model(base, role="base")
    o = open_model(other, role="fine-tuned" if not isinstance(other, TensorSource) else other.role)
    try:
        full = names is None
        todo = b.names() if full else list(names)
        problems: list[str] = []
        missing = [n for n in todo if n not in o]
        if missing:
            problems.append(f"missing from the {o.role} model: {_few(missing)}")
        if full:
            extra = [n for n in o.names() if n not in b]
            if extra:
                problems.append(f"in the {o.role} model but not the base: {_few(extra)}")
        kinds = None
        shapes, dtypes = [], []
        for n in todo:
            if n not in o:
                continue
            (bd, bs), (od, os_) = b.info(n), o.info(n)
            if bs != os_:
                kinds = kinds or _known_kinds(b)[0]
                if kinds.get(n) in ("embedding", "lm_head") and bs[1:] == os_[1:]:
                    raise TensorMismatchError(_vocab_message(n, bs, os_, b, o))
                shapes.append(f"{n} (base {list(bs)}, {o.role} {list(os_)})")
            elif bd != od:
                dtypes.append(f"{n} (base {bd}, {o.role} {od})")
        if shapes:
            problems.append(f"shape differs for {len(shapes)} tensor(s): {_few(shapes, quote=False)}")
        if dtypes:
            problems.append(f"dtype differs for {len(dtypes)} tensor(s): {_few(dtypes, quote=False)}")
        if check_vocab and not problems:
            kinds = kinds or _known_kinds(b)[0]
            for n in b.names():
                if kinds.get(n) in ("embedding", "lm_head") and n in o and b.info(n)[1] != o.info(n)[1]:
                    (_, bs), (_, os_) = b.info(n), o.info(n)
                    if bs[1:] == os_[1:]:
                        raise TensorMismatchError(_vocab_message(n, bs, os_, b, o))
        if problems:
            raise TensorMismatchError(
                f"{o.role} model {o.label} does not match base model {b.label}: " + "; ".join(problems)
                + ". Use the base model the fine-tune was made from (same architecture, same dtype: "
                "convert with model.to(dtype).save_pretrained(...) if only the dtype differs)")
    finally:
        if b is not base:
            b.close()
        if o is not other:
            o.close()


def _few(names: list[str], k: int = 5, quote: bool = True) -> str:
    shown = ", ".join(repr(n) if quote else n for n in names[:k])
    return shown + (f" and {len(names) - k} more" if len(names) > k else "")


def _vocab_message(name: str, bs: tuple, os_: tuple, b: TensorSource, o: TensorSource) -> str:
    return (
        f"tensor {name!r}: the vocabulary was resized: the base has {bs[0]} rows, the {o.role} model "
        f"{o.label} has {os_[0]} (tokens were added or removed and the embeddings resized). A ticket "
        "only describes changes to tensors of the base's shape. Either make a resized base first "
        f"(model.resize_token_embeddings({os_[0]}) on the base, save it, and use that folder as the base), "
        "or use a fine-tune that kept the base tokenizer")
