"""Tickets are plain safetensors files: the reference implementation opens them (and rejects
the container-level defects our own parser rejects)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from format_helpers import INVALID, VALID, expected, valid_names
from safetensors import SafetensorError, safe_open

from lotavec.format import TicketFile


@pytest.mark.parametrize("name", [n for n in valid_names() if expected(n)["tensors"]])
def test_safetensors_opens_ticket_and_lists_u8_streams(name):
    path = VALID / f"{name}.safetensors"
    exp = expected(name)
    with TicketFile(path) as tf:
        sizes = {e.data: e.stored_bytes for e in tf.manifest.tensors}
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
        assert meta["format"] == "lotavec.ticket"
        assert json.loads(meta["lotavec.ticket"])["format_version"] == 1
        assert sorted(f.keys()) == sorted(sizes)
        for key in f.keys():
            arr = f.get_tensor(key)
            assert arr.dtype == np.uint8 and arr.shape == (sizes[key],)
    if exp["writer"] == "library":
        assert sorted(sizes) == sorted(t["name"] + ".ticket" for t in exp["tensors"])


def test_ticket_written_by_lotavec_loads_with_safetensors_numpy(tmp_path):
    from safetensors.numpy import load_file

    from lotavec.format import TicketFileWriter

    p = tmp_path / "t.safetensors"
    with TicketFileWriter(p, chunk_elements=64, threads=1) as w:
        w.add("model.layers.0.mlp.up_proj.weight", (8, 9), "F16", np.arange(0, 72, 5), "raw",
              np.arange(15, dtype=np.float16).view("<u2"))
    tensors = load_file(p)
    assert list(tensors) == ["model.layers.0.mlp.up_proj.weight.ticket"]
    assert tensors["model.layers.0.mlp.up_proj.weight.ticket"].dtype == np.uint8


# Not InvalidHeaderError__duplicate_tensor_key: safetensors 0.8 keeps the last of two identical
# entries; spec §3 is stricter (duplicate JSON keys are invalid).
CONTAINER_DEFECTS = [
    "TruncatedFileError__data_cut", "TruncatedFileError__header_cut", "TruncatedFileError__five_bytes",
    "InvalidHeaderError__offsets_hole", "InvalidHeaderError__offsets_overlap", "InvalidHeaderError__trailing_bytes",
    "InvalidHeaderError__header_not_json",
    "LimitExceededError__header_length_over_100MiB",
]


@pytest.mark.parametrize("name", CONTAINER_DEFECTS)
def test_reference_safetensors_rejects_container_defects(name):
    """Cross-check of the vectors: the reference parser also refuses each container defect."""
    with pytest.raises(SafetensorError):
        with safe_open(INVALID / f"{name}.safetensors", framework="numpy") as f:
            list(f.keys())
