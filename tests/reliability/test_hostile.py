"""Hostile tickets (``campaign/hostile.py``): each fails with its named error, fast, in bounded memory.

Also the regressions the campaign found: non-finite results written by merge and by applying
with a weight (spec §6: applying code MUST reject a non-finite result), and whole-tensor decodes
allocating above ``max_tensor_bytes``.
"""

from __future__ import annotations

import numpy as np
import pytest
import ticketbytes as tb
from hostile import CASES, MiB, measure, read_all, run_case, ticket, zero_frame

import lotavec
from lotavec.errors import FingerprintMismatchError, FormatError, LotavecError
from lotavec.format import TicketFile
from lotavec.format.safetensors_io import write_safetensors
from lotavec.format.writer import TicketFileWriter
from lotavec.models import open_model
from lotavec.ticket import Ticket, TicketTensor, load_ticket

READ_CASES = [c for c in CASES if c.ci and c.run == "read"]


@pytest.mark.parametrize("case", READ_CASES, ids=[c.name for c in READ_CASES])
def test_hostile_file_raises_its_named_error(case, tmp_path):
    row = run_case(case, tmp_path)
    assert row.ok, row.result


def test_spec_ceiling_bomb_streams_within_one_chunk(tmp_path):
    # 2^25 zero F32 values in a ~5 KB file: verify decodes chunk by chunk.
    path = next(c for c in CASES if c.name.startswith("bomb at the spec ceiling: 2")).build(tmp_path)
    assert path.stat().st_size < 8192
    err, _, peak, _ = measure(lambda: TicketFile(path).verify())
    assert err == "none"
    assert peak < 448 * MiB, f"streaming verify peaked at {peak / MiB:.0f} MiB"
    err, _, peak, _ = measure(lambda: read_all(path, max_tensor_bytes=64 * MiB))
    assert err == "LimitExceededError" and peak < 448 * MiB


def test_whole_tensor_decode_never_allocates_above_max_tensor_bytes(tmp_path):
    ce = 1 << 20
    path = tmp_path / "all.safetensors"
    path.write_bytes(ticket([{"name": "w", "shape": [4 * ce], "dtype": "F32", "values": "raw",
                              "chunks": [(ce, "all", b"", zero_frame(4 * ce))] * 4}], ce=ce))
    cap = 4 * ce * 12  # exactly indices + payload
    with load_ticket(path, max_tensor_bytes=cap) as t:
        err, _, peak, _ = measure(lambda: t["w"])
    assert err == "LimitExceededError" or peak <= cap, f"decode allowed under a {cap / MiB:.0f} MiB cap peaked at {peak / MiB:.0f} MiB"


# --- NaN / Inf ----------------------------------------------------------------------------------


def test_writer_refuses_non_finite_values(tmp_path):
    w = TicketFileWriter(tmp_path / "t.safetensors")
    with pytest.raises(FormatError):
        w.add("w", (4,), "BF16", np.array([0]), "raw", np.array([0x7FC0], "<u2"))
    with pytest.raises(FormatError):
        w.add("v", (4,), "F32", np.array([1]), "f32delta", np.array([np.inf], "<f4"))
    w.abort()
    assert not list(tmp_path.iterdir())


def _overflow_ticket():
    base = np.full((4, 4), 3e38, np.float32)
    ulp = TicketTensor.from_finetuned("w", base, np.full((4, 4), 3.3e38, np.float32), np.array([0]), "F32")
    delta = TicketTensor.from_delta("w", base, np.array([0, 5]), np.array([3e38, 1.0], np.float32), "F32")
    return base, ulp, delta


def test_apply_to_refuses_overflow_at_weight_one():
    base, _, delta = _overflow_ticket()
    flat = base.reshape(-1).copy()
    with np.errstate(all="ignore"), pytest.raises(LotavecError):
        delta.apply_to(flat)


def test_apply_to_refuses_overflow_with_a_weight():
    base, ulp, _ = _overflow_ticket()
    flat = base.reshape(-1).copy()
    with np.errstate(all="ignore"):
        try:
            ulp.apply_to(flat, weight=10.0)
        except LotavecError:
            return
    assert np.isfinite(flat).all(), "apply_to wrote Inf"


def test_lotavec_apply_refuses_overflow_with_a_weight():
    import torch

    base, ulp, _ = _overflow_ticket()
    sd = {"w": torch.from_numpy(base.copy())}
    with np.errstate(all="ignore"):
        try:
            lotavec.apply(sd, Ticket([ulp]), weight=10.0)
        except LotavecError:
            assert torch.equal(sd["w"], torch.from_numpy(base)), "refused, but the model was modified"
            return
    assert torch.isfinite(sd["w"]).all(), "lotavec.apply wrote Inf"


def test_merge_and_apply_to_refuse_a_nan_result_of_a_valid_ticket(tmp_path):
    from hostile import nan_ulpdiff_ticket

    path, model, base = nan_ulpdiff_ticket(tmp_path)
    TicketFile(path).verify()  # well-formed: the NaN only appears on application
    with pytest.raises(LotavecError):
        lotavec.merge(model, [path], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with load_ticket(path) as t, pytest.raises(LotavecError):
        t["w"].apply_to(base.copy())


def test_lotavec_apply_refuses_a_nan_result_of_a_valid_ticket(tmp_path):
    import torch
    from hostile import nan_ulpdiff_ticket

    path, _, base = nan_ulpdiff_ticket(tmp_path)
    sd = {"w": torch.from_numpy(base.copy())}
    try:
        lotavec.apply(sd, str(path))
    except LotavecError:
        pass
    assert not torch.isnan(sd["w"]).any(), "lotavec.apply wrote NaN into the model"


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the overflow happens in a merge worker thread
def test_merge_refuses_a_non_finite_result(tmp_path):
    base, _, delta = _overflow_ticket()
    folder = tmp_path / "base"
    folder.mkdir()
    with open(folder / "model.safetensors", "wb") as f:
        write_safetensors(f, [("w", "F32", (4, 4), base)], {"format": "pt"})
    Ticket([delta]).save(tmp_path / "t.safetensors")
    out = tmp_path / "merged"
    with np.errstate(all="ignore"):
        try:
            lotavec.merge(folder, [tmp_path / "t.safetensors"], out)
        except LotavecError:
            assert not out.exists()
            return
    with open_model(out) as s:
        assert np.isfinite(s.array("w")).all(), "merged model holds Inf"


# --- a ticket whose manifest lies about its base -------------------------------------------------


def test_ticket_lying_about_its_base_is_refused_by_fingerprints(tmp_path, tiny_pair, tiny_model_dirs):
    import torch

    from lotavec.extraction import extract
    from lotavec.testing import make_tiny_model
    from lotavec.verify import verify_against_base

    src = tmp_path / "t.safetensors"
    extract(tiny_pair[0], tiny_pair[1], src, density=0.1)
    lie = tmp_path / "lie.safetensors"
    lie.write_bytes(tb.edit_header(src.read_bytes(), lambda h, m: m.update(base={"repo_id": "org/b", "revision": "b" * 40})))
    other = tmp_path / "b"
    model = make_tiny_model("llama", other, seed=1)
    with pytest.raises(FingerprintMismatchError):
        lotavec.merge(other, [lie], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FingerprintMismatchError):
        lotavec.apply(model, str(lie))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with load_ticket(lie) as t, pytest.raises(FingerprintMismatchError):
        verify_against_base(t, other)
