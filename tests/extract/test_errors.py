"""Mismatched base / fine-tune pairs are refused with errors naming the tensor; bad requests are
refused with errors naming the flag. Nothing is written when extraction fails."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import lotavec
from lotavec.errors import NotFoundError, SelectionError, TensorMismatchError

Q = "model.layers.0.self_attn.q_proj.weight"


def variant(src, dst, edit):
    """Copy the folder ``src`` to ``dst`` with its tensors changed by ``edit(dict)``."""
    shutil.copytree(src, dst)
    sd = load_file(src / "model.safetensors")
    edit(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def refused(base, ft, tmp_path, *patterns):
    out = tmp_path / "never.lota"
    with pytest.raises(TensorMismatchError) as e:
        lotavec.extract(base, ft, out, density=0.1)
    for p in patterns:
        assert re.search(p, str(e.value)), (p, str(e.value))
    assert not out.exists()
    return str(e.value)


def test_missing_tensor(tiny_pair, tmp_path):
    base, ft = tiny_pair
    bad = variant(ft, tmp_path / "ft", lambda sd: sd.pop(Q))
    refused(base, bad, tmp_path, re.escape(Q), "missing")


def test_extra_tensor(tiny_pair, tmp_path):
    base, ft = tiny_pair
    bad = variant(ft, tmp_path / "ft", lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(3, 3, dtype=torch.bfloat16)))
    refused(base, bad, tmp_path, re.escape("model.extra.weight"), "not the base")


def test_shape_differs(tiny_pair, tmp_path):
    base, ft = tiny_pair
    bad = variant(ft, tmp_path / "ft", lambda sd: sd.__setitem__(Q, sd[Q][:32].clone()))
    refused(base, bad, tmp_path, re.escape(Q), r"\[64, 64\]", r"\[32, 64\]")


def test_dtype_differs(tiny_pair, tmp_path):
    base, ft = tiny_pair
    bad = variant(ft, tmp_path / "ft", lambda sd: sd.__setitem__(Q, sd[Q].float()))
    refused(base, bad, tmp_path, re.escape(Q), "BF16", "F32")


def test_resized_vocabulary(tiny_pair, tmp_path):
    base, ft = tiny_pair
    emb = "model.embed_tokens.weight"

    def grow(sd):
        sd[emb] = torch.cat([sd[emb], torch.zeros(8, sd[emb].shape[1], dtype=sd[emb].dtype)])

    bad = variant(ft, tmp_path / "ft", grow)
    msg = refused(base, bad, tmp_path, re.escape(emb), "vocabulary", "260", "268")
    assert "resize_token_embeddings" in msg  # says what to do


def test_bad_requests(tiny_pair, tmp_path):
    base, ft = tiny_pair
    out = tmp_path / "t.lota"
    with pytest.raises(SelectionError, match="--density"):
        lotavec.extract(base, ft, out)
    with pytest.raises(SelectionError, match="all-changed"):
        lotavec.extract(base, ft, out, density=0.1, all_changed=True)
    with pytest.raises(SelectionError, match="density"):
        lotavec.extract(base, ft, out, density=1.5)
    with pytest.raises(SelectionError):
        lotavec.extract(base, ft, out, density=0.1, sparsity=0.9)
    with pytest.raises(SelectionError, match="scope"):
        lotavec.extract(base, ft, out, density=0.1, scope="layer")
    with pytest.raises(NotFoundError):
        lotavec.extract(tmp_path / "nope", ft, out, density=0.1)
    assert not out.exists()
