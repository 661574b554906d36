"""Helpers for the extraction tests (fixtures are in conftest.py).

* :func:`distinct_pair` — an fp32 tiny llama (``nn.Module``) and a copy whose candidate matrices
  carry deltas of pairwise distinct magnitudes (so a brute-force ``torch.topk`` is unambiguous).
* :func:`bits` / :func:`folder_tensors` — bit patterns of tensors and the tensors of a folder.
"""

from __future__ import annotations

import copy
from fractions import Fraction

import numpy as np
import torch

from lotavec.models import select_candidates
from lotavec.testing import make_tiny_model

#: The candidate matrices each tiny architecture must yield by default (attention + MLP).
EXPECTED_LINEAR = {
    "llama": [f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")],
    "qwen2": [f"model.layers.{i}.{m}.weight" for i in range(2) for m in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")],
    "gpt2": [f"transformer.h.{i}.{m}.weight" for i in range(2) for m in (
        "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")],
    "gpt_neox": [f"gpt_neox.layers.{i}.{m}.weight" for i in range(2) for m in (
        "attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")],
}


def half_up_k(density: float, total: int) -> int:
    """k = floor(density × total + 1/2) on the decimal value of ``density`` (the documented rule)."""
    return int((Fraction(repr(float(density))) * total + Fraction(1, 2)).__floor__())


def bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of a tensor, flat (so -0.0 != 0.0)."""
    view = {2: torch.int16, 4: torch.int32}[t.element_size()]
    return t.detach().contiguous().reshape(-1).view(view)


def folder_tensors(folder) -> dict[str, torch.Tensor]:
    """Every tensor stored in an HF folder (single or sharded), read with safetensors itself."""
    from pathlib import Path

    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out


def distinct_pair(*, layer_scale: bool = False, seed: int = 0):
    """``(base, finetuned, names)``: fp32 tiny llama modules; candidate deltas with distinct |values|.

    Delta magnitudes are odd multiples of 2^-22 (a random permutation), so all differ by far more
    than the rounding of ``base + delta``. With ``layer_scale``, layer-1 deltas are doubled (even
    multiples, still distinct from layer 0's odd ones), so a global threshold picks more entries
    in layer 1 than in layer 0.
    """
    base = make_tiny_model("llama", dtype="float32", seed=seed)
    ft = copy.deepcopy(base)
    names = select_candidates(base)
    params = dict(ft.named_parameters())
    total = sum(params[n].numel() for n in names)
    rng = np.random.default_rng(seed + 100)
    mags = (2 * rng.permutation(total) + 1).astype(np.float64) * 2.0**-22
    signs = rng.choice([-1.0, 1.0], total)
    off = 0
    with torch.no_grad():
        for n in names:
            p = params[n]
            d = mags[off:off + p.numel()] * signs[off:off + p.numel()]
            if layer_scale and ".layers.1." in n:
                d = d * 2
            p.add_(torch.from_numpy(d.astype(np.float32)).reshape(p.shape))
            off += p.numel()
    return base, ft, names


def scores_of(base, ft, names) -> list[torch.Tensor]:
    """|ft − base| per candidate, flat, float32 — computed as the library does."""
    b, f = dict(base.named_parameters()), dict(ft.named_parameters())
    return [(f[n].detach().reshape(-1) - b[n].detach().reshape(-1)).abs() for n in names]
