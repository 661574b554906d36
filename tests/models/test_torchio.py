"""Storage arrays <-> torch tensors, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lotavec.errors import ModelError
from lotavec.format.dtypes import from_float32, storage_dtype
from lotavec.torchio import TORCH_DTYPES, dtype_name, to_storage, to_torch, torch_dtype


@pytest.mark.parametrize("name", ["BF16", "F16", "F32", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3"])
def test_round_trip_is_bit_exact(name):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=4 * 6 * 8, dtype=np.uint8)
    storage = raw.view(storage_dtype(name)).reshape(4, -1) if name != "BOOL" else (raw % 2).astype(bool).reshape(4, -1)
    t = to_torch(storage, name)
    assert t.dtype == TORCH_DTYPES[name] and tuple(t.shape) == storage.shape
    back, back_name = to_storage(t)
    assert back_name == name
    np.testing.assert_array_equal(back.view(np.uint8), storage.view(np.uint8))


def test_bf16_values_and_sharing():
    x = np.array([1.0, -2.5, 3.140625], dtype=np.float32)
    storage = from_float32(x, "BF16")
    t = to_torch(storage, "BF16")
    assert t.dtype == torch.bfloat16
    assert t.float().tolist() == [1.0, -2.5, 3.140625]
    t[0] = 4.0  # zero-copy: the writable storage sees the write
    assert storage[0] == 0x4080
    c = to_torch(storage, "BF16", copy=True)
    c[0] = 1.0
    assert storage[0] == 0x4080


def test_to_storage_is_read_only_view_of_cpu_tensor():
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    arr, name = to_storage(t)
    assert name == "F32" and not arr.flags.writeable
    t[0, 0] = 7
    assert arr[0, 0] == 7
    arr2, _ = to_storage(t.t())  # non-contiguous: copied, C order of the transposed view
    np.testing.assert_array_equal(arr2, t.t().numpy())


def test_names_and_errors():
    assert dtype_name(torch.bfloat16) == "BF16" and torch_dtype("F16") is torch.float16
    with pytest.raises(ModelError, match="complex64"):
        dtype_name(torch.complex64)
    with pytest.raises(ModelError, match="'X9'"):
        torch_dtype("X9")
    with pytest.raises(ModelError, match="stored as uint16"):
        to_torch(np.zeros(3, dtype=np.float32), "BF16")
