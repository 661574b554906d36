"""Base fingerprints (spec §8): a cheap sampled hash and a full digest of a base tensor."""

from __future__ import annotations

import hashlib

import numpy as np

#: Number of elements the sampled fingerprint reads.
SAMPLE_ELEMENTS = 4096


def sample_positions(numel: int) -> np.ndarray:
    """Flat positions hashed by the sampled fingerprint: ⌊i·numel/S⌋ for i < S = min(numel, 4096)."""
    s = min(numel, SAMPLE_ELEMENTS)
    return (np.arange(s, dtype=np.int64) * numel) // max(s, 1)


def base_sample(storage: np.ndarray) -> str:
    """Blake2b-128 of the little-endian bytes of the sampled elements (hex)."""
    flat = storage.reshape(-1)
    return hashlib.blake2b(np.ascontiguousarray(flat[sample_positions(flat.size)]).tobytes(), digest_size=16).hexdigest()


def base_digest(storage: np.ndarray) -> str:
    """Blake2b-128 of all the tensor's little-endian bytes in C order (hex)."""
    h = hashlib.blake2b(digest_size=16)
    flat = np.ascontiguousarray(storage).reshape(-1).view(np.uint8)
    step = 1 << 26
    for i in range(0, flat.size, step):
        h.update(flat[i : i + step])
    return h.hexdigest()
