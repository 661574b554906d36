"""Helpers for the trainer tests: tiny models, random masks, bit-exact comparisons."""

from __future__ import annotations

import pytest
import torch

from lotavec.testing import make_tiny_model, make_tiny_tokenizer


def random_masks(model, density: float, seed: int = 0, names=None) -> dict[str, torch.Tensor]:
    """``{name: sorted random flat indices}`` covering ``density`` of each chosen parameter."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        if names is not None and name not in names:
            continue
        k = max(1, int(round(density * p.numel())))
        out[name] = torch.randperm(p.numel(), generator=g)[:k].sort().values
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's bit patterns (so -0.0 != 0.0 and NaNs compare by payload)."""
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().reshape(-1).view(view)


def token_batches(n: int, batch: int = 4, seq: int = 16, vocab: int = 260, seed: int = 0):
    """``n`` batches of random tokens; the first quarter of each row does not count in the loss."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(4, vocab, (batch, seq), generator=g)
        labels = ids.clone()
        labels[:, : seq // 4] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


@pytest.fixture
def tiny_llama():
    """A fresh tiny fp32 llama (tied embeddings)."""
    return make_tiny_model("llama", dtype="float32", seed=0)


@pytest.fixture(scope="session")
def tok():
    """The tiny byte-level ChatML tokenizer."""
    return make_tiny_tokenizer()
