"""The one place that converts storage arrays to and from torch tensors.

Storage arrays (see :mod:`lotavec.format.dtypes`) carry tensors in numpy without bfloat16:
``BF16`` travels as ``uint16`` bit patterns, ``F8_*`` as ``uint8``. Conversions here reinterpret
bits (``Tensor.view(dtype)``), never round, and share memory whenever the layout allows.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .errors import ModelError
from .format.dtypes import storage_dtype

#: safetensors dtype name -> torch dtype
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_NAMES: dict[torch.dtype, str] = {v: k for k, v in TORCH_DTYPES.items()}

# Signed integer stand-ins: torch.from_numpy needs a numpy dtype torch supports everywhere, and
# the bit-reinterpreting ``view`` then gives the float type.
_CARRIER = {1: (np.int8, torch.int8), 2: (np.int16, torch.int16), 4: (np.int32, torch.int32), 8: (np.int64, torch.int64)}
_VIEWED = {"BF16", "F8_E4M3", "F8_E5M2", "U16", "U32", "U64"}


def dtype_name(dtype: torch.dtype) -> str:
    """safetensors dtype name of a torch dtype (``torch.bfloat16`` -> ``"BF16"``).

    Raises:
        ModelError: the dtype has no safetensors name (e.g. complex types).
    """
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ModelError(f"torch dtype {dtype} has no safetensors name; convert the tensor to one of "
                         f"{', '.join(str(d) for d in _NAMES)}") from None


def torch_dtype(name: str) -> torch.dtype:
    """torch dtype for a safetensors dtype name (``"BF16"`` -> ``torch.bfloat16``).

    Raises:
        ModelError: unknown name.
    """
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise ModelError(f"unknown dtype name {name!r}; known: {', '.join(TORCH_DTYPES)}") from None


def to_torch(storage: np.ndarray, dtype: str, *, copy: bool = False) -> torch.Tensor:
    """A torch tensor of dtype ``dtype`` over a storage array.

    Args:
        storage: storage array (BF16 as ``uint16`` bits...), any shape.
        dtype: its safetensors dtype name.
        copy: return a tensor with its own writable memory. Without it the tensor shares the
            array's memory when the array is C-contiguous; if the array is read-only (e.g. a
            read-only file mapping) the tensor must not be written to.

    Returns:
        The tensor, same shape as ``storage``.

    Raises:
        ModelError: the array's numpy dtype is not the storage dtype of ``dtype``.
    """
    want = storage_dtype(dtype)
    if storage.dtype != want:
        raise ModelError(f"storage array has numpy dtype {storage.dtype} but {dtype} is stored as {want}")
    arr = np.ascontiguousarray(storage)
    if copy and arr is storage:
        arr = arr.copy()
    if dtype in _VIEWED:
        np_carrier, t_carrier = _CARRIER[arr.dtype.itemsize]
        arr = arr.view(np_carrier)
    with warnings.catch_warnings():
        # torch warns about read-only arrays; sharing a read-only mapping is intended here.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(arr)
    if dtype in _VIEWED:
        t = t.view(TORCH_DTYPES[dtype])
    return t


def to_storage(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """A tensor's storage array and dtype name.

    Shares memory with ``t`` when it is a contiguous CPU tensor; otherwise copies (to CPU,
    contiguous). The returned array is marked read-only so numpy code cannot modify the tensor
    by accident; call ``.copy()`` for a writable array.

    Returns:
        ``(storage array, dtype name)``.

    Raises:
        ModelError: the dtype has no safetensors name.
    """
    name = dtype_name(t.dtype)
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if name in _VIEWED:
        _, t_carrier = _CARRIER[t.element_size()]
        arr = t.view(t_carrier).numpy().view(storage_dtype(name))
    else:
        arr = t.numpy()
    arr = arr.view()
    arr.flags.writeable = False
    return arr, name
