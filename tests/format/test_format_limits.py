"""Reader limits (spec §9) that need files too large or options too specific for fixtures/."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import ticketbytes as tb
from format_helpers import VALID, expected

from lotavec.errors import InvalidHeaderError, LimitExceededError
from lotavec.format import TicketFile
from lotavec.ticket import load_ticket


def _manifest(**kw) -> dict:
    doc = {"format_version": 1, "format_minor": 0, "must_understand": [], "chunk_elements": 64,
           "base": {"repo_id": None, "revision": None}, "provenance": {}, "tensors": []}
    doc.update(kw)
    return doc


def test_more_than_2_20_tensors_is_refused_before_parsing_them(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(tb.pack(_manifest(tensors=[0] * ((1 << 20) + 1)), []))
    with pytest.raises(LimitExceededError):
        TicketFile(p)


@pytest.mark.parametrize("ce, ok", [(8, True), (1 << 24, True), (0, False), (4, False), (12, False), ((1 << 24) + 8, False)])
def test_chunk_elements_bounds(tmp_path, ce, ok):
    p = tmp_path / "t.safetensors"
    p.write_bytes(tb.pack(_manifest(chunk_elements=ce), []))
    if ok:
        with TicketFile(p) as tf:
            assert tf.manifest.chunk_elements == ce
    else:
        with pytest.raises(InvalidHeaderError):
            TicketFile(p)


def test_whole_tensor_decode_above_the_cap_is_refused_but_streaming_works():
    path = VALID / "mask_codecs.safetensors"
    t = next(t for t in expected("mask_codecs")["tensors"] if t["name"] == "codecs")
    need = t["nnz"] * (8 + 2)  # int64 index + uint16 payload
    with load_ticket(path, max_tensor_bytes=need - 1) as ticket:
        with pytest.raises(LimitExceededError, match="max_tensor_bytes"):
            ticket["codecs"]
        assert ticket.indices("codecs").tolist() == t["indices"]  # chunk by chunk, under the cap
    with load_ticket(path) as ticket:  # the cap also covers each decode thread's chunk buffers
        e = ticket._file.entry("codecs")
        cap = need + (os.cpu_count() or 1) * max(c.length for c in e.chunks) * (8 + 2 * 2)
    with load_ticket(path, max_tensor_bytes=cap) as ticket:
        assert ticket["codecs"].indices.tolist() == t["indices"]


def test_a_many_chunk_tensor_with_all_chunks_empty_costs_no_data(tmp_path):
    """numel ≫ file size is fine when declared consistently: nothing is allocated per element."""
    numel = 1 << 30
    ce = 1 << 24
    chunks = [[0, "none", 0, 0, 0] for _ in range(numel // ce)]
    tensor = {"name": "w", "shape": [1 << 15, 1 << 15], "dtype": "BF16", "nnz": 0, "values": "ulpdiff",
              "data": "w.ticket", "base_sample": None, "base_digest": None, "chunks": chunks}
    p = tmp_path / "t.safetensors"
    p.write_bytes(tb.pack(_manifest(chunk_elements=ce, tensors=[tensor]), [[(b"", b"")] * len(chunks)]))
    with load_ticket(p) as ticket:
        assert ticket.info("w")["numel"] == numel and ticket["w"].nnz == 0
        assert ticket["w"].indices.dtype == np.int64
        ticket.verify()
    assert json.loads(tb.split_file(p.read_bytes())[0]["__metadata__"]["lotavec.ticket"])["tensors"][0]["nnz"] == 0
