"""A merge on C threads (``lv_run_jobs`` over the job table of ``engine._MergeJobs``: the exact
``sum``, and TIES of two tickets): the same bytes, errors and warnings as the Python thread pool,
in the same (file) order.

Each test runs a merge both ways: as planned (the C threads), and with the job table turned off
(``_MergeJobs.plan`` returning ``None``: the thread pool of ``engine._stream``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import lotavec
import lotavec.merge.engine as eng
from lotavec import native
from lotavec.errors import CorruptTicketError, FingerprintMismatchError, LotavecError
from lotavec.format.fingerprint import sample_positions
from lotavec.merge import MergeParams, merge

pytestmark = pytest.mark.skipif(not native.zstd_in_c(), reason="needs the compiled kernels and libzstd.so.1 (no job table)")


def _states(jobs):
    """A recorded job table's final states (``merge_jobs``), or ``None`` for a merge without one."""
    return None if jobs is None else jobs.table[:, jobs.STATE]


def _both(monkeypatch, fn):
    """``fn(label)`` on the C threads, then on the thread pool; the two outcomes."""
    out = [_outcome(fn, "c")]
    with monkeypatch.context() as m:
        m.setattr(eng._MergeJobs, "plan", classmethod(lambda cls, *a, **k: None))
        out.append(_outcome(fn, "py"))
    return out


def _outcome(fn, label):
    try:
        return "ok", fn(label)
    except LotavecError as e:
        return type(e), str(e)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.safetensors"))}


def test_sum_runs_whole_on_c_threads_with_the_thread_pools_bytes(merge_kit, tmp_path, monkeypatch, merge_jobs):
    def go(label):
        r = merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / label, fsync=False)
        return r.changed_entries, _bytes(tmp_path / label)

    c, py = _both(monkeypatch, go)
    assert c == py and c[0] == "ok" and c[1][0] > 0
    assert len(merge_jobs) == 1 and (_states(merge_jobs[0]) == 1).all()  # every tensor done on the C threads
    with monkeypatch.context() as m:  # and the numpy merge
        m.setenv(native.ENV, "0")
        r = merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / "np", fsync=False)
    assert (r.changed_entries, _bytes(tmp_path / "np")) == c[1]


def test_progress_and_write_back_follow_the_c_threads(merge_kit, tmp_path, monkeypatch, merge_jobs):
    """Progress is reported while the C threads work (and the writer starts write-back, with
    fsync), ending at every tensor; the output is the thread pool's."""
    seen = []

    def go(label):
        seen.clear()
        merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / label, progress=lambda *a: seen.append(a))
        steps = [(d, t) for s, d, t in seen if s == "merge"]
        assert steps and steps[-1][0] == steps[-1][1] and [d for d, _ in steps] == sorted(d for d, _ in steps)
        return _bytes(tmp_path / label)

    c, py = _both(monkeypatch, go)
    assert c == py and c[0] == "ok"
    assert _states(merge_jobs[0]) is not None and (_states(merge_jobs[0]) == 1).all()


def _edited_base(merge_kit, root: Path, name: str, positions: np.ndarray, step: int) -> Path:
    """A copy of the base with tensor ``name``'s entries at ``positions`` moved by ``step`` in
    their bit patterns."""
    import torch
    from safetensors.torch import load_file, save_file

    out = root / "edited"
    shutil.copytree(merge_kit["base"], out)
    st = out / "model.safetensors"
    t = load_file(st)
    bits = t[name].reshape(-1).view(torch.int16).numpy().copy()
    bits[positions] = (bits[positions].view(np.uint16) + step).view(np.int16)
    t[name] = torch.from_numpy(bits).view(torch.bfloat16).reshape(t[name].shape)
    save_file(t, st, metadata={"format": "pt"})
    return out


def _inf_ticket(merge_kit, root: Path) -> tuple[str, int, Path]:
    """A one-tensor ticket whose fine-tuned value at one entry is the largest finite BF16; on a
    base whose entry there is one bit pattern higher, applying it gives +Inf."""
    from lotavec.models import open_model
    from lotavec.ticket import Ticket, TicketTensor

    with open_model(merge_kit["base"]) as src:
        name = next(n for n in src.names() if n.endswith("mlp.up_proj.weight"))
        base = np.array(src.array(name))
    flat = base.reshape(-1)
    # an entry off the fingerprint's sample positions (every other one here) holding a positive
    # value, so that one pattern up is still finite in the edited base
    idx = np.array([int(np.flatnonzero(flat[1::2] < 0x7F00)[7]) * 2 + 1], np.int64)
    ft = flat.copy()
    ft[idx] = 0x7F7F
    tt = TicketTensor.from_finetuned(name, base, ft[idx], idx, "BF16", values="ulpdiff")
    p = root / "inf.lota"
    Ticket([tt]).save(p)
    return name, int(idx[0]), p


def test_a_non_finite_result_is_reported_like_the_thread_pool(merge_kit, tmp_path, monkeypatch, merge_jobs):
    name, i, ticket = _inf_ticket(merge_kit, tmp_path)
    positions = sample_positions(int(np.prod(lotavec.load_ticket(ticket).info(name)["shape"])))
    assert i not in positions  # the fingerprint still matches: the kernel reports the Inf
    base = _edited_base(merge_kit, tmp_path, name, np.array([i]), 1)
    c, py = _both(monkeypatch, lambda label: merge(base, [ticket], tmp_path / label, fsync=False))
    assert c == py and c[0] is CorruptTicketError and f"non-finite value at flat index {i}" in c[1]
    assert _states(merge_jobs[0]) is not None and 3 in _states(merge_jobs[0])  # failed on the C threads
    assert not (tmp_path / "c").exists() and not (tmp_path / "py").exists()


def test_a_wrong_base_is_reported_before_the_kernels_error_of_the_same_tensor(merge_kit, tmp_path, monkeypatch, merge_jobs):
    """The base's entry at a fingerprint sample position differs, and applying the ticket there
    gives +Inf: the fingerprint mismatch is reported (or, with ``force``, kept as a warning and
    the Inf reported), as the thread pool does, which checks each tensor before merging it."""
    name, i, ticket = _inf_ticket(merge_kit, tmp_path)
    positions = sample_positions(int(np.prod(lotavec.load_ticket(ticket).info(name)["shape"])))
    base = _edited_base(merge_kit, tmp_path, name, np.array([i, int(positions[3])]), 1)
    c, py = _both(monkeypatch, lambda label: merge(base, [ticket], tmp_path / label, fsync=False))
    assert c == py and c[0] is FingerprintMismatchError and name in c[1]

    warned = []

    def forced(label):
        try:
            merge(base, [ticket], tmp_path / f"f{label}", fsync=False, force=True)
        except CorruptTicketError:
            warned.append(label)
            raise

    c, py = _both(monkeypatch, forced)
    assert c == py and c[0] is CorruptTicketError and warned == ["c", "py"]


def test_force_on_the_c_threads_warns_once_per_tensor(merge_kit, tmp_path, monkeypatch, merge_jobs):
    from lotavec.testing import make_tiny_model

    other = tmp_path / "other"
    make_tiny_model("llama", other, seed=5)

    def go(label):
        r = merge(other, [merge_kit["A"], merge_kit["C"]], tmp_path / label, fsync=False, force=True)
        return r.warnings, _bytes(tmp_path / label)

    c, py = _both(monkeypatch, go)
    assert c == py and c[0] == "ok"
    names = {n for t in (merge_kit["A"], merge_kit["C"]) for n in lotavec.load_ticket(t).names}
    assert len(c[1][0]) == sum(len(lotavec.load_ticket(t).names) for t in (merge_kit["A"], merge_kit["C"])) >= len(names)
    assert _states(merge_jobs[0]) is not None and (_states(merge_jobs[0]) == 1).all()


TIES = MergeParams(method="ties", density=0.03, semantics="mergekit")


def test_ties_runs_whole_on_c_threads_with_the_thread_pools_bytes(merge_kit, tmp_path, monkeypatch, merge_jobs):
    def go(label):
        r = merge(merge_kit["base"], [merge_kit["A"], merge_kit["C"]], tmp_path / label, fsync=False, params=TIES)
        return r.changed_entries, _bytes(tmp_path / label)

    c, py = _both(monkeypatch, go)
    assert c == py and c[0] == "ok" and c[1][0] > 0
    assert len(merge_jobs) == 1 and (_states(merge_jobs[0]) == 1).all()


def test_ties_reports_a_non_finite_delta_like_the_thread_pool(merge_kit, tmp_path, monkeypatch, merge_jobs):
    name, i, ticket = _inf_ticket(merge_kit, tmp_path)
    base = _edited_base(merge_kit, tmp_path, name, np.array([i]), 1)
    c, py = _both(monkeypatch, lambda label: merge(base, [ticket, merge_kit["A"]], tmp_path / label, fsync=False,
                                                   params=TIES))
    assert c == py and c[0] is CorruptTicketError and f"ticket 1 gives a non-finite value at flat index {i}" in c[1]
    assert _states(merge_jobs[0]) is not None and 3 in _states(merge_jobs[0])


def test_a_corrupt_chunk_on_the_c_threads_is_decoded_again_by_the_python_codecs(merge_kit, tmp_path, monkeypatch, merge_jobs):
    """A chunk whose checksum fails is left to the Python codecs, which raise the reader's error
    (sum and TIES alike); the tensors before it were merged on the C threads."""
    from lotavec.errors import ChecksumError
    from lotavec.format.safetensors_io import SafetensorsFile

    bad = tmp_path / "bad.lota"
    shutil.copy(merge_kit["C"], bad)
    t = lotavec.load_ticket(bad)
    name = t.names[len(t.names) // 2]
    f = SafetensorsFile(bad)
    at = f.data_start + f.info(t._file.entry(name).data).start + 3
    f.close()
    t.close()
    data = bytearray(bad.read_bytes())
    data[at] ^= 0x40
    bad.write_bytes(bytes(data))
    for params in (None, TIES):
        merge_jobs.clear()
        c, py = _both(monkeypatch, lambda label, p=params: merge(merge_kit["base"], [merge_kit["A"], bad], tmp_path / f"{label}{p}",
                                                                 fsync=False, params=p))
        assert c == py and c[0] is ChecksumError and f"tensor {name!r}" in c[1]
        states = _states(merge_jobs[0])
        assert states is not None and 2 in states and 1 in states


@pytest.mark.parametrize("which", ["touched", "untouched"])
def test_a_failed_write_on_the_c_threads_fails_the_merge_naming_the_tensor(merge_kit, tmp_path, monkeypatch, merge_jobs, which):
    """The writer thread's failed write (here: a read-only descriptor, EBADF) fails that tensor's
    job; the merge raises OSError naming it and leaves no output."""
    import os

    import lotavec.hfwriter as hw
    from lotavec.models import open_model

    with lotavec.load_ticket(merge_kit["A"]) as t:
        touched = set(t.names)

    with open_model(merge_kit["base"]) as src:
        names = src.names()
    name = next(n for n in names if (n in touched) == (which == "touched"))
    ro = os.open(os.devnull, os.O_RDONLY)
    real = hw.ShardedWriter.target

    def target(self, n):
        fd, off = real(self, n)
        return (ro, off) if n == name else (fd, off)

    monkeypatch.setattr(hw.ShardedWriter, "target", target)
    try:
        with pytest.raises(OSError, match=f"tensor {name!r}: writing the merged tensor failed"):
            merge(merge_kit["base"], [merge_kit["A"]], tmp_path / "out", fsync=False)
    finally:
        os.close(ro)
    assert _states(merge_jobs[0]) is not None and 3 in _states(merge_jobs[0])
    assert not (tmp_path / "out").exists()
