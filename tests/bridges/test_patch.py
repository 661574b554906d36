"""Sparse weight patch export: plain-torch application reproduces base + ticket bit-exactly; the
file's layout and metadata; raw tickets need no base; wrong bases and existing outputs refused."""

from __future__ import annotations

import json

import pytest
import torch
from bridges_helpers import differing_bits
from safetensors import safe_open
from safetensors.torch import load_file

from lotavec.bridges.patch import PATCH_VERSION, apply_patch, export_patch, index_dtype, read_patch
from lotavec.errors import (
    FingerprintMismatchError,
    FormatError,
    ModelError,
    NotFoundError,
    OutputExistsError,
)
from lotavec.extraction import extract
from lotavec.merge.apply import apply
from lotavec.ticket import Ticket


def plain_torch_apply(state: dict, path) -> int:
    """The convention, with nothing but torch + safetensors: W.view(-1)[indices] = values."""
    with safe_open(str(path), "pt") as f:
        names = json.loads(f.metadata()["sparse_patch.tensors"])
        for name in names:
            idx, vals = f.get_tensor(f"{name}.indices"), f.get_tensor(f"{name}.values")
            state[name].view(-1)[idx] = vals
    return len(names)


def test_patch_reproduces_ticket_bit_exactly(llama_ticket, tmp_path):
    base, tk = llama_ticket
    out = tmp_path / "p.safetensors"
    r = export_patch(tk, out, base=base)
    assert (r.tensors, r.nnz) == (len(tk), tk.nnz) and r.bytes == out.stat().st_size
    # BF16 ticket: 4 bytes of index + 2 of value per entry, plus the header
    assert r.nnz * 6 < r.bytes < r.nnz * 6 + 8192
    expected = load_file(base / "model.safetensors")
    apply(expected, tk)
    got = load_file(base / "model.safetensors")
    assert plain_torch_apply(got, out) == len(tk)
    assert differing_bits(expected, got) == 0
    untouched = load_file(base / "model.safetensors")
    assert differing_bits(untouched, got) > 0.9 * tk.nnz  # the patch did change the weights


def test_patch_layout_and_metadata(llama_ticket, tmp_path):
    base, tk = llama_ticket
    out = tmp_path / "p.safetensors"
    export_patch(tk, out, base=base)
    name = tk.names[0]
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
        idx, vals = f.get_tensor(f"{name}.indices"), f.get_tensor(f"{name}.values")
        assert set(f.keys()) == {f"{n}.{s}" for n in tk.names for s in ("indices", "values")}
    assert meta["sparse_patch.version"] == PATCH_VERSION and meta["format"] == "pt"
    assert "W.view(-1)" in meta["sparse_patch.convention"]
    info = json.loads(meta["sparse_patch.tensors"])[name]
    assert info == {"shape": list(tk[name].shape), "dtype": "BF16", "nnz": tk[name].nnz}
    assert idx.dtype == torch.int32 and vals.dtype == torch.bfloat16
    assert torch.equal(idx.long(), torch.from_numpy(tk[name].indices))
    assert bool((idx[1:] > idx[:-1]).all())
    assert json.loads(meta["lotavec.base"]) == tk.base
    # read_patch / apply_patch agree with the plain-torch reading
    rows = {n: (i, v, d, s) for n, i, v, d, s in read_patch(out)}
    assert set(rows) == set(tk.names) and rows[name][2] == "BF16" and rows[name][3] == tk[name].shape
    state = load_file(base / "model.safetensors")
    assert apply_patch(state, out) == tk.nnz
    ref = load_file(base / "model.safetensors")
    plain_torch_apply(ref, out)
    assert differing_bits(ref, state) == 0


def test_index_dtype_threshold():
    assert index_dtype(2**31 - 1) == "I32"
    assert index_dtype(2**31) == "I64"


def test_raw_ticket_needs_no_base(tiny_pair, tmp_path):
    base, ft = tiny_pair
    raw = extract(base, ft, tmp_path / "raw.lotavec.safetensors", density=0.02, values="raw").ticket
    assert not raw.base.get("repo_id")
    r = export_patch(raw, tmp_path / "raw.patch.safetensors")  # no base given, none recorded: fine
    state = load_file(base / "model.safetensors")
    plain_torch_apply(state, r.path)
    ref = load_file(base / "model.safetensors")
    apply(ref, raw)
    assert differing_bits(ref, state) == 0


def test_refusals(llama_ticket, tmp_path, tiny_model_dirs):
    base, tk = llama_ticket
    with pytest.raises(ModelError, match="--base"):
        export_patch(tk, tmp_path / "nobase.safetensors")  # ulpdiff ticket, no base recorded
    # A recorded base is looked up on the Hub (offline in the tests: a clear miss, no download).
    recorded = Ticket(list(tk), base={"repo_id": "lotavec-test/not-cached", "revision": "0" * 40})
    with pytest.raises(NotFoundError, match="lotavec-test/not-cached"):
        export_patch(recorded, tmp_path / "hub.safetensors")
    from lotavec.testing import make_tiny_model

    other = tmp_path / "other_llama"
    make_tiny_model("llama", other, seed=5)
    with pytest.raises(FingerprintMismatchError, match="differs from the base"):
        export_patch(tk, tmp_path / "wrong.safetensors", base=other)
    assert not (tmp_path / "wrong.safetensors").exists() and not list(tmp_path.glob(".lotavec-patch-*"))
    out = tmp_path / "p.safetensors"
    export_patch(tk, out, base=base)
    with pytest.raises(OutputExistsError):
        export_patch(tk, out, base=base)
    export_patch(tk, out, base=base, overwrite=True)
    with pytest.raises(FormatError, match="not a sparse weight patch"):
        list(read_patch(tiny_model_dirs["llama"] / "model.safetensors"))
