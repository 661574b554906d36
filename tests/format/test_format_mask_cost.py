"""Bits-per-parameter sanity: the mask costs at most 1.10 × H(p) on random masks (issue 2 target)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lotavec.format import TicketFile, TicketFileWriter

N = 1 << 22


def entropy(p: float) -> float:
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.mark.parametrize("p", [0.01, 0.10])
def test_mask_cost_within_ten_percent_of_entropy(tmp_path, p):
    rng = np.random.default_rng(12345)
    idx = np.flatnonzero(rng.random(N) < p)
    ft_delta = rng.integers(-40, 41, idx.size).astype(np.int16).view(np.uint16)
    path = tmp_path / "t.safetensors"
    with TicketFileWriter(path) as w:  # default chunk_elements
        w.add("w", (N // 1024, 1024), "BF16", idx, "ulpdiff", ft_delta)
    with TicketFile(path) as tf:
        e = tf.entry("w")
        mask_bits = 8 * sum(c.mask_bytes for c in e.chunks)
        value_bits = 8 * sum(c.value_bytes for c in e.chunks)
        got_idx, got = tf.read_tensor("w")
    assert np.array_equal(got_idx, idx) and np.array_equal(got, ft_delta)
    p_hat = idx.size / N
    ratio = mask_bits / (N * entropy(p_hat))
    assert ratio <= 1.10, f"mask costs {ratio:.3f} × H(p) at p={p}"
    assert ratio >= 0.95  # a random mask cannot beat its entropy by much: guards the measurement
    # values: 81 distinct small differences need about log2(81) ≈ 6.3 bits; allow zstd overhead
    assert value_bits / idx.size < 8.0
    assert path.stat().st_size * 8 < N + 16 * idx.size  # smaller than raw bitmap + raw bf16 values
