"""Parallel decode: ``TicketFile.read_tensor`` decodes chunks on a thread pool; the result must
equal the serial decode. Runs in a subprocess because a data race in a C extension can crash
(a shared zstandard decompressor did: wrong data, spurious errors, segfaults; fixed in 6110d77)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from format_helpers import ROOT

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from lotavec.format import TicketFile, TicketFileWriter

    path = sys.argv[1]
    rng = np.random.default_rng(0)
    numel = 1 << 21
    idx = np.flatnonzero(rng.random(numel) < 1 / 3)
    payload = rng.integers(0, 0x7F00, idx.size).astype("<u2")
    with TicketFileWriter(path, chunk_elements=1 << 16, threads=1) as w:
        w.add("w", (numel,), "BF16", idx, "raw", payload)
    with TicketFile(path) as tf:
        i0, p0 = tf.read_tensor("w", threads=1)
        assert np.array_equal(i0, idx) and np.array_equal(p0, payload)
        stop = time.monotonic() + 4.0
        runs = 0
        while time.monotonic() < stop:
            i, p = tf.read_tensor("w", threads=8)
            assert np.array_equal(i, idx) and np.array_equal(p, payload), f"wrong data on run {runs}"
            runs += 1
    print("ok", runs)
    """
)


def test_threaded_decode_equals_serial_decode(tmp_path):
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "t.safetensors")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, f"rc={r.returncode}\n{r.stderr[-2000:]}"
    assert r.stdout.startswith("ok ")
