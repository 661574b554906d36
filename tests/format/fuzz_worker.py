"""Fuzz worker: mutate valid tickets and push every mutant through open, inspect, verify, apply.

Run by ``test_fuzz.py`` in a subprocess (address-space rlimit, per-case alarm). Every outcome must
be success or a :class:`lotavec.errors.LotavecError`; anything else, a case over the time limit,
or a case whose traced allocations exceed the memory bound is a failure.

Reproduce one case (prints the mutation and the traceback):

    .venv/bin/python tests/format/fuzz_worker.py --seed SEED --case N
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import traceback
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1] / "fixtures")]
import ticketbytes as tb  # noqa: E402
from format_helpers import VALID, expected, storage, valid_names  # noqa: E402

from lotavec.errors import LotavecError  # noqa: E402
from lotavec.format import TicketFile  # noqa: E402
from lotavec.ticket import load_ticket  # noqa: E402

TIME_LIMIT_S = 2.0
MEMORY_LIMIT_BYTES = 64 << 20  # traced peak per case
MAX_TENSOR_BYTES = 16 << 20  # load_ticket(max_tensor_bytes=...) cap declared to the library
MAX_APPLY_NUMEL = 1 << 16  # the harness builds a base array only up to this size

INTERESTING_INTS = [0, 1, 2, 7, 8, 9, 13, 63, 64, 65, 255, 256, 4096, 65535, 65536, (1 << 24) - 1, 1 << 24,
                    (1 << 24) + 8, (1 << 31) - 1, 1 << 31, 1 << 32, (1 << 32) + 1, 1 << 40, 1 << 48, (1 << 48) + 1,
                    (1 << 63) - 1, 1 << 63, 1 << 64, 10**30, -1, -(1 << 63)]
INTERESTING_VALUES = [None, True, False, "", "x", 1.5, -0.0, [], {}, [1], "none", "all", "bitmap", "gaps8",
                      "gaps16", "gaps32", "gaps", "ulpdiff", "raw", "f32delta", "BF16", "F16", "F32", "U8", "I64",
                      "lotavec.ticket", "w.ticket"]
INTERESTING_BYTES = [0x00, 0xFF, 0x7F, 0x80, 0x20, 0x22, 0x2C, 0x30, 0x39, 0x5B, 0x5D, 0x7B, 0x7D]


class Hang(BaseException):
    """Raised by the alarm: a case ran over TIME_LIMIT_S (BaseException so library code can't swallow it)."""


def _alarm(signum, frame):
    raise Hang(f"case ran over {TIME_LIMIT_S} s")


# --- mutations ------------------------------------------------------------------------------


def header_end(data: bytes) -> int:
    if len(data) < 8:
        return len(data)
    return min(len(data), 8 + struct.unpack("<Q", data[:8])[0])


def m_bitflip(r: random.Random, data: bytes, corpus: list[bytes]) -> tuple[bytes, str]:
    b = bytearray(data)
    hi = header_end(data) if r.random() < 0.5 else len(b)
    pos = [r.randrange(hi) for _ in range(r.randint(1, 4))]
    for p in pos:
        b[p] ^= 1 << r.randrange(8)
    return bytes(b), f"bitflip at {pos}"


def m_overwrite(r, data, corpus):
    b = bytearray(data)
    hi = header_end(data) if r.random() < 0.5 else len(b)
    done = []
    for _ in range(r.randint(1, 4)):
        p = r.randrange(hi)
        b[p] = r.choice(INTERESTING_BYTES) if r.random() < 0.5 else r.randrange(256)
        done.append((p, b[p]))
    return bytes(b), f"overwrite {done}"


def m_truncate(r, data, corpus):
    n = r.randrange(len(data))
    return data[:n], f"truncate to {n}"


def m_extend(r, data, corpus):
    extra = bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
    return data + extra, f"append {extra.hex()}"


def m_splice(r, data, corpus):
    other = r.choice(corpus)
    i, j = r.randrange(len(data) + 1), r.randrange(len(other) + 1)
    return data[:i] + other[j:], f"splice [:{i}] + other[{j}:] (other size {len(other)})"


def m_length_field(r, data, corpus):
    n = header_end(data) - 8
    v = r.choice([0, 1, n - 1, n + 1, n + 8, len(data), len(data) - 7, 100 << 20, (100 << 20) + 1, 1 << 63, (1 << 64) - 1])
    v = max(0, min(v, (1 << 64) - 1))
    return struct.pack("<Q", v) + data[8:], f"header length field = {v}"


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _edit_doc(r: random.Random, doc) -> str:
    """One random edit somewhere in a JSON document (in place); returns its description."""
    paths = [p for p, _ in _paths(doc) if p]
    if not paths:
        return "no-op"
    path = r.choice(paths)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key, old = path[-1], parent[path[-1]]
    op = r.random()
    if op < 0.15:
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
        return f"delete {path}"
    if op < 0.22 and isinstance(parent, list):
        parent.insert(key, old)
        return f"duplicate {path}"
    if op < 0.30 and isinstance(parent, list) and len(parent) > 1:
        j = r.randrange(len(parent))
        parent[key], parent[j] = parent[j], parent[key]
        return f"swap {path} with index {j}"
    if isinstance(old, int) and not isinstance(old, bool) and op < 0.85:
        new = r.choice([old + 1, old - 1, old * 2, old // 2, r.choice(INTERESTING_INTS), r.randrange(-5, 1 << 20)])
    elif op < 0.6:
        new = r.choice(INTERESTING_INTS)
    else:
        new = r.choice(INTERESTING_VALUES)
    parent[key] = new
    return f"set {path} = {new!r} (was {old!r})" if not isinstance(old, (list, dict)) else f"set {path} = {new!r}"


def _fix_crcs(data: bytes) -> bytes:
    """Recompute each chunk's crc32 where the records still describe the data (else unchanged)."""
    try:
        manifest, streams = tb.unpack(data)
        for t, chunks in zip(manifest["tensors"], streams):
            for rec, (m, v) in zip(t["chunks"], chunks):
                rec[4] = zlib.crc32(m + v)

        def put(header, _):
            header["__metadata__"]["lotavec.ticket"] = json.dumps(manifest, separators=(",", ":"))
        return tb.edit_header(data, put)
    except Exception:
        return data


def m_header(r, data, corpus):
    """Structured edit of the manifest or the safetensors header; data bytes unchanged."""
    try:
        header, body = tb.split_file(data)
        manifest = json.loads(header["__metadata__"]["lotavec.ticket"])
    except Exception:
        return m_bitflip(r, data, corpus)
    descs = []
    for _ in range(r.choice([1, 1, 1, 2, 3])):
        if r.random() < 0.75:
            descs.append("manifest: " + _edit_doc(r, manifest))
        else:
            descs.append("header: " + _edit_doc(r, header))
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and "lotavec.ticket" in meta:
        meta["lotavec.ticket"] = json.dumps(manifest, separators=(",", ":"))
    out = tb.join_file(header, body)
    if r.random() < 0.5:
        out = _fix_crcs(out)
        descs.append("crc fixed")
    return out, "; ".join(descs)


def m_json_text(r, data, corpus):
    """Textual edit of the header JSON (digits, quotes, brackets); header length kept consistent."""
    end = header_end(data)
    text = bytearray(data[8:end])
    if not text:
        return m_extend(r, data, corpus)
    p = r.randrange(len(text))
    op = r.randrange(5)
    if op == 4:  # pathological JSON: deep nesting, a 5000-digit integer, a huge exponent
        ins = r.choice([b"[" * 50000 + b"]" * 50000, b"9" * 5000, b"1e99999", b'"\\ud800"'])
        if r.random() < 0.5:
            text = bytearray(b'{"__metadata__":{"format":"lotavec.ticket","lotavec.ticket":"x"},"t":' + ins + b"}")
        else:
            manifest = json.dumps({"format_version": 1, "chunk_elements": 64, "tensors": [], "x": 0})
            manifest = manifest.replace("0}", ins.decode() + "}") if ins[0] != 0x22 else manifest
            text = bytearray(json.dumps({"__metadata__": {"format": "lotavec.ticket", "lotavec.ticket": manifest}}).encode())
        desc = f"pathological header ({len(ins)} bytes)"
    elif op == 0:
        digits = [i for i, c in enumerate(text) if 0x30 <= c <= 0x39]
        p = r.choice(digits) if digits else p
        text[p] = r.choice(b"0123456789")
        desc = f"digit at {p} -> {chr(text[p])}"
    elif op == 1:
        del text[p : p + r.randint(1, 8)]
        desc = f"delete text at {p}"
    elif op == 2:
        ins = r.choice([b"9", b"99999999999999999999", b"-", b",", b'"', b"[", b"]", b"{", b"}", b"null", b"\\u0000", b"1e999"])
        text[p:p] = ins
        desc = f"insert {ins!r} at {p}"
    else:
        q = r.randrange(len(text))
        a, b = sorted((p, q))
        text[a:a] = text[a:b][: 64]
        desc = f"repeat text[{a}:{min(b, a + 64)}]"
    return tb.join_file(bytes(text), data[end:], pad=False), "json text: " + desc


def m_stream(r, data, corpus):
    """Edit one chunk's mask or value stream and recompute sizes and crc32 (reaches the decoders)."""
    try:
        manifest, streams = tb.unpack(data)
    except Exception:
        return m_bitflip(r, data, corpus)
    spots = [(ti, ci) for ti, t in enumerate(streams) for ci in range(len(t))]
    if not spots:
        return m_header(r, data, corpus)
    ti, ci = r.choice(spots)
    m, v = streams[ti][ci]
    which = r.randrange(2)
    s = bytearray((m, v)[which])
    op = r.randrange(5)
    if op == 0 and s:
        for _ in range(r.randint(1, 3)):
            s[r.randrange(len(s))] ^= 1 << r.randrange(8)
        desc = "bit flips"
    elif op == 1:
        n = r.choice([0, 1, 3, 4, 7, 8, 9, 16, 64, 65]) * r.choice([1, 2, 4])
        s = bytearray(tb.zstd(bytes(r.randrange(256) for _ in range(n))))
        desc = f"frame of {n} random bytes"
    elif op == 2:
        n = r.choice([0, 1, 8, 64, 1 << 12])
        s = bytearray(tb.zstd(bytes(n)))
        desc = f"frame of {n} zero bytes"
    elif op == 3 and s:
        s = s[: r.randrange(len(s))]
        desc = "truncated stream"
    else:
        s += bytes(r.randrange(256) for _ in range(r.randint(1, 4)))
        desc = "trailing bytes"
    streams[ti][ci] = (bytes(s), v) if which == 0 else (m, bytes(s))
    if r.random() < 0.3:
        rec = manifest["tensors"][ti]["chunks"][ci]
        rec[0] = r.choice([0, 1, max(0, rec[0] - 1), rec[0] + 1])
        rec[1] = r.choice(["none", "all", "bitmap", "gaps8", "gaps16", "gaps32"])
        desc += f", record nnz={rec[0]} codec={rec[1]}"
    return tb.pack(manifest, streams), f"stream t{ti} c{ci} {'mask' if which == 0 else 'values'}: {desc}"


MUTATIONS = [(m_bitflip, 3), (m_overwrite, 2), (m_truncate, 1), (m_extend, 1), (m_splice, 1), (m_length_field, 1),
             (m_header, 6), (m_json_text, 2), (m_stream, 5)]


def make_case(seed: int, i: int, corpus: list[tuple[str, bytes]]) -> tuple[str, bytes, str]:
    """Deterministic mutant number ``i``: (source fixture, bytes, description)."""
    r = random.Random(f"{seed}:{i}")
    src, data = r.choice(corpus)
    blobs = [d for _, d in corpus]
    descs = []
    for _ in range(r.choice([1, 1, 1, 2])):
        fn = r.choices([f for f, _ in MUTATIONS], [w for _, w in MUTATIONS])[0]
        try:
            data, d = fn(r, data, blobs)
        except Exception:  # a mutator that cannot apply to this input (e.g. an empty header): skip it
            continue
        descs.append(f"{fn.__name__}: {d}")
    return src, data, " | ".join(descs)


# --- exercising -----------------------------------------------------------------------------


def base_for(name: str, dtype: str, numel: int, known: dict) -> np.ndarray:
    """The fixture's real base when it fits, else deterministic weight-like values."""
    t = known.get(name)
    if t is not None and t["dtype"] == dtype and t["numel"] == numel:
        return storage(t["base_bits"], dtype).copy()
    x = (np.random.default_rng(numel).standard_normal(numel) * 0.05).astype(np.float32)
    bits = {"BF16": lambda: (x.view(np.uint32) >> 16).astype(np.uint16), "F16": lambda: x.astype(np.float16).view(np.uint16),
            "F32": lambda: x.view(np.uint32)}[dtype]()
    return storage(bits, dtype).copy()


def exercise(path: str, known: dict) -> list[str]:
    """Open / inspect / verify / apply; returns the outcome of each stage (class names)."""
    outcomes = []

    def stage(fn):
        try:
            fn()
            outcomes.append("ok")
        except LotavecError as e:
            outcomes.append(type(e).__name__)

    def verify():
        with TicketFile(path, max_tensor_bytes=MAX_TENSOR_BYTES) as tf:
            tf.verify()

    def inspect_and_apply():
        with load_ticket(path, max_tensor_bytes=MAX_TENSOR_BYTES) as t:
            infos = [t.info(n) for n in t.names]
            _ = (t.nnz, t.numel, t.density, repr(t), [i["bytes"] for i in infos])
            for info in infos:
                name = info["name"]
                stage(lambda name=name, info=info: apply_one(t, name, info))

    def apply_one(t, name, info):
        tt = t[name]
        if tt.numel > MAX_APPLY_NUMEL:
            return
        base = base_for(name, tt.dtype, tt.numel, known)
        with np.errstate(all="ignore"):
            flat = base.copy()
            tt.apply_to(flat)
            flat = base.copy()
            tt.apply_to(flat, weight=0.5)

    stage(verify)
    stage(inspect_and_apply)
    return outcomes


def run_case(seed: int, i: int, corpus, known, workdir: str) -> tuple[list[str], str | None, str]:
    src, data, desc = make_case(seed, i, corpus)
    path = os.path.join(workdir, f"case{i}.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    signal.setitimer(signal.ITIMER_REAL, TIME_LIMIT_S)
    failure = None
    outcomes: list[str] = []
    try:
        outcomes = exercise(path, known.get(src, {}))
    except Hang as e:
        failure = f"hang: {e}"
    except BaseException:  # noqa: BLE001 - everything that is not a LotavecError is a finding
        failure = traceback.format_exc(limit=8)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.unlink(path)
    peak = tracemalloc.get_traced_memory()[1] - before
    if failure is None and peak > MEMORY_LIMIT_BYTES:
        failure = f"allocated {peak} bytes (traced peak), above the {MEMORY_LIMIT_BYTES} byte bound"
    return outcomes, failure, f"source={src}; {desc}"


def load_corpus() -> tuple[list[tuple[str, bytes]], dict]:
    corpus = [(n, (VALID / f"{n}.safetensors").read_bytes()) for n in valid_names()]
    known = {n: {t["name"]: t for t in expected(n)["tensors"]} for n in valid_names()}
    return corpus, known


def limit_address_space(extra_bytes: int) -> None:
    """Backstop: cap the address space at the current size plus ``extra_bytes``."""
    with open("/proc/self/statm") as f:
        vm = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra_bytes, vm + extra_bytes))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--stop", type=int, default=0)
    ap.add_argument("--case", type=int, help="run one case and print it (reproduction)")
    ap.add_argument("--rlimit-mb", type=int, default=1024, help="address-space headroom above start-up size")
    args = ap.parse_args()
    corpus, known = load_corpus()
    signal.signal(signal.SIGALRM, _alarm)
    tracemalloc.start(1)
    with tempfile.TemporaryDirectory(prefix="lotavec-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as wd:
        if args.case is not None:
            outcomes, failure, desc = run_case(args.seed, args.case, corpus, known, wd)
            sys.stdout.write(f"case {args.case}: {desc}\noutcomes: {outcomes}\n{failure or 'no failure'}\n")
            return
        limit_address_space(args.rlimit_mb << 20)
        counts: Counter = Counter()
        failures = []
        for i in range(args.start, args.stop):
            outcomes, failure, desc = run_case(args.seed, i, corpus, known, wd)
            counts.update(outcomes)
            if failure is not None:
                failures.append({"case": i, "mutation": desc, "failure": failure})
                if len(failures) >= 20:
                    break
        sys.stdout.write(json.dumps({"cases": i + 1 - args.start, "outcomes": counts, "failures": failures}))


if __name__ == "__main__":
    main()
