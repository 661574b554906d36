"""Helpers for the bridges tests: load tiny models, logits of a fixed batch, bitwise comparison."""

from __future__ import annotations

import torch


def load_model(folder):
    """The tiny model in ``folder`` (bf16, eval mode, CPU)."""
    from transformers import AutoModelForCausalLM

    from lotavec.testing import _quiet_transformers

    with _quiet_transformers():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()


def logits(model, seed: int = 0) -> torch.Tensor:
    """Logits of a fixed random batch (2 × 24 tokens)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, 250, (2, 24), generator=g)
    with torch.no_grad():
        return model(input_ids=x).logits


def differing_bits(a: dict, b: dict) -> int:
    """Entries whose bit patterns differ, over the tensors both state dicts hold."""
    n = 0
    for k in a:
        x, y = a[k], b[k]
        assert x.shape == y.shape and x.dtype == y.dtype, k
        bits = {2: torch.int16, 4: torch.int32}[x.element_size()]
        n += int((x.contiguous().view(bits) != y.contiguous().view(bits)).sum())
    return n
