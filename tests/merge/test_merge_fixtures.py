"""The merge engine against the format's test vectors (fixtures/): every valid ticket merged into
the base it was made from gives the fine-tuned bits its expected.json records, on every decoding
path; every corrupt chunk is refused by a merge with the reader's own error.

The merge's ``sum`` decodes chunks in the compiled kernels when it can (``lv_sum_coded``: checksum,
zstd from libzstd, mask and value checks in one call); anything those checks do not accept is
decoded again by the Python codecs, which raise the typed error. These tests hold both paths to
the reader's behaviour on the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import lotavec.errors as errors
import lotavec.merge.engine as eng
from lotavec import native
from lotavec.errors import LotavecError
from lotavec.merge import MergeParams, merge
from lotavec.ticket import load_ticket

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
_UINT = {"BF16": torch.int16, "F16": torch.int16, "F32": torch.int32}
_TORCH = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}


def _expected() -> dict[str, dict]:
    return {p.name[: -len(".expected.json")]: json.loads(p.read_text()) for p in sorted((FIXTURES / "valid").glob("*.expected.json"))}


def _as_tensor(bits: list[int], dtype: str, shape: list[int]) -> torch.Tensor:
    np_bits = np.array(bits, dtype=np.uint16 if dtype != "F32" else np.uint32)
    t = torch.from_numpy(np_bits.view(np.int16 if dtype != "F32" else np.int32).copy())
    return t.view(_TORCH[dtype]).reshape(shape)


def _base_folder(root: Path, tensors: dict[str, torch.Tensor]) -> Path:
    root.mkdir(parents=True)
    # an untouched tensor too, so that the output has more than the ticket's tensors
    save_file({**tensors, "zz.untouched": torch.arange(10, dtype=torch.float32)}, root / "model.safetensors")
    return root


def _coded_path_coded(monkeypatch, jobs: list):
    """From now on, record per tensor the compiled decoders were offered whether they decoded it:
    on the C threads of a whole-merge job table (``jobs``, the ``merge_jobs`` record), or one
    tensor at a time (``_coded_sum``). Returns a function giving that record so far."""
    seen: dict[str, bool] = {}
    real, start = eng._coded_sum, len(jobs)

    def spy(lib, ctx, name, *a, **k):
        r = real(lib, ctx, name, *a, **k)
        seen[name] = r is not None
        return r

    def decoded() -> dict[str, bool]:
        out = {}
        for j in (j for j in jobs[start:] if j is not None):
            t = j.table
            out.update({n: bool(state == 1) for n, kind, state in zip(j.names, t[:, j.KIND], t[:, j.STATE])
                        if kind == 1 and state in (1, 2)})
        return {**out, **seen}

    monkeypatch.setattr(eng, "_coded_sum", spy)
    return decoded


PATHS = ["compiled decoders", "python codecs", "numpy"]


def _use(path: str, monkeypatch, jobs: list):
    if path == "numpy":
        monkeypatch.setenv(native.ENV, "0")
    elif path == "python codecs":  # no job table for the C threads, no per-tensor decoding in C
        monkeypatch.setattr(eng._MergeJobs, "plan", classmethod(lambda cls, *a, **k: None))
        monkeypatch.setattr(eng, "_coded_plan", lambda *a, **k: None)
    elif not native.zstd_in_c():
        pytest.skip("libzstd.so.1 is not available: the merge decodes with the Python codecs")
    return _coded_path_coded(monkeypatch, jobs)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", sorted(_expected()))
def test_valid_fixture_merges_into_its_base_as_the_expected_finetune(name, path, tmp_path, monkeypatch, merge_jobs):
    exp = _expected()[name]
    if not exp["tensors"]:
        pytest.skip("a ticket without tensors")
    base = _base_folder(tmp_path / "base", {t["name"]: _as_tensor(t["base_bits"], t["dtype"], t["shape"])
                                            for t in exp["tensors"]})
    decoded = _use(path, monkeypatch, merge_jobs)
    ticket = FIXTURES / "valid" / f"{name}.safetensors"
    merge(base, [ticket], tmp_path / "out", fsync=False, force=True)  # force: fixtures' sample fingerprints
    from safetensors.torch import load_file

    out = load_file(tmp_path / "out" / "model.safetensors")
    for t in exp["tensors"]:
        want = _as_tensor(t["applied_bits"], t["dtype"], t["shape"])
        assert torch.equal(out[t["name"]].view(_UINT[t["dtype"]]), want.view(_UINT[t["dtype"]])), t["name"]
    assert torch.equal(out["zz.untouched"], torch.arange(10, dtype=torch.float32))
    if path == "compiled decoders":
        # every tensor without bitmap chunks or f32delta values was decoded in C, none refused
        coded = [t for t in exp["tensors"] if t["values"] != "f32delta" and "bitmap" not in t["mask_codecs"]]
        assert decoded() == {t["name"]: True for t in coded}


def _invalid_decode_cases() -> list[str]:
    """Invalid fixtures whose defect is in a chunk (found when decoding, not when opening)."""
    out = []
    for p in sorted((FIXTURES / "invalid").glob("*.safetensors")):
        try:
            load_ticket(p).close()
        except LotavecError:
            continue  # refused on open: a merge refuses it the same way, before anything else
        out.append(p.name)
    return out


def _reader_error(path: Path) -> LotavecError:
    with load_ticket(path) as ticket:
        try:
            for n in ticket.names:
                ticket[n]
        except LotavecError as e:
            return e
    raise AssertionError(f"{path.name} decodes without an error")


def _base_for(ticket_path: Path, tmp_path: Path, *, raw_on_zeros: bool = False, folder: str = "base") -> Path:
    """A base with the ticket's tensors: the valid fixture's base where the names match one (the
    invalid vectors are valid ones with one defect), else zeros. ``raw_on_zeros``: zeros under
    ``raw`` tensors too (their stored values do not depend on the base; against the fixtures'
    bases some of their extreme values overflow a float32 delta, which TIES then reports)."""
    with load_ticket(ticket_path) as ticket:
        infos = {n: ticket.info(n) for n in ticket.names}
    known = {t["name"]: t for exp in _expected().values() for t in exp["tensors"]}
    tensors = {}
    for n, info in infos.items():
        t = known.get(n)
        if raw_on_zeros and info["values"] == "raw":
            t = None
        if t is not None and t["dtype"] == info["dtype"] and list(t["shape"]) == list(info["shape"]):
            tensors[n] = _as_tensor(t["base_bits"], t["dtype"], t["shape"])
        else:
            tensors[n] = torch.zeros(info["shape"], dtype=_TORCH[info["dtype"]])
    return _base_folder(tmp_path / folder, tensors)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", _invalid_decode_cases())
def test_corrupt_chunk_is_refused_by_a_merge_with_the_readers_error(name, path, tmp_path, monkeypatch, merge_jobs):
    ticket = FIXTURES / "invalid" / name
    base = _base_for(ticket, tmp_path)
    decoded = _use(path, monkeypatch, merge_jobs)
    want = _reader_error(ticket)  # in the same configuration (the zstd library decides the wording)
    assert type(want) is getattr(errors, name.split("__")[0])
    with pytest.raises(LotavecError) as got:
        merge(base, [ticket], tmp_path / "out", fsync=False, force=True)
    assert type(got.value) is type(want) and str(got.value) == str(want)
    assert not (tmp_path / "out").exists()
    if path == "compiled decoders":
        # the failing tensor, where the compiled decoders were offered it, was handed back to the
        # Python codecs; every other tensor they were offered, they decoded
        for n, ok in decoded().items():
            assert ok is (f"tensor {n!r}" not in str(want)), n


# --- the same defects in gap-coded chunks -------------------------------------------------------
# Most valid vectors store their masks as bitmaps, which the compiled decoders leave to the Python
# codecs. Rewriting every bitmap chunk as gaps and building each invalid vector again from those
# sources puts (nearly) every chunk-level defect in front of the compiled checks.


def _tb():
    import sys

    if str(FIXTURES) not in sys.path:
        sys.path.insert(0, str(FIXTURES))
    import invalid_cases
    import ticketbytes

    return ticketbytes, invalid_cases


def _degapped(data: bytes) -> bytes:
    """The ticket with every bitmap chunk re-coded as gaps (narrowest width), content unchanged."""
    tb, ic = _tb()
    manifest, streams = tb.unpack(data)
    for t, chunks in zip(manifest["tensors"], streams):
        for k, rec in enumerate(t["chunks"]):
            if rec[1] == "bitmap":
                local = ic._local_indices(chunks[k][0], "bitmap")
                if not local.size:
                    rec[1], chunks[k] = "none", (b"", chunks[k][1])
                    continue
                top = int((np.diff(local, prepend=-1) - 1).max())
                codec, w = ("gaps8", 1) if top < 256 else (("gaps16", 2) if top < 65536 else ("gaps32", 4))
                rec[1] = codec
                chunks[k] = (tb.gaps_stream(local, w), chunks[k][1])
    return tb.pack(manifest, streams)


def _gap_sources() -> dict[str, bytes]:
    return {p.name[: -len(".safetensors")]: _degapped(p.read_bytes()) for p in sorted((FIXTURES / "valid").glob("*.safetensors"))}


def _gap_invalid_cases() -> list[str]:
    _, ic = _tb()
    return [c.slug for c in ic.INVALID if c.error in ("ChecksumError", "CorruptTicketError")]


@pytest.fixture(scope="module")
def gap_sources() -> dict[str, bytes]:
    return _gap_sources()


def test_degapped_sources_have_no_bitmap_and_merge_as_expected(gap_sources, tmp_path, monkeypatch, merge_jobs):
    if not native.zstd_in_c():
        pytest.skip("libzstd.so.1 is not available: the merge decodes with the Python codecs")
    for name, data in gap_sources.items():
        exp = _expected()[name]
        if not exp["tensors"]:
            continue
        (tmp_path / name).mkdir()
        ticket = tmp_path / name / "t.safetensors"
        ticket.write_bytes(data)
        with load_ticket(ticket) as t:
            assert not any("bitmap" in t.info(n)["mask_codecs"] for n in t.names)
        base = _base_folder(tmp_path / name / "base", {t["name"]: _as_tensor(t["base_bits"], t["dtype"], t["shape"])
                                                       for t in exp["tensors"]})
        decoded = _coded_path_coded(monkeypatch, merge_jobs)
        merge(base, [ticket], tmp_path / name / "out", fsync=False, force=True)
        from safetensors.torch import load_file

        out = load_file(tmp_path / name / "out" / "model.safetensors")
        for t in exp["tensors"]:
            want = _as_tensor(t["applied_bits"], t["dtype"], t["shape"])
            assert torch.equal(out[t["name"]].view(_UINT[t["dtype"]]), want.view(_UINT[t["dtype"]])), (name, t["name"])
        assert decoded() == {t["name"]: True for t in exp["tensors"] if t["values"] != "f32delta"}, name


TIES = MergeParams(method="ties", density=0.5, semantics="mergekit")


def _refused_by_ties_and_sum(ticket: Path, want: LotavecError, tmp_path: Path, monkeypatch, jobs: list
                             ) -> dict[str, bool]:
    """Merge ``ticket`` with TIES and with ``sum``: both raise the reader's error ``want`` (type and
    message) and leave no output. Returns, for the ``sum``, which tensors the compiled decoders
    decoded (:func:`_coded_path_coded`)."""
    with pytest.raises(LotavecError) as got:  # TIES decodes each ticket in C too (lv_ctx_decode)
        merge(_base_for(ticket, tmp_path, raw_on_zeros=True, folder="tbase"), [ticket], tmp_path / "ties", fsync=False,
              force=True, params=TIES)
    assert type(got.value) is type(want) and str(got.value) == str(want)
    decoded = _coded_path_coded(monkeypatch, jobs)
    with pytest.raises(LotavecError) as got:
        merge(_base_for(ticket, tmp_path), [ticket], tmp_path / "out", fsync=False, force=True)
    assert type(got.value) is type(want) and str(got.value) == str(want)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ties").exists()
    return decoded()


@pytest.mark.parametrize("slug", _gap_invalid_cases())
def test_defect_in_a_gap_coded_chunk_is_refused_like_the_reader(slug, gap_sources, tmp_path, monkeypatch, merge_jobs):
    if not native.zstd_in_c():
        pytest.skip("libzstd.so.1 is not available: the merge decodes with the Python codecs")
    _, ic = _tb()
    case = next(c for c in ic.INVALID if c.slug == slug)
    try:
        data = case.build(gap_sources)
    except LookupError:
        pytest.skip("the defect needs a bitmap chunk")
    ticket = tmp_path / f"{slug}.safetensors"
    ticket.write_bytes(data)
    want = _reader_error(ticket)
    decoded = _refused_by_ties_and_sum(ticket, want, tmp_path, monkeypatch, merge_jobs)
    for n, ok in decoded.items():
        assert ok is (f"tensor {n!r}" not in str(want)), n
    with load_ticket(ticket) as t:
        failing = [n for n in t.names if f"tensor {n!r}" in str(want)]
        assert len(failing) == 1
        info = t.info(failing[0])
        if info["values"] != "f32delta" and "bitmap" not in info["mask_codecs"]:
            assert decoded[failing[0]] is False  # offered to the compiled decoders, which refused it
        else:
            assert failing[0] not in decoded


def _stream_defects():
    """Defects of one gaps8 chunk's streams (tensor ``sparse`` of mask_codecs, raw BF16 values),
    checksums recomputed unless the defect is the checksum itself: ``(mask, values) -> (mask, values)``."""
    tb, _ = _tb()

    def plain(v: bytes) -> bytes:
        return tb.zstandard.ZstdDecompressor().decompress(v)

    return {
        "mask_not_zstd": (lambda m, v: (bytes(range(40)), v), True),
        "values_not_zstd": (lambda m, v: (m, bytes(range(40))), True),
        "values_without_content_size": (lambda m, v: (m, tb.zstd(plain(v), content_size=False)), True),
        "values_trailing_bytes": (lambda m, v: (m, v + b"\0\0"), True),
        "values_two_frames": (lambda m, v: (m, v + v), True),
        "values_truncated": (lambda m, v: (m, v[:-3]), True),
        "values_one_more": (lambda m, v: (m, tb.zstd(plain(v) + b"\0\0")), True),
        "mask_one_gap_fewer": (lambda m, v: (tb.zstd(plain(m)[:-1]), v), True),
        "mask_with_bad_zstd_checksum": (lambda m, v: (_bad_frame_checksum(tb, plain(m)), v), True),
        "mask_bit_flipped": (lambda m, v: (bytes([m[0] ^ 1]) + m[1:], v), False),
        "values_bit_flipped": (lambda m, v: (m, v[:-1] + bytes([v[-1] ^ 0x80])), False),
    }


def _bad_frame_checksum(tb, data: bytes) -> bytes:
    f = bytearray(tb.zstd(data, checksum=True))
    f[-1] ^= 0xFF  # the frame's content checksum (its last 4 bytes)
    return bytes(f)


@pytest.mark.parametrize("defect", sorted(_stream_defects()))
def test_stream_defect_in_a_gap_chunk_is_refused_like_the_reader(defect, gap_sources, tmp_path, monkeypatch,
                                                                merge_jobs):
    if not native.zstd_in_c():
        pytest.skip("libzstd.so.1 is not available: the merge decodes with the Python codecs")
    _, ic = _tb()
    fn, fix = _stream_defects()[defect]
    data = gap_sources["mask_codecs"]
    where = ic.find_chunk(data, "gaps", "sparse")
    ticket = tmp_path / "t.safetensors"
    ticket.write_bytes(ic.edit_chunk(data, where, lambda t, rec, m, v: fn(m, v), fix=fix))
    want = _reader_error(ticket)
    assert "tensor 'sparse'" in str(want)
    decoded = _refused_by_ties_and_sum(ticket, want, tmp_path, monkeypatch, merge_jobs)
    assert decoded["sparse"] is False


def test_ties_from_chunks_decoded_in_c_equals_the_python_codecs(gap_sources, tmp_path, monkeypatch):
    """TIES over the gap-coded vectors: decoding in C (lv_ctx_decode) or with the Python codecs
    gives the same bytes, and the C decoder took every BF16/F32 tensor it was offered."""
    if not native.zstd_in_c():
        pytest.skip("libzstd.so.1 is not available: the merge decodes with the Python codecs")
    made = []
    real = eng._SlotDecoded.__init__

    def spy(self, *a, **k):
        made.append(1)
        real(self, *a, **k)

    for name, data in gap_sources.items():
        exp = _expected()[name]
        if not exp["tensors"]:
            continue
        root = tmp_path / name
        root.mkdir()
        ticket = root / "t.safetensors"
        ticket.write_bytes(data)
        base = _base_for(ticket, root, raw_on_zeros=True)
        with monkeypatch.context() as m:
            m.setattr(eng._SlotDecoded, "__init__", spy)
            in_c = _outcome(base, ticket, root / "c")
        with monkeypatch.context() as m:
            m.setattr(eng, "_coded_trim_parts", lambda *a, **k: None)
            in_python = _outcome(base, ticket, root / "py")
        assert in_c == in_python, name
    assert len(made) >= 10


def _outcome(base: Path, ticket: Path, out: Path) -> tuple:
    """The merged bytes, or the error (some vectors hold extreme values whose float32 deltas
    overflow, which TIES reports: both decoders must then report the same)."""
    try:
        merge(base, [ticket], out, fsync=False, force=True, params=TIES)
    except LotavecError as e:
        return type(e), str(e)
    return (out / "model.safetensors").read_bytes(),
