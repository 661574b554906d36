"""Hostile tickets: each must fail with its named error, fast and within bounded memory.

Cases (``CASES``): decompression bombs (a frame declaring 64 MiB where 12 B are expected, a frame
whose size field lies, a frame without a size, and the spec's own ceiling — 'all' chunks of 2^24
zero values, a 10^5× amplification that must stay within the per-chunk bound while streaming and
within ``max_tensor_bytes`` when decoded whole), headers claiming huge shapes, nnz > numel,
indices out of range, duplicate tensor names and keys, NaN/Inf values (refused: spec §6),
pathological JSON, a pickle posing as a ticket. ``base_cases`` adds a ticket whose manifest lies
about its base (refused by the fingerprint check of ``merge``, ``apply`` and ``verify --base``),
and non-finite results of applying or merging. ``--max-header`` also measures opening a maximal
(100 MiB) header in a subprocess.

Each case reports the error raised, wall time and the traced allocation peak.

Usage:
    .venv/bin/python campaign/hostile.py [--max-header] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import ticketbytes as tb  # noqa: E402  (the spec-level byte editor in fixtures/)
from common import PYTHON, Row, finish, tiny_pair  # noqa: E402

MiB = 1 << 20


@dataclass(frozen=True)
class Case:
    """A hostile input: a builder writing it under a folder, the error it must raise, what is wrong."""

    name: str
    error: str  # class name in lotavec.errors ("none" when the file is valid and must be accepted)
    doc: str
    build: Callable[[Path], Path]
    run: str = "read"  # "read": verify + report + whole decode; or a custom runner name
    max_peak: int = 64 * MiB  # traced allocation bound
    ci: bool = True  # part of the short CI version


# --- building blocks -----------------------------------------------------------------------


def ticket(tensors: list[dict], *, ce: int = 64, base: dict | None = None) -> bytes:
    """A ticket from ``{"name", "shape", "dtype", "values", "chunks": [(nnz, codec, mask, values)]}``."""
    manifest = {"format_version": 1, "format_minor": 0, "must_understand": [], "chunk_elements": ce,
                "base": base or {}, "provenance": {}, "tensors": []}
    streams = []
    for t in tensors:
        manifest["tensors"].append({
            "name": t["name"], "shape": t["shape"], "dtype": t["dtype"], "values": t["values"],
            "nnz": t.get("nnz", sum(c[0] for c in t["chunks"])), "data": t.get("data", t["name"] + ".ticket"),
            "base_sample": None, "base_digest": None, "chunks": [[c[0], c[1], 0, 0, 0] for c in t["chunks"]]})
        streams.append([(c[2], c[3]) for c in t["chunks"]])
    return tb.pack(manifest, streams)


def _write(folder: Path, name: str, data: bytes) -> Path:
    p = folder / f"{name}.safetensors"
    p.write_bytes(data)
    return p


def _small(values_stream: bytes, *, dtype: str = "F32", values: str = "raw", n: int = 3) -> dict:
    """One tensor of 8 elements with entries 0..n-1 stored by a gaps8 stream."""
    mask = tb.gaps_stream(np.arange(n), 1)
    return {"name": "w", "shape": [8], "dtype": dtype, "values": values, "chunks": [(n, "gaps8", mask, values_stream)]}


def _vals(arr: np.ndarray, width: int) -> bytes:
    return tb.value_stream(arr, width)


_zero_frames: dict[int, bytes] = {}


def zero_frame(n: int, *, content_size: bool = True) -> bytes:
    """One zstd frame of ``n`` zero bytes (a few KB for 64 MiB)."""
    key = n if content_size else -n
    if key not in _zero_frames:
        _zero_frames[key] = tb.zstd(bytes(n), content_size=content_size)
    return _zero_frames[key]


def lying_frame(declared: int, actual: int) -> bytes:
    """A zstd frame holding ``actual`` zero bytes whose header declares ``declared``."""
    import zstandard

    frame = bytearray(zero_frame(actual))
    params = zstandard.get_frame_parameters(bytes(frame))
    assert params.content_size == actual
    # Frame header: magic(4) FHD(1) [window descriptor(1)] [dict id] FCS(1/2/4/8); rewrite the FCS field.
    fhd = frame[4]
    fcs_flag, single = fhd >> 6, (fhd >> 5) & 1
    size = {0: 1 if single else 0, 1: 2, 2: 4, 3: 8}[fcs_flag]
    pos = 5 + (0 if single else 1) + [0, 1, 2, 4][fhd & 3]
    val = declared - 256 if size == 2 else declared
    frame[pos : pos + size] = val.to_bytes(size, "little")
    assert zstandard.get_frame_parameters(bytes(frame)).content_size == declared
    return bytes(frame)


def bomb_all_chunks(n_chunks: int) -> bytes:
    """An F32 tensor of n_chunks × 2^24 elements, every chunk 'all' with zero values (valid)."""
    ce = 1 << 24
    vals = zero_frame(4 * ce)
    return ticket([{"name": "bomb", "shape": [n_chunks * ce], "dtype": "F32", "values": "raw",
                    "chunks": [(ce, "all", b"", vals)] * n_chunks}], ce=ce)


def header_only(manifest: dict, tensors: dict | None = None) -> bytes:
    """A file whose header carries ``manifest`` verbatim and tensors (default: one empty data tensor each)."""
    if tensors is None:
        tensors = {}
        for t in manifest.get("tensors", []):
            tensors[t["data"]] = {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}
    header = {"__metadata__": {"format": "lotavec.ticket", "lotavec.ticket": json.dumps(manifest)}, **tensors}
    return tb.join_file(header, b"")


def _manifest(tensors: list[dict], ce: int = 64) -> dict:
    return {"format_version": 1, "format_minor": 0, "must_understand": [], "chunk_elements": ce,
            "base": {}, "provenance": {}, "tensors": tensors}


def _entry(name: str, shape: list[int], nnz: int, chunks: list, **kw) -> dict:
    return {"name": name, "shape": shape, "dtype": "F32", "nnz": nnz, "values": "raw", "data": name + ".ticket",
            "base_sample": None, "base_digest": None, "chunks": chunks, **kw}


# --- the cases -----------------------------------------------------------------------------


def _c(name, error, doc, **kw):
    def deco(fn):
        CASES.append(Case(name, error, doc, fn, **kw))
        return fn
    return deco


CASES: list[Case] = []


@_c("bomb: frame declares 64 MiB", "CorruptTicketError", "a value frame of 64 MiB of zeros (≈2 KB) where 12 bytes are expected")
def _b1(d):
    return _write(d, "bomb_declared", ticket([_small(zero_frame(64 * MiB))]))


@_c("bomb: size field lies", "CorruptTicketError", "the 64 MiB frame with its content-size field rewritten to the expected 12 bytes")
def _b2(d):
    return _write(d, "bomb_lies", ticket([_small(lying_frame(12, 64 * MiB))]))


@_c("bomb: no content size", "CorruptTicketError", "a 64 MiB frame that does not declare its size")
def _b3(d):
    return _write(d, "bomb_nosize", ticket([_small(zero_frame(64 * MiB, content_size=False))]))


@_c("bomb: gaps stream declares 64 MiB", "CorruptTicketError", "a mask (gaps) frame of 64 MiB where 3 bytes are expected")
def _b4(d):
    t = _small(_vals(np.array([1, 2, 3], "<u4"), 4))
    t["chunks"] = [(3, "gaps8", zero_frame(64 * MiB), t["chunks"][0][3])]
    return _write(d, "bomb_gaps", ticket([t]))


@_c("bomb at the spec ceiling: 2 'all' chunks of 2^24", "none",
    "valid: 2^25 F32 zero values in ~5 KB; streaming verify stays within the per-chunk bound, a whole decode within max_tensor_bytes",
    run="ceiling", max_peak=448 * MiB)
def _b5(d):
    return _write(d, "bomb_ceiling2", bomb_all_chunks(2))


@_c("bomb at the spec ceiling: 8 'all' chunks of 2^24", "none",
    "valid: 2^27 F32 zero values (1.5 GiB decoded) in ~17 KB", run="ceiling", max_peak=448 * MiB, ci=False)
def _b6(d):
    return _write(d, "bomb_ceiling8", bomb_all_chunks(8))


@_c("huge shape: 2^48 elements, 1 chunk record", "InvalidHeaderError",
    "shape [2^24, 2^24] (numel 2^48, allowed) but a single chunk record instead of 2^24")
def _h1(d):
    return _write(d, "huge_shape", header_only(_manifest([_entry("w", [1 << 24, 1 << 24], 0, [[0, "none", 0, 0, 0]])], 1 << 24)))


@_c("huge shape: 2^49 elements", "LimitExceededError", "shape [2^25, 2^24]")
def _h2(d):
    return _write(d, "huge_shape49", header_only(_manifest([_entry("w", [1 << 25, 1 << 24], 0, [])], 1 << 24)))


@_c("huge shape: 2^64 overflow dims", "LimitExceededError", "shape [2^32, 2^32, 2^32] (would overflow int64)")
def _h3(d):
    return _write(d, "huge_shape_overflow", header_only(_manifest([_entry("w", [1 << 32] * 3, 0, [])], 1 << 24)))


@_c("huge data tensor in the safetensors header", "LimitExceededError", "the U8 data tensor declares shape [2^50]")
def _h4(d):
    m = _manifest([_entry("w", [8], 0, [[0, "none", 0, 0, 0]])])
    return _write(d, "huge_u8", header_only(m, {"w.ticket": {"dtype": "U8", "shape": [1 << 50], "data_offsets": [0, 1 << 50]}}))


@_c("nnz > numel", "InvalidHeaderError", "an F32[8] tensor declaring nnz 9")
def _n1(d):
    return _write(d, "nnz_over", header_only(_manifest([_entry("w", [8], 9, [[8, "all", 0, 0, 0]])])))


@_c("chunk nnz > chunk length", "InvalidHeaderError", "an 8-element chunk declaring nnz 9 (tensor nnz matches)")
def _n2(d):
    return _write(d, "chunk_nnz_over", header_only(_manifest([_entry("w", [16], 9, [[9, "bitmap", 0, 0, 0], [0, "none", 0, 0, 0]])], 8)))


@_c("index out of range (gaps)", "CorruptTicketError", "gaps decode to local index 8 in an 8-element chunk")
def _i1(d):
    t = _small(_vals(np.array([1, 2, 3], "<u4"), 4))
    t["chunks"] = [(3, "gaps8", tb.zstd(tb.shuffle(np.array([0, 0, 6]), 1)), t["chunks"][0][3])]
    return _write(d, "idx_range", ticket([t]))


@_c("index out of range (gaps32 wrap)", "CorruptTicketError", "a gaps32 gap of 2^32-1")
def _i2(d):
    t = _small(_vals(np.array([1, 2, 3], "<u4"), 4))
    t["chunks"] = [(3, "gaps32", tb.zstd(tb.shuffle(np.array([0, 0, (1 << 32) - 1]), 4)), t["chunks"][0][3])]
    return _write(d, "idx_wrap", ticket([t]))


@_c("index out of range (bitmap padding)", "CorruptTicketError", "a bitmap of a 5-element chunk with bit 7 set")
def _i3(d):
    m = tb.zstd(bytes([0b10000111]))
    return _write(d, "idx_pad", ticket([{"name": "w", "shape": [5], "dtype": "F32", "values": "raw",
                                         "chunks": [(3, "bitmap", m, _vals(np.array([1, 2, 3], "<u4"), 4))]}]))


@_c("duplicate tensor names", "InvalidHeaderError", "two manifest tensors named 'w' with distinct data")
def _d1(d):
    a = _small(_vals(np.array([1, 2, 3], "<u4"), 4))
    b = dict(a, data="w2.ticket")
    return _write(d, "dup_names", ticket([a, b]))


@_c("shared data blob", "InvalidHeaderError", "two manifest tensors pointing at the same data tensor")
def _d2(d):
    raw = ticket([_small(_vals(np.array([1, 2, 3], "<u4"), 4))])
    return _write(d, "dup_blob", tb.edit_header(raw, lambda h, m: m["tensors"].append(dict(m["tensors"][0], name="v"))))


@_c("duplicate JSON keys", "InvalidHeaderError", "the safetensors header lists one key twice")
def _d3(d):
    raw = ticket([_small(_vals(np.array([1, 2, 3], "<u4"), 4))])
    header, body = tb.split_file(raw)
    text = json.dumps(header, separators=(",", ":"))
    dup = text[:-1] + ',"w.ticket":' + json.dumps(header["w.ticket"]) + "}"
    return _write(d, "dup_keys", tb.join_file(dup, body))


@_c("NaN value (raw BF16)", "CorruptTicketError", "a raw BF16 value 0x7FC0")
def _f1(d):
    return _write(d, "nan_bf16", ticket([_small(_vals(np.array([0x3F80, 0x7FC0, 0], "<u2"), 2), dtype="BF16")]))


@_c("Inf value (raw F16)", "CorruptTicketError", "a raw F16 value 0x7C00")
def _f2(d):
    return _write(d, "inf_f16", ticket([_small(_vals(np.array([0x3C00, 0x7C00, 0], "<u2"), 2), dtype="F16")]))


@_c("Inf delta (f32delta)", "CorruptTicketError", "an f32delta value -Inf")
def _f3(d):
    v = np.array([1.0, -np.inf, 0.0], "<f4").view("<u4")
    return _write(d, "inf_delta", ticket([_small(_vals(v, 4), values="f32delta")]))


@_c("NaN delta (f32delta)", "CorruptTicketError", "an f32delta value NaN")
def _f4(d):
    v = np.array([np.nan, 1.0, 0.0], "<f4").view("<u4")
    return _write(d, "nan_delta", ticket([_small(_vals(v, 4), values="f32delta")]))


@_c("deep JSON nesting", "InvalidHeaderError", "a header value nested 100,000 lists deep")
def _j1(d):
    text = b'{"__metadata__":{"format":"lotavec.ticket","lotavec.ticket":"{}"},"x":' + b"[" * 100000 + b"]" * 100000 + b"}"
    return _write(d, "deep_json", tb.join_file(text, b""))


@_c("deep manifest nesting", "InvalidHeaderError", "a manifest value nested 100,000 objects deep")
def _j2(d):
    m = '{"format_version":1,"chunk_elements":64,"tensors":[],"x":' + '{"a":' * 100000 + "0" + "}" * 100000 + "}"
    return _write(d, "deep_manifest", tb.join_file({"__metadata__": {"format": "lotavec.ticket", "lotavec.ticket": m}}, b""))


@_c("5000-digit integer", "InvalidHeaderError", "chunk_elements written with 5000 digits")
def _j3(d):
    m = '{"format_version":1,"chunk_elements":' + "9" * 5000 + ',"tensors":[]}'
    return _write(d, "bigint", tb.join_file({"__metadata__": {"format": "lotavec.ticket", "lotavec.ticket": m}}, b""))


class _Marker:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@_c("pickle posing as a ticket", "LimitExceededError",
    "a pickle whose loading would create a marker file (its first 8 bytes read as a huge header length); never unpickled")
def _p1(d):
    return _write(d, "pickle", pickle.dumps(_Marker(str(d / "UNPICKLED")), protocol=0))


# --- running -------------------------------------------------------------------------------


def read_all(path: Path, *, max_tensor_bytes: int | None = None) -> None:
    """The reader stages: open + verify; load + report + whole-tensor decode of every tensor."""
    from lotavec.format import TicketFile
    from lotavec.report import ticket_report
    from lotavec.ticket import load_ticket

    with TicketFile(path) as tf:
        tf.verify()
    kw = {} if max_tensor_bytes is None else {"max_tensor_bytes": max_tensor_bytes}
    with load_ticket(path, **kw) as t:
        ticket_report(t)
        for n in t.names:
            t[n]


def measure(fn: Callable[[], object]) -> tuple[str, float, int, str]:
    """Run ``fn``; ``(error class name or "none", seconds, traced peak bytes, message)``."""
    from lotavec.errors import LotavecError

    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    err, msg = "none", ""
    try:
        fn()
    except LotavecError as e:
        err, msg = type(e).__name__, str(e)
    except Exception as e:  # noqa: BLE001 - reported as the wrong outcome
        err, msg = f"UNEXPECTED {type(e).__name__}", str(e)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return err, dt, peak, msg


def run_case(case: Case, folder: Path) -> Row:
    """Build and read one hostile file; the row."""
    path = case.build(folder)
    size = path.stat().st_size
    if case.run == "ceiling":
        return _run_ceiling(case, path, size)
    err, dt, peak, msg = measure(lambda: read_all(path))
    ok = err == case.error and peak <= case.max_peak
    if case.name.startswith("pickle"):
        ok = ok and not (folder / "UNPICKLED").exists()
    return Row(f"hostile: {case.name}", f"{size:,} B file → {err} in {dt * 1000:.0f} ms, traced peak "
               f"{peak / MiB:.1f} MiB (expected {case.error})", ok, {"message": msg[:300], "doc": case.doc})


def _run_ceiling(case: Case, path: Path, size: int) -> Row:
    """Streaming verify stays bounded per chunk; a whole decode never allocates above max_tensor_bytes."""
    from lotavec.format import TicketFile
    from lotavec.ticket import load_ticket

    def verify():
        with TicketFile(path) as tf:
            tf.verify()

    e1, t1, p1, m1 = measure(verify)
    with TicketFile(path) as tf:
        nnz = tf.manifest.tensors[0].nnz
    whole = nnz * 12  # what the reader's cap check counts: int64 index + 4-byte payload per entry

    def decode(cap):
        def fn():
            with load_ticket(path, max_tensor_bytes=cap) as t:
                t["bomb"]
        return fn

    e2, _, p2, _ = measure(decode(whole - 1))
    e3, t3, p3, m3 = measure(decode(whole))
    ok = e1 == "none" and p1 <= case.max_peak and e2 == "LimitExceededError" and p2 < MiB and \
        (e3 == "LimitExceededError" or (e3 == "none" and p3 <= whole))
    return Row(f"hostile: {case.name}", (
        f"{size:,} B file, {nnz:,} entries ({whole / size:,.0f}× amplification): streaming verify OK in {t1:.1f} s, "
        f"traced peak {p1 / MiB:.0f} MiB (one chunk's decoded output is 2^24×12 B = 192 MiB); whole decode with "
        f"max_tensor_bytes = nnz×12 − 1 → {e2} (peak {p2 / MiB:.2f} MiB); with max_tensor_bytes = nnz×12 = "
        f"{whole / MiB:.0f} MiB → {e3} in {t3:.1f} s, traced peak {p3 / MiB:.0f} MiB"
        + ("" if e3 != "none" or p3 <= whole else f" = {p3 / whole:.2f}× the cap (bug B4)")), ok,
        {"messages": [m1, m3]})


def max_header_row(folder: Path, *, target_mib: int = 99) -> Row:
    """Open (and report) a ticket with a ~100 MiB header of 'none' chunk records, in a subprocess."""
    rec = '[0,"none",0,0,0]'
    limit = 100 * MiB  # the spec's header limit

    def build(n: int) -> bytes:
        m = json.dumps(_manifest([_entry("w", [n * 8], 0, "CHUNKS")], 8), separators=(",", ":"))
        m = m.replace('"CHUNKS"', "[" + ",".join([rec] * n) + "]")
        return json.dumps({"__metadata__": {"format": "lotavec.ticket", "lotavec.ticket": m},
                           "w.ticket": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}},
                          separators=(",", ":")).encode()

    n = (target_mib * MiB) // (len(json.dumps(rec)) - 1)  # each record is escaped inside the header string
    header = build(n)
    while len(header) > limit:
        n = int(n * limit / len(header) * 0.999)
        header = build(n)
    path = folder / "max_header.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    del header
    code = ("import sys,time,resource,json\n"
            "from lotavec.ticket import load_ticket\nfrom lotavec.report import ticket_report\n"
            "t0=time.perf_counter()\nt=load_ticket(sys.argv[1]); ticket_report(t)\nt1=time.perf_counter()\n"
            "t.verify()\nt2=time.perf_counter()\n"
            "print(json.dumps({'open_report_s':t1-t0,'verify_s':t2-t1,'maxrss_mib':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))\n")
    p = subprocess.run([PYTHON, "-c", code, str(path)], capture_output=True, text=True, timeout=3600)
    size = path.stat().st_size
    path.unlink()
    if p.returncode != 0:
        return Row("hostile: maximal header (100 MiB, chunk records)", f"failed: {p.stderr[-500:]}", False)
    r = json.loads(p.stdout.strip().splitlines()[-1])
    return Row("hostile: maximal header (100 MiB, chunk records)", (
        f"valid {size / MiB:.0f} MiB file with {n:,} chunk records: open + inspect {r['open_report_s']:.0f} s, "
        f"verify {r['verify_s']:.0f} s, peak RSS {r['maxrss_mib']:,.0f} MiB (no limit declared for this; finding F-header)"),
        True, r)


# --- cases against a base model -------------------------------------------------------------


def base_cases(work: Path) -> list[Row]:
    """A ticket that lies about its base, one without fingerprints; non-finite results of apply and merge."""
    rows = [lying_base_row(work), stripped_fingerprint_row(work)]
    rows += nonfinite_rows(work)
    return rows


def _other_base(work: Path) -> Path:
    from lotavec.testing import make_tiny_model

    other = work / "tiny_base_seed1"
    if not (other / "config.json").is_file():
        make_tiny_model("llama", other, seed=1)
    return other


def _ticket_for(work: Path) -> Path:
    from lotavec.extraction import extract

    base, ft = tiny_pair(work)
    p = work / "tiny_ticket.safetensors"
    if not p.exists():
        extract(base, ft, p, density=0.1)
    return p


def _refusals(ticket_path: Path, base_dir: Path, work: Path) -> dict[str, str]:
    """What merge, lotavec.apply and verify_against_base do with this ticket and base."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    import lotavec
    from lotavec.verify import verify_against_base

    hf_logging.disable_progress_bar()
    out = {}
    dest = work / "lie_merged"
    if dest.exists():
        shutil.rmtree(dest)
    err, _, _, _ = measure(lambda: lotavec.merge(base_dir, [ticket_path], dest))
    out["merge"] = err + (" (output written)" if dest.exists() else "")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    err, _, _, _ = measure(lambda: lotavec.apply(model, str(ticket_path)))
    changed = any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    out["apply"] = err + (" (model modified)" if changed else "")
    err, _, _, _ = measure(lambda: verify_against_base(lotavec.load_ticket(ticket_path), base_dir))
    out["verify --base"] = err
    return out


def lying_base_row(work: Path) -> Row:
    """The manifest claims base B (repo id and revision); the tensors were made for A."""
    src = _ticket_for(work)
    other = _other_base(work)
    lie = work / "lying_base.safetensors"
    lie.write_bytes(tb.edit_header(src.read_bytes(), lambda h, m: m.update(
        base={"repo_id": "org/base-b", "revision": "b" * 40})))
    got = _refusals(lie, other, work)
    ok = all(v == "FingerprintMismatchError" for v in got.values())  # and no output, no modified model
    return Row("hostile: manifest lies about its base", "ticket made for A claiming base org/base-b, used on B: " +
               ", ".join(f"{k} → {v}" for k, v in got.items()), ok)


def stripped_fingerprint_row(work: Path) -> Row:
    """Fingerprints set to null (allowed by the spec): nothing can tell the base apart."""
    src = _ticket_for(work)
    other = _other_base(work)
    bare = work / "no_fingerprints.safetensors"

    def strip(h, m):
        for t in m["tensors"]:
            t["base_sample"] = t["base_digest"] = None

    bare.write_bytes(tb.edit_header(src.read_bytes(), strip))
    got = _refusals(bare, other, work)
    return Row("hostile: ticket without fingerprints on the wrong base",
               "base_sample/base_digest null (spec allows): " + ", ".join(f"{k} → {v}" for k, v in got.items()) +
               " — accepted silently, no warning (limitation L-fingerprint)", True, got)


def nonfinite_rows(work: Path) -> list[Row]:
    """Writers refuse non-finite values; applying or merging must refuse non-finite results (spec §6)."""
    import torch

    import lotavec
    from lotavec.errors import LotavecError
    from lotavec.format.safetensors_io import write_safetensors
    from lotavec.format.writer import TicketFileWriter
    from lotavec.ticket import Ticket, TicketTensor

    rows = []
    w = TicketFileWriter(work / "nan_w.safetensors")
    e1, *_ = measure(lambda: w.add("w", (4,), "BF16", np.array([0]), "raw", np.array([0x7FC0], "<u2")))
    e2, *_ = measure(lambda: w.add("v", (4,), "F32", np.array([0]), "f32delta", np.array([np.inf], "<f4")))
    w.abort()
    rows.append(Row("hostile: writer given NaN/Inf", f"raw NaN → {e1}; f32delta Inf → {e2}",
                    e1 == e2 == "FormatError"))
    base = np.full((4, 4), 3e38, np.float32)
    tt = TicketTensor.from_delta("w", base, np.array([0, 5]), np.array([3e38, 1.0], np.float32), "F32")
    flat = base.reshape(-1).copy()
    e3, *_ = measure(lambda: tt.apply_to(flat))
    ulp = TicketTensor.from_finetuned("w", base, np.full((4, 4), 3.3e38, np.float32), np.array([0]), "F32")
    flat2 = base.reshape(-1).copy()
    with np.errstate(all="ignore"):
        e4, *_ = measure(lambda: ulp.apply_to(flat2, weight=10.0))
    rows.append(Row("hostile: non-finite result of TicketTensor.apply_to",
                    f"f32delta overflow, weight 1 → {e3}; ulpdiff, weight 10 → {e4}"
                    + ("" if np.isfinite(flat2).all() else " (Inf WRITTEN: bug B2)"),
                    e3 == "CorruptTicketError" and e4 != "none"))
    folder = work / "overflow_base"
    folder.mkdir(exist_ok=True)
    with open(folder / "model.safetensors", "wb") as f:
        write_safetensors(f, [("w", "F32", (4, 4), base)], {"format": "pt"})
    tpath = work / "overflow.safetensors"
    Ticket([tt]).save(tpath)
    dest = work / "overflow_merged"
    with np.errstate(all="ignore"):
        e5, *_ = measure(lambda: lotavec.merge(folder, [tpath], dest, overwrite=True))
    wrote_inf = False
    if dest.exists():
        from lotavec.models import open_model

        with open_model(dest) as s:
            wrote_inf = not np.isfinite(s.array("w")).all()
    rows.append(Row("hostile: non-finite result of merge", f"f32delta 3e38 onto 3e38 (F32), sum → {e5}" +
                    (" (merged model holds Inf: bug B1)" if wrote_inf else ""), e5 != "none" and not wrote_inf))
    sd = {"w": torch.from_numpy(base.copy())}
    with np.errstate(all="ignore"):
        e6, *_ = measure(lambda: lotavec.apply(sd, Ticket([ulp]), weight=10.0))
    inf6 = not torch.isfinite(sd["w"]).all().item()
    rows.append(Row("hostile: non-finite result of lotavec.apply", f"ulpdiff, weight 10 → {e6}" +
                    (" (model holds Inf: bug B3)" if inf6 else ""), e6 != "none" and not inf6))
    rows.append(nan_ulpdiff_row(work))
    assert issubclass(LotavecError, Exception)
    return rows


def nan_ulpdiff_ticket(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """A valid ``ulpdiff`` ticket, with the right fingerprints, whose result on its own base is NaN.

    Returns ``(ticket path, base model folder, base array)``.
    """
    from lotavec.format.safetensors_io import write_safetensors
    from lotavec.ticket import Ticket, TicketTensor

    base = np.full(16, 1.0, np.float32)
    nan_bits = np.array([0x7FC00000], np.uint32)
    good = TicketTensor.from_finetuned("w", base, base, np.array([3]), "F32")
    payload = nan_bits - base.view(np.uint32)[[3]]  # wrap-around difference to a NaN
    tt = TicketTensor("w", good.shape, "F32", good.indices, "ulpdiff", payload, good.base_sample, good.base_digest)
    path = folder / "nan_ulpdiff.safetensors"
    Ticket([tt]).save(path)
    model = folder / "nan_ulpdiff_base"
    model.mkdir(exist_ok=True)
    with open(model / "model.safetensors", "wb") as f:
        write_safetensors(f, [("w", "F32", (16,), base)], {"format": "pt"})
    return path, model, base


def nan_ulpdiff_row(work: Path) -> Row:
    """Verify accepts the file (it is well-formed); merge, apply_to and lotavec.apply must refuse the NaN."""
    import torch

    import lotavec
    from lotavec.format import TicketFile
    from lotavec.ticket import load_ticket

    path, model, base = nan_ulpdiff_ticket(work)
    e0, *_ = measure(lambda: TicketFile(path).verify())
    dest = work / "nan_merged"
    if dest.exists():
        shutil.rmtree(dest)
    e1, *_ = measure(lambda: lotavec.merge(model, [path], dest))
    flat = base.copy()
    with load_ticket(path) as t:
        tt = t["w"]
    e2, *_ = measure(lambda: tt.apply_to(flat))
    sd = {"w": torch.from_numpy(base.copy())}
    e3, *_ = measure(lambda: lotavec.apply(sd, str(path)))
    nan3 = bool(torch.isnan(sd["w"]).any())
    ok = e1 != "none" and not dest.exists() and e2 != "none" and e3 != "none" and not nan3
    return Row("hostile: valid ulpdiff ticket whose result is NaN on its own base",
               f"verify → {e0} (well-formed); merge → {e1}; TicketTensor.apply_to → {e2}; lotavec.apply → {e3}"
               + (" (NaN WRITTEN into the model: bug B3)" if nan3 else ""), ok)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--max-header", action="store_true", help="also measure a maximal (100 MiB) header")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lotavec-hostile-") as td:
        work = args.workdir or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        files = work / "files"
        files.mkdir(exist_ok=True)
        rows = [run_case(c, files) for c in CASES]
        rows += base_cases(work)
        if args.max_header:
            rows.append(max_header_row(files))
        rows.append(Row("hostile: host", f"maxrss of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB", True))
        return finish(rows)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
