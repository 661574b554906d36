"""Shared helpers for the benchmark scripts (timing, memcpy baseline, model shapes)."""

from __future__ import annotations

import os
import time

import numpy as np

#: The 2-D block matrices of SmolLM2-135M (30 layers, d=576, kv=192, mlp=1536).
SMOLLM2_BLOCK_SHAPES = [
    (f"model.layers.{i}.{m}.weight", s)
    for i in range(30)
    for m, s in [
        ("self_attn.q_proj", (576, 576)),
        ("self_attn.k_proj", (192, 576)),
        ("self_attn.v_proj", (192, 576)),
        ("self_attn.o_proj", (576, 576)),
        ("mlp.gate_proj", (1536, 576)),
        ("mlp.up_proj", (1536, 576)),
        ("mlp.down_proj", (576, 1536)),
    ]
]


def best_of(fn, repeat: int = 3) -> float:
    """Smallest wall time of ``repeat`` calls (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def memcpy_gbps(nbytes: int = 1 << 30) -> float:
    """GB/s of ``np.copyto`` on a buffer of ``nbytes`` (the baseline printed beside every result)."""
    a = np.ones(nbytes, dtype=np.uint8)
    b = np.empty_like(a)
    t = best_of(lambda: np.copyto(b, a), 3)
    return nbytes / t / 1e9


def machine() -> str:
    return f"{os.cpu_count()} cores, numpy {np.__version__}"
