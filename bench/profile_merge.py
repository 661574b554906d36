"""Where a merge's time goes: per-stage CPU seconds and the writer/compute timeline (issue 4).

For one model of ``_models.py`` and its two 10 % tickets, in this process (inputs warmed first):

* **decode**: decoding every ticket tensor of both tickets in C (one thread, ``lv_ctx_decode``:
  checksums, zstd, mask checks, values; masks left gap-coded), as the merge does;
* **kernel**: the merge of every touched tensor from the decoded tickets, one thread, its output
  written to ``/dev/null`` through a sink (``sum``: ``engine._gapped_sum``; ``ties``: the trims,
  ``engine._gapped_trims``, then the consensus, ``engine._consensus_native``, reported apart);
* **merge on C threads**: one real ``lotavec.merge`` (all cores, no fsync) as it runs by default,
  the whole merge on C threads (``engine._MergeJobs``): wall and CPU;
* **merge on the thread pool**: the same with the job table turned off (what merges that need
  Python per tensor run), with its stages timed and summed over the worker threads: the base
  fingerprint checks, decoding, merging (``_coded_sum``/``_gapped_sum``/``_gapped_trims`` +
  ``_consensus_native``, which include the compiled kernels' own writes of the output), and the
  writes of whole arrays (``ShardedWriter.write_at``: untouched tensors, numpy paths).

Usage: ``./dev bench profile_merge [--model llama1b] [--method sum|ties]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import base_dir, ticket_path, warm  # noqa: E402


def params_for(method: str):
    from lotavec.merge import MergeParams

    return MergeParams() if method == "sum" else MergeParams(method="ties", density=0.05, semantics="mergekit")


def stage_cpu(model: str, method: str) -> dict[str, float]:
    import os

    import numpy as np

    from lotavec import native
    from lotavec.merge import engine
    from lotavec.models import open_model
    from lotavec.ticket import load_ticket

    src = open_model(base_dir(model), role="base")
    tks = [load_ticket(ticket_path(model, s)) for s in (1, 2)]
    names = [n for n in src.names() if any(n in t for t in tks)]
    params = params_for(method)
    fd = os.open(os.devnull, os.O_WRONLY)
    sink = engine.Sink(fd, 0, np.empty(native.WINDOW * 4, np.uint8))
    lib = native.kernels("codec")
    ctx = lib.lv_ctx_new()
    if not ctx:
        sys.exit("the compiled decoders need libzstd.so.1")
    addrs = np.zeros(5, np.int64)
    c0 = time.process_time()
    for n in names:  # decode only, in C, as the merge does
        for t in tks:
            if n in t:
                rec, blob = t._file.chunk_records(n)
                e = t._file.entry(n)
                width = 4 if e.dtype == "F32" else 2
                if lib.lv_ctx_decode(ctx, native.ptr(blob), native.ptr(rec), rec.shape[0], e.nnz, width,
                                     int(e.dtype == "BF16"), int(e.values == "raw"), native.ptr(addrs)):
                    sys.exit(f"tensor {n!r} was not decoded in C")
    decode = time.process_time() - c0
    lib.lv_ctx_free(ctx)
    kernel = trims = 0.0
    buffers = engine._Buffers(keep=8)
    for n in names:  # the kernel alone (decoding again, not counted)
        dtype = src.info(n)[0]
        flat = src.array(n).reshape(-1)
        if method == "sum":
            coded = engine._gap_parts(n, dtype, tks, params)
            k0 = time.process_time()
            engine._gapped_sum(native.kernels("codec"), n, flat, dtype, coded, sink)
        else:
            lib, coded, used = native.kernels("codec"), engine._trim_gap_parts(n, dtype, tks, params), []
            k0 = time.process_time()
            prep = engine._gapped_trims(lib, n, flat, dtype, coded, len(tks), params, buffers, used)
            trims += time.process_time() - k0
            engine._consensus_native(lib, n, flat, dtype, prep, params, buffers, sink)
            for b in used:
                buffers.give(b)
        kernel += time.process_time() - k0
        src.release(n)
    os.close(fd)
    src.close()
    return {"decode": decode, "kernel": kernel, "trims": trims, "entries": sum(t.nnz for t in tks)}


def timed_merge(model: str, method: str, patches: list[tuple[object, str, object]]) -> tuple[float, float]:
    """Wall and CPU seconds of one ``lotavec.merge`` (no fsync) with ``patches`` ``(owner, attribute,
    value)`` set for its duration."""
    import lotavec

    # restored from the owner's own namespace (a class keeps its classmethods as they were)
    saved = [(owner, attr, vars(owner).get(attr, getattr(owner, attr))) for owner, attr, _ in patches]
    for owner, attr, value in patches:
        setattr(owner, attr, value)
    out = Path(tempfile.mkdtemp(prefix="profile-merge-", dir=Path(__file__).parent / "out")) / "merged"
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        lotavec.merge(base_dir(model), [ticket_path(model, s) for s in (1, 2)], out, params=params_for(method),
                      fsync=False)
        return time.perf_counter() - t0, time.process_time() - c0
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)
        shutil.rmtree(out.parent, ignore_errors=True)


def as_run(model: str, method: str) -> dict[str, float]:
    """One merge as it runs by default (the C threads where the job table applies)."""
    import lotavec.merge.engine as eng

    ran, real = [], eng._MergeJobs.run
    wall, cpu = timed_merge(model, method, [(eng._MergeJobs, "run",
                                              lambda self, *a, **k: ran.append(1) or real(self, *a, **k))])
    return {"wall": wall, "cpu": cpu, "threads": bool(ran)}


def timeline(model: str, method: str) -> dict[str, float]:
    """One merge on the thread pool (job table off), its stages timed and summed over the workers."""
    import lotavec.hfwriter as hw
    import lotavec.merge.engine as eng
    import lotavec.ticket as tk

    busy = {"check": 0.0, "decode": 0.0, "compute": 0.0, "write": 0.0}
    lock = threading.Lock()

    def timed(kind, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    busy[kind] += time.perf_counter() - t0
        return wrapper

    stages = [(eng._BaseChecks, "check", "check"), (tk.Ticket, "tensor", "decode"), (tk.Ticket, "gap_coded", "decode"),
              (eng, "merge_tensor_values", "compute"), (eng, "_coded_sum", "compute"), (eng, "_gapped_sum", "compute"),
              (eng, "_gapped_trims", "compute"), (eng, "_consensus_native", "compute"),
              (hw.ShardedWriter, "write_at", "write")]
    patches = [(owner, attr, timed(kind, getattr(owner, attr))) for owner, attr, kind in stages]
    patches.append((eng._MergeJobs, "plan", classmethod(lambda cls, *a, **k: None)))  # the thread pool
    wall, cpu = timed_merge(model, method, patches)
    return {"wall": wall, "cpu": cpu, **busy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama1b", choices=["smollm2", "llama1b"])
    ap.add_argument("--method", default="sum", choices=["sum", "ties"])
    args = ap.parse_args()
    warm([base_dir(args.model), *(ticket_path(args.model, s) for s in (1, 2))])
    st = stage_cpu(args.model, args.method)
    run = as_run(args.model, args.method)
    tl = timeline(args.model, args.method)
    print(f"{args.model} {args.method}, two 10 % tickets ({st['entries']:,} stored entries)")
    print(f"decode in C, one thread: {st['decode']:.2f} s CPU ({st['decode'] / st['entries'] * 1e9:.1f} ns per entry)")
    trims = f" (trims {st['trims']:.2f} s, consensus {st['kernel'] - st['trims']:.2f} s)" if args.method == "ties" else ""
    print(f"merge kernel from decoded tickets, one thread, output to /dev/null: {st['kernel']:.2f} s CPU{trims}")
    where = "on C threads (job table)" if run["threads"] else "on the thread pool (no job table applies)"
    print(f"lotavec.merge (no fsync, all cores) {where}: wall {run['wall']:.2f} s, CPU {run['cpu']:.2f} s")
    print(f"lotavec.merge on the thread pool (job table off): wall {tl['wall']:.2f} s, CPU {tl['cpu']:.2f} s; "
          f"summed over the workers: base fingerprints {tl['check']:.2f} s, decode {tl['decode']:.2f} s, "
          f"merge + its own writes {tl['compute']:.2f} s, array writes (write_at) {tl['write']:.2f} s")


if __name__ == "__main__":
    main()
