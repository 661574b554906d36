"""Golden tests over fixtures/: valid tickets decode to their expected content, invalid ones
raise exactly the error their name states. Decoded content is compared, never compressed bytes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from format_helpers import INVALID, VALID, bits_of, expected, invalid_names, storage, valid_names

import lotavec.errors as errors
from lotavec.errors import FingerprintMismatchError, LotavecError
from lotavec.format import TicketFile, base_digest, base_sample
from lotavec.ticket import load_ticket

#: Invalid fixtures the implementation is known to accept: name → reason (strict xfail).
KNOWN_BUGS: dict[str, str] = {}


def _invalid_param(name: str):
    marks = [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name])] if name in KNOWN_BUGS else []
    return pytest.param(name, marks=marks, id=name)


def test_fixture_sets_are_complete():
    valid = valid_names()
    assert len(valid) >= 10 and len(invalid_names()) >= 60
    for name in valid:
        assert (VALID / f"{name}.expected.json").is_file(), name
    for name in invalid_names():
        error = name.split("__")[0]
        assert issubclass(getattr(errors, error), LotavecError), name
    for f in list(VALID.iterdir()) + list(INVALID.iterdir()):
        assert f.stat().st_size < 64 * 1024, f"{f} is not small"


def test_fixtures_cover_every_codec_and_dtype():
    combos, masks, shapes = set(), set(), []
    for name in valid_names():
        for t in expected(name)["tensors"]:
            combos.add((t["values"], t["dtype"]))
            masks.update(t["mask_codecs"])
            shapes.append((t["shape"], t["nnz"], t["numel"]))
    assert combos >= {(v, d) for v in ("ulpdiff", "raw", "f32delta") for d in ("BF16", "F16", "F32")}
    assert masks >= {"none", "all", "bitmap", "gaps8", "gaps16", "gaps32"}
    assert any(s == [] for s, _, _ in shapes)  # 0-d
    assert any(n == 0 and s for s, _, n in shapes)  # a 0 dimension
    assert any(k == 0 and n > 0 for _, k, n in shapes) and any(0 < k == n for _, k, n in shapes)
    assert any(n % 8 for _, _, n in shapes)


def _check_entry(tf: TicketFile, t: dict) -> None:
    e = tf.entry(t["name"])
    assert (list(e.shape), e.dtype, e.nnz, e.values) == (t["shape"], t["dtype"], t["nnz"], t["values"])
    assert [c.mask_codec for c in e.chunks] == t["mask_codecs"]
    assert (e.base_sample, e.base_digest) == (t["base_sample"], t["base_digest"])
    idx, pl = tf.read_tensor(t["name"])
    assert idx.dtype == np.int64
    assert idx.tolist() == t["indices"]
    assert bits_of(pl).tolist() == t["payload_bits"]
    parts = [(start + local, p) for start, local, p in tf.iter_chunks(t["name"])]
    got = np.concatenate([i for i, _ in parts]) if parts else np.empty(0, np.int64)
    assert got.tolist() == t["indices"]


@pytest.mark.parametrize("name", valid_names())
def test_valid_file_decodes_to_expected(name):
    exp = expected(name)
    with TicketFile(VALID / f"{name}.safetensors") as tf:
        assert tf.manifest.version[0] == exp["format_version"] == 1
        assert tf.manifest.chunk_elements == exp["chunk_elements"]
        assert tf.manifest.base == exp["base"] and tf.manifest.provenance == exp["provenance"]
        assert [e.name for e in tf.manifest.tensors] == [t["name"] for t in exp["tensors"]]
        for t in exp["tensors"]:
            _check_entry(tf, t)
        tf.verify()


@pytest.mark.parametrize("name", valid_names())
def test_valid_ticket_applies_to_expected_tensor(name):
    exp = expected(name)
    with load_ticket(VALID / f"{name}.safetensors") as ticket:
        assert ticket.names == [t["name"] for t in exp["tensors"]]
        assert ticket.nnz == sum(t["nnz"] for t in exp["tensors"])
        for t in exp["tensors"]:
            info = ticket.info(t["name"])
            assert (info["shape"], info["dtype"], info["nnz"], info["numel"], info["values"]) == (
                t["shape"], t["dtype"], t["nnz"], t["numel"], t["values"])
            tt = ticket[t["name"]]
            base = storage(t["base_bits"], t["dtype"])
            flat = base.copy()
            tt.apply_to(flat)
            assert bits_of(flat).tolist() == t["applied_bits"], t["name"]
            if t["values"] != "f32delta":
                assert bits_of(tt.finetuned(base[tt.indices])).tolist() == [t["applied_bits"][i] for i in t["indices"]]


@pytest.mark.parametrize("name", [n for n in valid_names() if any(t["base_sample"] for t in expected(n)["tensors"])])
def test_fingerprints_match_spec_and_refuse_other_base(name):
    with load_ticket(VALID / f"{name}.safetensors") as ticket:
        for t in expected(name)["tensors"]:
            base = storage(t["base_bits"], t["dtype"]).reshape(t["shape"])
            assert base_sample(base) == t["base_sample"] and base_digest(base) == t["base_digest"]
            tt = ticket[t["name"]]
            tt.check_base(base, t["dtype"], full=True)
            if base.size:
                other = base.copy().reshape(-1)
                bits_of(other)[-1] ^= 1  # the last element is always among the sampled ones
                other = other.reshape(t["shape"])
                with pytest.raises(FingerprintMismatchError):
                    tt.check_base(other, t["dtype"], full=True)


@pytest.mark.parametrize("name", valid_names())
def test_reference_decoder_agrees(name):
    """An independent decoder written from the spec reads every valid fixture the same way."""
    import ticketbytes as tb

    decoded = tb.decode_reference((VALID / f"{name}.safetensors").read_bytes())
    for t in expected(name)["tensors"]:
        idx, pl = decoded[t["name"]]
        assert idx.tolist() == t["indices"] and pl.tolist() == t["payload_bits"]


@pytest.mark.parametrize("name", [n for n in valid_names() if expected(n)["writer"] == "library"])
def test_byte_editor_round_trips_library_files(name):
    """pack(unpack(x)) == x, so invalid fixtures built with it differ only by their defect."""
    import ticketbytes as tb

    data = (VALID / f"{name}.safetensors").read_bytes()
    assert tb.pack(*tb.unpack(data)) == data


def _open_and_verify(path) -> None:
    with TicketFile(path) as tf:
        tf.verify()


def _load_and_decode(path) -> None:
    with load_ticket(path) as ticket:
        for name in ticket.names:
            ticket[name]


@pytest.mark.parametrize("name", [_invalid_param(n) for n in invalid_names()])
def test_invalid_file_raises_its_error(name):
    cls = getattr(errors, name.split("__")[0])
    path = INVALID / name
    for action in (_open_and_verify, _load_and_decode):
        with pytest.raises(LotavecError) as ei:
            action(path)
        assert type(ei.value) is cls, f"{action.__name__}: expected {cls.__name__}, got {type(ei.value).__name__}: {ei.value}"
        assert os.path.basename(path) in str(ei.value), f"message does not name the file: {ei.value}"


def test_regenerating_gives_identical_decoded_content(tmp_path):
    import make_fixtures
    import ticketbytes as tb

    written = make_fixtures.generate(tmp_path)
    assert sorted(written["invalid"]) == invalid_names()
    assert sorted(n[: -len(".safetensors")] for n in written["valid"]) == valid_names()
    for name in valid_names():
        new = json.loads((tmp_path / "valid" / f"{name}.expected.json").read_text())
        assert new == expected(name), name
        a = tb.decode_reference((tmp_path / "valid" / f"{name}.safetensors").read_bytes())
        b = tb.decode_reference((VALID / f"{name}.safetensors").read_bytes())
        assert {k: (i.tolist(), p.tolist()) for k, (i, p) in a.items()} == {k: (i.tolist(), p.tolist()) for k, (i, p) in b.items()}
    assert (tmp_path / "README.md").read_text() == (VALID.parent / "README.md").read_text()
