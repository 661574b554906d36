"""Dtype names of the spec and their numpy storage types (numpy has no bfloat16).

Tensors travel through the numpy layers as *storage arrays*: ``BF16`` as ``uint16`` bit patterns,
``F16``/``F32``/``F64`` as the native float types. :func:`to_float32` and :func:`from_float32` convert.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidHeaderError

#: safetensors dtype name -> (numpy storage dtype, is floating point)
STORAGE: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # bit patterns
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(np.uint8),  # bit patterns
    "F8_E5M2": np.dtype(np.uint8),  # bit patterns
}

#: Float dtypes a ticket may carry values for.
TICKET_DTYPES = ("BF16", "F16", "F32")

#: Unsigned integer type with the same width as each ticket dtype (bit-pattern arithmetic).
BITS: dict[str, np.dtype] = {"BF16": np.dtype("<u2"), "F16": np.dtype("<u2"), "F32": np.dtype("<u4")}


def storage_dtype(name: str) -> np.dtype:
    """Numpy storage dtype for a safetensors dtype name.

    Raises:
        InvalidHeaderError: the name is not a known dtype.
    """
    try:
        return STORAGE[name]
    except KeyError:
        raise InvalidHeaderError(f"unknown dtype {name!r}; known: {', '.join(STORAGE)}") from None


def itemsize(name: str) -> int:
    """Bytes per element of a safetensors dtype."""
    return storage_dtype(name).itemsize


def as_bits(storage: np.ndarray, name: str) -> np.ndarray:
    """View a storage array of ticket dtype ``name`` as unsigned bit patterns (no copy)."""
    return storage.view(BITS[name])


def to_float32(storage: np.ndarray, name: str) -> np.ndarray:
    """Convert a storage array of dtype ``name`` to float32 (exact for BF16/F16/F32)."""
    if name == "BF16":
        return (storage.astype(np.uint32) << 16).view(np.float32)
    if name in ("F16", "F32", "F64"):
        return storage.astype(np.float32)
    raise InvalidHeaderError(f"dtype {name!r} has no float32 conversion")


def from_float32(x: np.ndarray, name: str) -> np.ndarray:
    """Round float32 values to dtype ``name`` (round-to-nearest-even) as a storage array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if name == "BF16":
        bits = x.view(np.uint32)
        nan = np.isnan(x)
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
        out = (rounded >> 16).astype(np.uint16)
        if nan.any():
            out[nan] = ((bits[nan] >> 16) | np.uint32(0x0040)).astype(np.uint16)
        return out
    if name == "F16":
        return x.astype(np.float16)
    if name == "F32":
        return x
    if name == "F64":
        return x.astype(np.float64)
    raise InvalidHeaderError(f"cannot store float values as dtype {name!r}")
