"""A ticket as a *sparse weight patch*: flat indices and new values per tensor, in plain safetensors.

The convention (what serving and RL stacks use for in-place weight updates): for every patched
weight ``W`` of the model,

* ``NAME.indices`` — the flat (row-major, C order) positions to overwrite, strictly increasing,
  ``I32`` (``I64`` when ``W`` has 2^31 elements or more), shape ``[nnz]``;
* ``NAME.values`` — the new weights at those positions, in ``W``'s own dtype, shape ``[nnz]``;

and applying is ``W.view(-1)[indices] = values`` — no arithmetic, so the result is bit-exact.
``__metadata__`` holds ``"format": "pt"``, ``"sparse_patch.version": "1"``, the convention in one
sentence, ``"sparse_patch.tensors"`` (JSON: name → ``{"shape", "dtype", "nnz"}``), and the
lotavec provenance (base identity, source ticket).

Unlike a ticket, a patch is base-free (it holds the fine-tuned values, not differences) and
uncompressed: about ``nnz × (4 + itemsize)`` bytes.

Example:
    >>> export_patch("math.lotavec.safetensors", "math.patch.safetensors", base="path/to/base")  # doctest: +SKIP
    >>> apply_patch(model, "math.patch.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import FormatError, NotFoundError, OutputExistsError, TensorMismatchError
from ..format.dtypes import storage_dtype
from ..format.safetensors_io import SafetensorsFile, build_header
from ..models import open_model
from ..ticket import Ticket, load_ticket
from . import ticket_base

Progress = Callable[[str, int, int], None] | None

#: Version of the patch convention written into ``__metadata__["sparse_patch.version"]``.
PATCH_VERSION = "1"
CONVENTION = ("for each tensor NAME: W = model[NAME]; W.view(-1)[NAME.indices] = NAME.values "
              "(flat row-major indices, strictly increasing; values are the new weights in W's dtype)")
_I32_LIMIT = 2**31


@dataclass(frozen=True)
class PatchExport:
    """What :func:`export_patch` wrote.

    Attributes:
        path: the patch file.
        tensors: patched tensors; ``nnz`` the entries over all of them.
        bytes: file size.
        index_dtypes: tensor name → ``"I32"`` or ``"I64"``.
    """

    path: str
    tensors: int
    nnz: int
    bytes: int
    index_dtypes: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able summary (what ``lotavec export --to patch --json`` prints)."""
        return {"to": "patch", "path": self.path, "tensors": self.tensors, "nnz": self.nnz, "bytes": self.bytes,
                "i64_tensors": sorted(n for n, d in self.index_dtypes.items() if d == "I64")}


def index_dtype(numel: int) -> str:
    """``"I32"`` for tensors with fewer than 2^31 elements, else ``"I64"``."""
    return "I32" if numel < _I32_LIMIT else "I64"


def export_patch(ticket: Ticket | str | os.PathLike, out: str | os.PathLike, *, base: Any = None,
                 check_base: bool = True, overwrite: bool = False, progress: Progress = None) -> PatchExport:
    """Write a ticket as a sparse weight patch (see the module docstring for the convention).

    Values are the ticket's fine-tuned values, bit-exact: ``ulpdiff`` and ``f32delta`` tickets
    need the base they were made from to compute them; ``raw`` tickets need no base. One tensor
    is decoded at a time.

    Args:
        ticket: a :class:`Ticket` or a ticket path / Hub id.
        out: the ``.safetensors`` file to write (atomically).
        base: the base model (folder, file, Hub id, state dict, ``nn.Module``); default the
            ticket's recorded ``base.repo_id``. Not needed when every tensor is ``raw``.
        check_base: refuse a base whose tensors differ from the ticket's (sampled fingerprint).
        overwrite: replace an existing ``out``.
        progress: ``progress(stage, done, total)``, per tensor.

    Returns:
        :class:`PatchExport`.

    Raises:
        OutputExistsError: ``out`` exists and ``overwrite`` is false.
        ModelError: a base is needed and none is given or recorded.
        TensorMismatchError, FingerprintMismatchError: the base is not the ticket's.
    """
    tk = ticket if isinstance(ticket, Ticket) else load_ticket(ticket)
    out = os.fspath(out)
    if os.path.exists(out) and not overwrite:
        raise OutputExistsError(f"{out} already exists; choose another output or allow overwriting (--force)")
    names = tk.names
    infos = {n: tk.info(n) for n in names}
    need_base = any(i["values"] != "raw" for i in infos.values())
    src = open_model(ticket_base(tk, base), role="base") if need_base else None
    try:
        entries, meta_tensors, idx_dt = [], {}, {}
        for n in names:
            i = infos[n]
            idx_dt[n] = index_dtype(i["numel"])
            entries.append((f"{n}.indices", idx_dt[n], (i["nnz"],), i["nnz"] * (4 if idx_dt[n] == "I32" else 8)))
            entries.append((f"{n}.values", i["dtype"], (i["nnz"],), i["nnz"] * storage_dtype(i["dtype"]).itemsize))
            meta_tensors[n] = {"shape": i["shape"], "dtype": i["dtype"], "nnz": i["nnz"]}
        meta = {
            "format": "pt",
            "sparse_patch.version": PATCH_VERSION,
            "sparse_patch.convention": CONVENTION,
            "sparse_patch.tensors": json.dumps(meta_tensors, separators=(",", ":")),
            "lotavec.base": json.dumps(tk.base, separators=(",", ":"), default=str),
            "lotavec.ticket": os.path.basename(tk.path) if tk.path else "",
            "lotavec.version": __version__,
        }
        header, _ = build_header(entries, meta)
        size = _write_atomic(out, header, _payloads(tk, names, src, idx_dt, check_base, progress))
    finally:
        if src is not None and src is not base:
            src.close()
    return PatchExport(out, len(names), sum(i["nnz"] for i in infos.values()), size, idx_dt)


def _payloads(tk: Ticket, names: list[str], src: Any, idx_dt: dict[str, str], check: bool,
              progress: Progress) -> Iterator[np.ndarray]:
    for k, n in enumerate(names, 1):
        tt = tk[n]
        base_at = None
        if tt.values != "raw":
            if n not in src:
                raise TensorMismatchError(f"tensor {n!r}: the ticket changes it but the base model has no such tensor")
            arr = src.array(n)
            if check:
                tt.check_base(arr, src.info(n)[0])
            elif tuple(arr.shape) != tt.shape or src.info(n)[0] != tt.dtype:
                raise TensorMismatchError(f"tensor {n!r}: ticket expects {tt.dtype}{list(tt.shape)}, "
                                          f"base has {src.info(n)[0]}{list(arr.shape)}")
            base_at = np.take(arr.reshape(-1), tt.indices)
            src.release(n)
        yield tt.indices.astype("<i4" if idx_dt[n] == "I32" else "<i8")
        yield np.ascontiguousarray(tt.finetuned(base_at))
        if progress is not None:
            progress("export", k, len(names))


def _write_atomic(path: str, header: bytes, chunks: Iterator[np.ndarray]) -> int:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".lotavec-patch-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header)
            for a in chunks:
                fh.write(memoryview(a).cast("B"))
            fh.flush()
            os.fsync(fh.fileno())
            size = fh.tell()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return size


def read_patch(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray, np.ndarray, str, tuple[int, ...]]]:
    """Iterate over a sparse weight patch, one tensor at a time.

    Yields:
        ``(name, indices int64, values storage array, dtype name, shape)``.

    Raises:
        NotFoundError: no such file.
        FormatError: not a sparse weight patch, or its tensors disagree with its metadata.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise NotFoundError(f"{p}: no such patch file")
    with SafetensorsFile(p) as f:
        meta = f.metadata or {}
        if meta.get("sparse_patch.version") != PATCH_VERSION or "sparse_patch.tensors" not in meta:
            raise FormatError(f"{p}: not a sparse weight patch (version {PATCH_VERSION}): "
                              "__metadata__ lacks sparse_patch.version / sparse_patch.tensors")
        try:
            tensors = json.loads(meta["sparse_patch.tensors"])
        except json.JSONDecodeError as e:
            raise FormatError(f"{p}: sparse_patch.tensors is not JSON: {e}") from None
        for name, t in tensors.items():
            ik, vk = f"{name}.indices", f"{name}.values"
            if ik not in f.tensors or vk not in f.tensors:
                raise FormatError(f"{p}: tensor {name!r} is listed but {ik!r} or {vk!r} is missing")
            idx = f.array(ik).astype(np.int64)
            vals = np.array(f.array(vk))
            shape = tuple(int(x) for x in t["shape"])
            numel = int(np.prod(shape, dtype=np.int64))
            if f.info(vk).dtype != t["dtype"] or idx.shape != vals.shape or idx.size != t["nnz"]:
                raise FormatError(f"{p}: tensor {name!r}: indices/values do not match the metadata "
                                  f"({t['dtype']}, nnz {t['nnz']})")
            if idx.size and (idx[0] < 0 or idx[-1] >= numel or np.any(np.diff(idx) <= 0)):
                raise FormatError(f"{p}: tensor {name!r}: indices must be strictly increasing in [0, {numel})")
            yield name, idx, vals, t["dtype"], shape


def apply_patch(model: Any, path: str | os.PathLike) -> int:
    """Apply a sparse weight patch in place: ``W.view(-1)[indices] = values`` for each tensor.

    Args:
        model: an ``nn.Module`` or a ``dict[str, torch.Tensor]`` (modified in place, on its device).
        path: the patch file.

    Returns:
        The number of entries written.

    Raises:
        TensorMismatchError: the model lacks a patched tensor, or its shape or dtype differ.
        FormatError: the file is not a valid patch.
    """
    import torch

    from ..torchio import dtype_name, to_torch

    src = open_model(model, role="model")
    done = 0
    with torch.no_grad():
        for name, idx, vals, dtype, shape in read_patch(path):
            if name not in src:
                raise TensorMismatchError(f"patch {os.fspath(path)}: model has no tensor {name!r}")
            w = src.tensor(name)
            if tuple(w.shape) != shape or dtype_name(w.dtype) != dtype:
                raise TensorMismatchError(f"tensor {name!r}: patch expects {dtype}{list(shape)}, "
                                          f"model has {dtype_name(w.dtype)}{list(w.shape)}")
            w.view(-1)[torch.from_numpy(idx).to(w.device)] = to_torch(vals, dtype).to(w.device)
            done += idx.size
    return done
