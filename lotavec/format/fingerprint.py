"""Base fingerprints (spec §8): a cheap sampled hash and a full digest of a base tensor."""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from .. import native

#: Number of elements the sampled fingerprint reads.
SAMPLE_ELEMENTS = 4096


def sample_positions(numel: int) -> np.ndarray:
    """Flat positions hashed by the sampled fingerprint: ⌊i·numel/S⌋ for i < S = min(numel, 4096)."""
    s = min(numel, SAMPLE_ELEMENTS)
    return (np.arange(s, dtype=np.int64) * numel) // max(s, 1)


@functools.lru_cache(maxsize=256)
def _positions(numel: int) -> np.ndarray:
    pos = sample_positions(numel)
    pos.flags.writeable = False
    return pos


def base_sample(storage: np.ndarray) -> str:
    """Blake2b-128 of the little-endian bytes of the sampled elements (hex).

    The gather runs in the compiled kernels when they are available, without holding the GIL: on
    a freshly mapped base it faults the tensor's pages in, and merge workers sample tensors
    concurrently.
    """
    flat = storage.reshape(-1)
    pos = _positions(flat.size)
    lib = native.kernels("codec")
    if lib is not None and flat.flags.c_contiguous and flat.itemsize in (1, 2, 4, 8) and pos.size:
        sample = np.empty(pos.size, flat.dtype)
        lib.lv_gather(native.ptr(flat), flat.itemsize, native.ptr(pos), pos.size, native.ptr(sample))
    else:
        sample = np.ascontiguousarray(flat[pos])
    return sample_digest(sample)


def sample_digest(sample: bytes | memoryview | np.ndarray) -> str:
    """The sampled fingerprint of gathered elements' little-endian bytes (what :func:`base_sample`
    hashes; for callers that gather the sample themselves, e.g. the compiled merge)."""
    return hashlib.blake2b(sample, digest_size=16).hexdigest()


def base_digest(storage: np.ndarray) -> str:
    """Blake2b-128 of all the tensor's little-endian bytes in C order (hex)."""
    h = hashlib.blake2b(digest_size=16)
    flat = np.ascontiguousarray(storage).reshape(-1).view(np.uint8)
    step = 1 << 26
    for i in range(0, flat.size, step):
        h.update(flat[i : i + step])
    return h.hexdigest()
