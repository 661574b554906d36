"""Fuzz the ticket reader at scale with the structured mutator of ``tests/format/fuzz_worker.py``.

Each case is one deterministic mutant (``fuzz_worker.make_case(seed, i)``: bit flips, overwrites,
truncations, splices, header-length edits, structured and textual header JSON edits, stream edits
with recomputed crc32, oversized counts) of a valid fixture, pushed through:

* open + ``TicketFile.verify`` (every chunk decoded, streaming),
* ``load_ticket`` + per-tensor ``info`` + ``TicketTensor.apply_to`` on a matching base, weight 1 and 0.5
  (``fuzz_worker.exercise``),
* ``lotavec.report.ticket_report`` (what ``lotavec inspect`` prints) and ``Ticket.indices``.

A case fails on any exception that is not a ``LotavecError``, on more than ``--cpu-limit`` CPU
seconds (ITIMER_PROF: robust to a loaded machine), on a traced allocation peak above 64 MiB (the
fixtures are a few KB; whole-tensor decodes are capped at 16 MiB), and a worker fails if it
leaks file descriptors or does not finish its slice within ``--slice-timeout`` wall seconds
(a hang in C code). Workers run under an address-space rlimit.

Usage:
    .venv/bin/python campaign/fuzz.py --cases 100000 --workers 2 [--coverage]
    .venv/bin/python campaign/fuzz.py --seed S --case N        # reproduce one case
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FORMAT_TESTS, PYTHON, ROOT, Row, finish  # noqa: E402

SEED = 20260701
MEMORY_LIMIT_BYTES = 64 << 20
FORMAT_DIR = str(ROOT / "lotavec" / "format")


class CpuLimit(BaseException):
    """Raised from the profiling timer: a case used more CPU time than allowed."""


def _on_prof(signum, frame):
    raise CpuLimit("case exceeded its CPU-time limit")


def exercise_full(path: str, known: dict) -> list[str]:
    """``fuzz_worker.exercise`` (verify, info, apply) plus ``ticket_report`` and ``indices``."""
    import fuzz_worker as fw

    from lotavec.errors import LotavecError
    from lotavec.report import ticket_report
    from lotavec.ticket import load_ticket

    outcomes = fw.exercise(path, known)
    try:
        with load_ticket(path, max_tensor_bytes=fw.MAX_TENSOR_BYTES) as t:
            rep = ticket_report(t)
            json.dumps(rep, default=str)
            for name in t.names:
                if t.info(name)["nnz"] * 8 <= fw.MAX_TENSOR_BYTES:
                    t.indices(name)
        outcomes.append("ok")
    except LotavecError as e:
        outcomes.append(type(e).__name__)
    return outcomes


def run_case(seed: int, i: int, corpus, known, workdir: str, cpu_limit: float) -> dict:
    """One mutant: outcomes, failure text (or None), CPU seconds, traced peak bytes, description."""
    import fuzz_worker as fw

    try:
        src, data, desc = fw.make_case(seed, i, corpus)
    except Exception as e:  # noqa: BLE001 - a mutator bug in the harness, not a reader finding
        return {"outcomes": [], "failure": None, "cpu": 0.0, "peak": 0, "desc": "", "mutator_error": repr(e)}
    path = os.path.join(workdir, f"case{i}.safetensors")
    with open(path, "wb") as f:
        f.write(data)
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    c0 = time.process_time()
    signal.setitimer(signal.ITIMER_PROF, cpu_limit)
    failure, outcomes = None, []
    try:
        outcomes = exercise_full(path, known.get(src, {}))
    except CpuLimit:
        failure = f"hang: more than {cpu_limit} CPU seconds"
    except BaseException:  # noqa: BLE001 - anything but a LotavecError is a finding
        failure = traceback.format_exc(limit=8)
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        os.unlink(path)
    cpu = time.process_time() - c0
    peak = tracemalloc.get_traced_memory()[1] - before
    if failure is None and peak > MEMORY_LIMIT_BYTES:
        failure = f"traced allocation peak {peak} bytes, above {MEMORY_LIMIT_BYTES}"
    return {"outcomes": outcomes, "failure": failure, "cpu": cpu, "peak": peak, "desc": f"source={src}; {desc}"}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def worker(args) -> None:
    """Run cases [start, stop) and print one JSON report."""
    cov = None
    if args.coverage:
        import coverage

        cov = coverage.Coverage(data_file=args.coverage, data_suffix=True, source=[str(ROOT / "lotavec")])
        cov.start()
    import fuzz_worker as fw

    corpus, known = fw.load_corpus()
    exercise_full(str(ROOT / "fixtures" / "valid" / "mask_codecs.safetensors"), {})  # warm imports
    signal.signal(signal.SIGPROF, _on_prof)
    tracemalloc.start(1)
    fds0 = _open_fds()
    counts: Counter = Counter()
    failures, max_cpu, max_peak = [], 0.0, 0
    mutator_errors: list[int] = []
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="lotavec-campaign-fuzz-", dir=shm) as wd:
        if args.case is not None:
            r = run_case(args.seed, args.case, corpus, known, wd, args.cpu_limit)
            print(f"case {args.case}: {r['desc']}\noutcomes: {r['outcomes']}\n{r['failure'] or 'no failure'}")
            return
        fw.limit_address_space(args.rlimit_mb << 20)
        for i in range(args.start, args.stop):
            r = run_case(args.seed, i, corpus, known, wd, args.cpu_limit)
            if "mutator_error" in r:
                mutator_errors.append(i)
                continue
            counts.update(r["outcomes"])
            max_cpu, max_peak = max(max_cpu, r["cpu"]), max(max_peak, r["peak"])
            if r["failure"] is not None:
                failures.append({"case": i, "mutation": r["desc"], "failure": r["failure"]})
    if cov is not None:
        cov.stop()
        cov.save()
    leaked = _open_fds() - fds0
    print(json.dumps({"cases": args.stop - args.start - len(mutator_errors), "mutator_errors": mutator_errors,
                      "outcomes": counts, "failures": failures[:20],
                      "n_failures": len(failures), "max_cpu_s": max_cpu, "max_peak_bytes": max_peak,
                      "fd_leak": leaked, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def run_parallel(cases: int, workers: int, seed: int, *, slice_size: int = 2000, cpu_limit: float = 2.0,
                 slice_timeout: float = 900.0, coverage_file: str | None = None, start: int = 0) -> dict:
    """Run ``cases`` mutants in slices on ``workers`` processes; aggregated report."""
    slices = [(a, min(a + slice_size, start + cases)) for a in range(start, start + cases, slice_size)]
    problems: list[str] = []

    def one(sl):
        a, b = sl
        cmd = [PYTHON, __file__, "--worker", "--seed", str(seed), "--start", str(a), "--stop", str(b),
               "--cpu-limit", str(cpu_limit)]
        if coverage_file:
            cmd += ["--coverage-file", coverage_file]
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=slice_timeout, cwd=ROOT)
        except subprocess.TimeoutExpired:
            return {"error": f"slice {a}..{b} ran over {slice_timeout} s wall (hang in C code?)"}
        if p.returncode != 0:
            return {"error": f"slice {a}..{b} exited {p.returncode}: {p.stderr[-2000:]}"}
        rep = json.loads(p.stdout.strip().splitlines()[-1])
        rep["wall"] = time.perf_counter() - t0
        return rep

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        reports = list(ex.map(one, slices))
    wall = time.perf_counter() - t0
    total: Counter = Counter()
    failures: list[dict] = []
    agg = {"cases": 0, "mutator_errors": [], "max_cpu_s": 0.0, "max_peak_bytes": 0, "fd_leak": 0, "maxrss_kb": 0, "n_failures": 0}
    for r in reports:
        if "error" in r:
            problems.append(r["error"])
            continue
        total.update(r["outcomes"])
        failures += r["failures"]
        agg["cases"] += r["cases"]
        agg["n_failures"] += r["n_failures"]
        agg["mutator_errors"] += r["mutator_errors"]
        for k in ("max_cpu_s", "max_peak_bytes", "maxrss_kb"):
            agg[k] = max(agg[k], r[k])
        agg["fd_leak"] = max(agg["fd_leak"], r["fd_leak"])
    return {**agg, "outcomes": dict(total), "failures": failures, "problems": problems, "wall_s": wall, "seed": seed}


def coverage_percent(data_file: str) -> tuple[float, dict[str, float]]:
    """Combine worker coverage data; line coverage of lotavec/format (total and per file)."""
    import coverage

    cov = coverage.Coverage(data_file=data_file)
    cov.combine(data_paths=[str(Path(data_file).parent)], strict=True)
    cov.save()
    per = {}
    for f in sorted(Path(FORMAT_DIR).glob("*.py")):
        try:
            _, stmts, _, missing, _ = cov.analysis2(str(f))
        except coverage.CoverageException:
            continue
        per[f.name] = 100.0 * (len(stmts) - len(missing)) / len(stmts) if stmts else 100.0
    import io

    total = cov.report(include=[f"{FORMAT_DIR}/*"], file=io.StringIO())
    return total, per


def summarize(rep: dict, label: str) -> Row:
    """The result row of a fuzz run."""
    ok = not rep["problems"] and rep["n_failures"] == 0 and rep["fd_leak"] <= 0
    outs = rep["outcomes"]
    errors = sum(v for k, v in outs.items() if k != "ok")
    text = (f"{rep['cases']:,} cases ({rep['wall_s']:.0f} s wall), {outs.get('ok', 0):,} successful stages, "
            f"{errors:,} LotavecError stages ({', '.join(f'{k} {v}' for k, v in sorted(outs.items()) if k != 'ok')}); "
            f"{rep['n_failures']} other outcomes/hangs/over-memory; slowest case {rep['max_cpu_s']:.2f} CPU s; "
            f"largest traced peak {rep['max_peak_bytes'] / 2**20:.1f} MiB (limit 64); worker max RSS "
            f"{rep['maxrss_kb'] / 1024:.0f} MiB; fd leak {rep['fd_leak']}")
    if rep["mutator_errors"]:
        text += (f"; {len(rep['mutator_errors'])} seeds skipped: the harness's mutator raised before producing "
                 f"a file (cases {rep['mutator_errors'][:5]})")
    if rep["problems"]:
        text += "; PROBLEMS: " + " / ".join(rep["problems"][:3])
    if rep["failures"]:
        f = rep["failures"][0]
        text += (f"; first failure: seed {rep['seed']} case {f['case']} ({f['mutation'][:200]}): "
                 f"{f['failure'].strip().splitlines()[-1]}")
    return Row(label, text, ok, {k: v for k, v in rep.items() if k != "failures"} | {"failures": rep["failures"][:5]})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--cpu-limit", type=float, default=2.0, help="CPU seconds per case")
    ap.add_argument("--slice-timeout", type=float, default=900.0)
    ap.add_argument("--coverage", action="store_true", help="measure line coverage of lotavec/format")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--stop", type=int, default=0)
    ap.add_argument("--case", type=int, default=None, help="reproduce one case")
    ap.add_argument("--coverage-file", dest="coverage", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--rlimit-mb", type=int, default=2048)
    args = ap.parse_args()
    if str(FORMAT_TESTS) not in sys.path:
        sys.path.insert(0, str(FORMAT_TESTS))
    if args.worker or args.case is not None:
        worker(args)
        return 0
    rows = []
    with tempfile.TemporaryDirectory(prefix="lotavec-cov-") as cd:
        cov_file = os.path.join(cd, ".coverage") if args.coverage else None
        rep = run_parallel(args.cases, args.workers, args.seed, cpu_limit=args.cpu_limit,
                           slice_timeout=args.slice_timeout, coverage_file=cov_file)
        rows.append(summarize(rep, "fuzz: structured mutator"))
        if cov_file:
            total, per = coverage_percent(cov_file)
            rows.append(Row("fuzz: coverage of lotavec/format", f"{total:.1f}% of lines (" +
                            ", ".join(f"{k} {v:.0f}%" for k, v in per.items()) + ")", True, {"per_file": per}))
    return finish(rows)


if __name__ == "__main__":
    sys.exit(main())
