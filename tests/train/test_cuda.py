"""CUDA: off-mask bit-identity with bf16 weights and bf16 autocast on the GPU (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from conftest import bits, random_masks, token_batches

from lotavec.testing import make_tiny_model
from lotavec.train.loop import sparse_train


@pytest.mark.cuda
@pytest.mark.parametrize("dtype, optimizer", [("bfloat16", "adamw"), ("float32", "adamw"), ("bfloat16", "sgd")])
def test_cuda_bf16_exactness(dtype, optimizer):
    model = make_tiny_model("llama", dtype=dtype, seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_masks(model, 0.1)
    res = sparse_train(model, masks, token_batches(2), steps=4, lr=3.0 if optimizer == "sgd" else 1e-2,
                       optimizer=optimizer, weight_decay=0.1, bf16=True, device="cuda")
    assert res.memory_kind == "cuda_max_allocated" and res.peak_memory_bytes > 0
    changed = 0
    for name, p in model.named_parameters():
        assert p.device.type == "cuda"
        on = torch.zeros(p.numel(), dtype=torch.bool)
        on[masks[name]] = True
        after = bits(p.cpu())
        assert torch.equal(after[~on], bits(base[name])[~on]), name
        changed += int((after[on] != bits(base[name])[on]).sum())
    assert changed > 0.5 * res.trainable
