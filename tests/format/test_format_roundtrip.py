"""Round-trip properties: encode → save → load → decode is the identity, bit for bit, and applying
a lossless ticket to its base reproduces the fine-tuned bit patterns exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from format_helpers import STORE, UINT, bits_of, storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lotavec.errors import CorruptTicketError
from lotavec.ticket import Ticket, TicketTensor, load_ticket

EXP = {"BF16": 0x7F80, "F16": 0x7C00, "F32": 0x7F800000}
LOW_EXP_BIT = {"BF16": 0x0080, "F16": 0x0400, "F32": 0x00800000}
# ±0, ±smallest subnormal, largest subnormal, smallest normal, ±largest finite
SPECIALS = {
    "BF16": [0x0000, 0x8000, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F],
    "F16": [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF],
    "F32": [0x0, 0x80000000, 0x1, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF],
}


def finite_bits(rng: np.random.Generator, dtype: str, n: int, specials: bool) -> np.ndarray:
    """Uniform random *finite* bit patterns (all exponents, subnormals included), optionally
    with a share of ±0, subnormal and ±max-finite patterns."""
    width = UINT[dtype].itemsize * 8
    bits = rng.integers(0, 1 << width, n, dtype=np.uint64)
    nonfinite = (bits & EXP[dtype]) == EXP[dtype]
    bits[nonfinite] ^= LOW_EXP_BIT[dtype]
    if specials and n:
        k = rng.integers(0, n + 1)
        bits[rng.choice(n, k, replace=False)] = rng.choice(SPECIALS[dtype], k)
    return bits.astype(UINT[dtype])


@st.composite
def tensor_cases(draw, name: str):
    dtype = draw(st.sampled_from(["BF16", "F16", "F32"]))
    values = draw(st.sampled_from(["ulpdiff", "raw", "f32delta"]))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, 30), min_size=ndim, max_size=ndim)))
    density = draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    specials = draw(st.booleans())
    return name, dtype, values, shape, density, seed, specials


def build(case) -> tuple[TicketTensor, np.ndarray, np.ndarray]:
    """(ticket tensor, base storage, expected storage after apply)."""
    name, dtype, values, shape, density, seed, specials = case
    rng = np.random.default_rng(seed)
    numel = math.prod(shape)
    idx = np.flatnonzero(rng.random(numel) < density)
    base = finite_bits(rng, dtype, numel, specials)
    if values == "f32delta":
        delta = rng.standard_normal(idx.size).astype(np.float32) * np.float32(rng.choice([1e-6, 1e-2, 10.0]))
        if specials and idx.size:
            delta[rng.integers(0, idx.size)] = -0.0
        t = TicketTensor.from_delta(name, storage(base, dtype).reshape(shape), idx, delta, dtype)
        want = bits_of(storage(base, dtype)).copy()
        import make_fixtures  # independent float32 → dtype rounding

        with np.errstate(over="ignore"):
            want[idx] = make_fixtures.round_to(make_fixtures.to_f32(base[idx], dtype) + delta, dtype)
        return t, storage(base, dtype), want
    ft = base.copy()
    ft[idx] = finite_bits(rng, dtype, idx.size, specials)
    t = TicketTensor.from_finetuned(name, storage(base, dtype).reshape(shape), storage(ft, dtype).reshape(shape),
                                    idx, dtype, values=values)
    return t, storage(base, dtype), ft


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True).flatmap(
    lambda ids: st.tuples(*[tensor_cases(f"layer.{i}.weight") for i in ids])),
    chunk=st.sampled_from([8, 16, 24, 64, 200, 1 << 22]))
def test_save_load_decode_is_bit_exact(tmp_path_factory, cases, chunk):
    path = tmp_path_factory.mktemp("rt") / "t.safetensors"
    built = [build(c) for c in cases]
    Ticket([t for t, _, _ in built], base={"repo_id": "x/y", "revision": None}).save(path, chunk_elements=chunk)
    with load_ticket(path) as loaded:
        assert loaded.names == [t.name for t, _, _ in built]
        assert loaded.base["repo_id"] == "x/y"
        for t, base, want in built:
            got = loaded[t.name]
            assert (got.shape, got.dtype, got.values) == (t.shape, t.dtype, t.values)
            assert got.indices.dtype == np.int64 and np.array_equal(got.indices, t.indices)
            assert np.array_equal(bits_of(got.payload), bits_of(t.payload))
            assert np.array_equal(loaded.indices(t.name), t.indices)
            assert (got.base_sample, got.base_digest) == (t.base_sample, t.base_digest)
            flat = base.copy()
            overflow = t.values == "f32delta" and bool(((want & EXP[t.dtype]) == EXP[t.dtype]).any())
            with np.errstate(over="ignore"):
                if overflow:  # spec §6: a non-finite result is refused, and nothing is written
                    with pytest.raises(CorruptTicketError, match="non-finite"):
                        got.apply_to(flat)
                    assert np.array_equal(bits_of(flat), bits_of(base)), t.name
                    continue
                got.apply_to(flat)
            assert np.array_equal(bits_of(flat), want), t.name
        loaded.verify()


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_ulpdiff_reproduces_every_finite_pattern(tmp_path, dtype):
    """Every finite 16-bit pattern (a random 2^17 sample for F32) as base, and as fine-tuned value."""
    rng = np.random.default_rng(7)
    if dtype == "F32":
        base = finite_bits(rng, dtype, 1 << 17, specials=True)
    else:
        allbits = np.arange(1 << 16, dtype=np.uint16)
        base = allbits[(allbits & EXP[dtype]) != EXP[dtype]]
    ft = rng.permutation(base)
    ft[: len(SPECIALS[dtype])] = SPECIALS[dtype]
    base[: len(SPECIALS[dtype])] = SPECIALS[dtype][::-1]  # includes +max → -max and -max → +max
    idx = np.arange(base.size)
    t = TicketTensor.from_finetuned("w", storage(base, dtype), storage(ft, dtype), idx, dtype)
    Ticket([t]).save(tmp_path / "t.safetensors", chunk_elements=1 << 14)
    with load_ticket(tmp_path / "t.safetensors") as loaded:
        flat = storage(base, dtype).copy()
        loaded["w"].apply_to(flat)
    assert np.array_equal(bits_of(flat), ft)
    assert bits_of(flat).dtype == UINT[dtype] and flat.dtype == STORE[dtype]


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
def test_ulpdiff_refuses_non_finite_result(dtype):
    """Spec §6: applying an ulpdiff that lands on Inf/NaN (wrong base) must be rejected."""
    top = SPECIALS[dtype][6]  # largest finite
    t = TicketTensor("w", (2,), dtype, np.array([1]), "ulpdiff", np.array([1], UINT[dtype]))
    flat = storage([0, top], dtype)
    with pytest.raises(CorruptTicketError):
        t.apply_to(flat)
    assert bits_of(flat).tolist() == [0, top]  # untouched
