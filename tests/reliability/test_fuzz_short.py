"""Short fuzz run of the campaign driver (``campaign/fuzz.py``): 1,500 mutants through open,
verify, inspect (``ticket_report``), indices and apply, in two worker processes.

It adds to ``tests/format/test_fuzz.py`` the report stage, a CPU-time (not wall-clock) per-case
limit, and the file-descriptor leak check; the campaign runs 100,000 cases with another seed.
"""

from __future__ import annotations

import fuzz

SEED = 20260702


def test_short_fuzz_run_only_raises_lotavec_errors():
    rep = fuzz.run_parallel(1500, 2, SEED, slice_size=750, cpu_limit=2.0, slice_timeout=240)
    assert not rep["problems"], rep["problems"]
    assert rep["n_failures"] == 0, rep["failures"][:3]
    assert rep["cases"] + len(rep["mutator_errors"]) == 1500
    assert rep["fd_leak"] <= 0, "the reader leaked file descriptors"
    assert rep["max_peak_bytes"] < fuzz.MEMORY_LIMIT_BYTES
    outs = rep["outcomes"]
    assert outs.get("ok", 0) > 400, outs
    for error in ("InvalidHeaderError", "CorruptTicketError", "TruncatedFileError", "ChecksumError"):
        assert outs.get(error, 0) >= 5, (error, outs)
