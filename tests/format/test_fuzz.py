"""CI fuzz test: 10,000 seeded mutants of the valid fixtures (bit flips, byte overwrites,
truncations, splices, header-length edits, structured and textual header JSON edits, stream edits
with recomputed checksums, oversized counts) go through open, inspect, verify and apply.

Every outcome must be success or a ``LotavecError``; no other exception, no case over 2 s, no case
whose traced allocations exceed 64 MiB (fixtures are a few KB), no crash. Work runs in two
subprocesses (see ``fuzz_worker.py``) under an address-space rlimit. On failure the message gives
the seed and case; reproduce with ``.venv/bin/python tests/format/fuzz_worker.py --seed S --case N``.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tracemalloc

import pytest
from format_helpers import ROOT

from lotavec.errors import InvalidHeaderError, TruncatedFileError
from lotavec.format import TicketFile

SEED = 20260601
CASES = 10_000
WORKERS = 2
WORKER = ROOT / "tests" / "format" / "fuzz_worker.py"


def test_fuzz_mutated_tickets_only_raise_lotavec_errors():
    step = CASES // WORKERS
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), "--seed", str(SEED), "--start", str(k * step), "--stop", str((k + 1) * step)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for k in range(WORKERS)
    ]
    reports, problems = [], []
    for k, p in enumerate(procs):
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            problems.append(f"worker {k} (cases {k * step}..{(k + 1) * step}) hung in C code; rerun cases one by one")
            continue
        if p.returncode != 0:
            problems.append(f"worker {k} (seed {SEED}, cases {k * step}..{(k + 1) * step}) exited {p.returncode}:\n{err[-3000:]}")
            continue
        reports.append(json.loads(out))
    assert not problems, "\n".join(problems)
    failures = [f for r in reports for f in r["failures"]]
    assert not failures, "\n\n".join(
        f"seed {SEED} case {f['case']}: {f['mutation']}\n{f['failure']}\nreproduce: "
        f".venv/bin/python tests/format/fuzz_worker.py --seed {SEED} --case {f['case']}" for f in failures[:5])
    assert sum(r["cases"] for r in reports) == CASES
    outcomes: dict[str, int] = {}
    for r in reports:
        for k, v in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    # The mutants must reach every layer: successes, and each kind of error the format defines.
    assert outcomes.get("ok", 0) > CASES // 4, outcomes
    for error in ("InvalidHeaderError", "TruncatedFileError", "CorruptTicketError", "ChecksumError",
                  "UnsupportedFeatureError", "UnsupportedVersionError", "LimitExceededError"):
        assert outcomes.get(error, 0) >= 10, (error, outcomes)


# --- regressions the fuzzer found (fixed in 6110d77) ----------------------------------------


def test_header_length_beyond_file_size_is_refused_without_allocating(tmp_path):
    p = tmp_path / "t.safetensors"
    p.write_bytes(struct.pack("<Q", 100 << 20) + b"{}")
    tracemalloc.start()
    try:
        with pytest.raises(TruncatedFileError):
            TicketFile(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"a 10-byte file made the reader allocate {peak} bytes"


def test_non_string_dtype_in_header_is_an_invalid_header(tmp_path):
    p = tmp_path / "t.safetensors"
    js = b'{"t":{"dtype":["U8"],"shape":[0],"data_offsets":[0,0]}}'
    p.write_bytes(struct.pack("<Q", len(js)) + js)
    with pytest.raises(InvalidHeaderError):
        TicketFile(p)
