"""Atomic writes: a writer that fails leaves neither the target nor any temporary file behind."""

from __future__ import annotations

import numpy as np
import pytest

from lotavec.errors import FormatError, InvalidHeaderError
from lotavec.format import TicketFile, TicketFileWriter
from lotavec.ticket import Ticket, TicketTensor, TicketWriter, load_ticket


def _tensor(name: str = "w", n: int = 100) -> TicketTensor:
    base = np.arange(n, dtype=np.float32)
    ft = base.copy()
    ft[::7] += 1
    return TicketTensor.from_finetuned(name, base, ft, np.arange(0, n, 7), "F32")


def _listing(d) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_success_leaves_only_the_target(tmp_path):
    p = tmp_path / "t.safetensors"
    with TicketWriter(p) as w:
        w.add(_tensor())
    assert _listing(tmp_path) == ["t.safetensors"]
    with load_ticket(p) as t:
        assert t["w"].nnz == 15


def test_bad_tensor_inside_with_leaves_nothing(tmp_path):
    p = tmp_path / "t.safetensors"
    with pytest.raises(FormatError):
        with TicketFileWriter(p, chunk_elements=64) as w:
            w.add("a", (10,), "F32", np.array([1, 2]), "raw", np.zeros(2, "<u4"))
            w.add("b", (10,), "F32", np.array([3, 10]), "raw", np.zeros(2, "<u4"))  # 10 is out of range
    assert _listing(tmp_path) == []


def test_user_exception_inside_with_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with TicketWriter(tmp_path / "t.safetensors") as w:
            w.add(_tensor())
            raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_unserializable_provenance_fails_at_close_and_leaves_nothing(tmp_path):
    w = TicketWriter(tmp_path / "t.safetensors", provenance={"when": object()})
    w.add(_tensor())
    with pytest.raises(InvalidHeaderError):
        w.close()
    assert _listing(tmp_path) == []


def test_failed_save_keeps_the_previous_file_intact(tmp_path):
    p = tmp_path / "t.safetensors"
    Ticket([_tensor()]).save(p)
    before = p.read_bytes()
    bad = TicketTensor("bad", (4,), "F32", np.array([2, 1]), "raw", np.zeros(2, "<u4"))  # not increasing
    with pytest.raises(FormatError):
        Ticket([_tensor("ok"), bad]).save(p)
    assert p.read_bytes() == before
    assert _listing(tmp_path) == ["t.safetensors"]
    with TicketFile(p) as tf:
        tf.verify()


def test_rename_failure_removes_the_temporary_file(tmp_path):
    target = tmp_path / "t.safetensors"
    target.mkdir()  # os.replace(file, directory) fails
    w = TicketWriter(target)
    w.add(_tensor())
    with pytest.raises(OSError):
        w.close()
    assert _listing(tmp_path) == ["t.safetensors"] and target.is_dir() and not any(target.iterdir())


def test_abort_removes_the_spool(tmp_path):
    w = TicketWriter(tmp_path / "t.safetensors")
    w.add(_tensor())
    w.abort()
    assert _listing(tmp_path) == []
