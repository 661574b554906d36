"""Coverage-guided fuzzing of the ticket reader with atheris (libFuzzer for Python).

The target writes each input to a file and runs the same stages as ``campaign/fuzz.py``
(open + verify, load + info + apply on a matching base, ``ticket_report``, indices). Any exception
other than a ``LotavecError``, a traced allocation peak above 64 MiB, or an input running over
``-timeout`` seconds is a crash (libFuzzer writes the input to ``crash-*`` / ``timeout-*``).
Mutations mix libFuzzer's own byte-level ones with the structured mutators of
``tests/format/fuzz_worker.py``; the seed corpus is ``fixtures/valid/``.

After the run the final corpus is replayed under coverage.py to report line coverage of
``lotavec/format``.

Usage:
    .venv/bin/pip install atheris coverage      # dev tools, not dependencies
    .venv/bin/python campaign/fuzz_atheris.py --seconds 600 [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FIXTURES, FORMAT_TESTS, PYTHON, ROOT, Row, finish  # noqa: E402

if str(FORMAT_TESTS) not in sys.path:
    sys.path.insert(0, str(FORMAT_TESTS))

MEMORY_LIMIT_BYTES = 64 << 20


def _known_all() -> dict:
    import fuzz_worker as fw

    _, known = fw.load_corpus()
    merged: dict = {}
    for per in known.values():
        merged.update(per)
    return merged


def target_main(argv: list[str]) -> None:
    """libFuzzer entry (runs in the child that atheris drives)."""
    import random
    import tracemalloc

    import atheris

    with atheris.instrument_imports(include=["lotavec"]):
        import fuzz as campaign_fuzz
        import fuzz_worker as fw

        import lotavec.format  # noqa: F401
        import lotavec.report  # noqa: F401
        import lotavec.ticket  # noqa: F401
    corpus, _ = fw.load_corpus()
    blobs = [d for _, d in corpus]
    known = _known_all()
    path = os.environ.get("LOTAVEC_ATHERIS_INPUT") or os.path.join(tempfile.gettempdir(), f"lotavec-atheris-{os.getpid()}.st")
    tracemalloc.start(1)

    def test_one(data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        campaign_fuzz.exercise_full(path, known)
        peak = tracemalloc.get_traced_memory()[1] - before
        if peak > MEMORY_LIMIT_BYTES:
            raise MemoryError(f"traced allocation peak {peak} bytes above {MEMORY_LIMIT_BYTES}")

    weights = [w for _, w in fw.MUTATIONS]
    fns = [f for f, _ in fw.MUTATIONS]

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        r = random.Random(seed)
        if data and r.random() < 0.5:
            try:
                out, _ = r.choices(fns, weights)[0](r, data, blobs)
                if len(out) <= max_size:
                    return out
            except Exception:  # noqa: BLE001 - a structured mutator may not apply to garbage
                pass
        return atheris.Mutate(data, max_size)

    atheris.Setup(argv, test_one, custom_mutator=mutate)
    atheris.Fuzz()


def replay_main(paths: list[str]) -> None:
    """Run every input file through the target (for coverage); prints how many were replayed."""
    import fuzz as campaign_fuzz

    from lotavec.errors import LotavecError

    known = _known_all()
    n = 0
    for d in paths:
        for p in sorted(Path(d).iterdir()) if Path(d).is_dir() else [Path(d)]:
            tmp = Path(tempfile.gettempdir()) / f"lotavec-replay-{os.getpid()}.safetensors"
            shutil.copyfile(p, tmp)
            try:
                campaign_fuzz.exercise_full(str(tmp), known)
            except LotavecError:
                pass
            finally:
                tmp.unlink()
            n += 1
    print(f"replayed {n}")


def run(seconds: int, workdir: Path, *, timeout_s: int = 10, rss_mb: int = 2048) -> list[Row]:
    """Fuzz for ``seconds``; the result rows (fuzzing, and coverage of the final corpus)."""
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for f in (FIXTURES / "valid").glob("*.safetensors"):
        shutil.copyfile(f, corpus / f.name)
    artifacts = workdir / "artifacts"
    artifacts.mkdir(exist_ok=True)
    cmd = [PYTHON, __file__, "--target", str(corpus), f"-max_total_time={seconds}", f"-timeout={timeout_s}",
           f"-rss_limit_mb={rss_mb}", "-max_len=65536", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"]
    env = dict(os.environ, LOTAVEC_ATHERIS_INPUT=str(workdir / "input.safetensors"))  # removed with the workdir
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 600, env=env)
    log = p.stdout + p.stderr
    (workdir / "atheris.log").write_text(log)
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    execs = int(runs[-1]) if runs else max((int(x) for x in re.findall(r"^#(\d+)", log, re.M)), default=0)
    covm = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)/", log)
    crashes = sorted(a.name for a in artifacts.iterdir())
    ok = p.returncode == 0 and not crashes
    detail = f"{execs:,} executions in {seconds} s"
    if covm:
        detail += f"; libFuzzer edges cov {covm[-1][0]}, features {covm[-1][1]}, corpus {covm[-1][2]} inputs"
    detail += f"; crashes/timeouts/over-memory: {len(crashes)}"
    if crashes:
        detail += f" ({', '.join(crashes[:3])}; reproduce: {PYTHON} {__file__} --target {artifacts}/{crashes[0]})"
        tail = [line for line in log.splitlines() if "Error" in line or "Traceback" in line]
        detail += f"; {tail[-1] if tail else 'see atheris.log'}"
    rows = [Row("fuzz: atheris coverage-guided", detail, ok, {"returncode": p.returncode, "log_tail": log[-3000:]})]
    # Coverage of the final corpus (plus any crash inputs) replayed under coverage.py.
    data = workdir / ".coverage"
    rp = subprocess.run([PYTHON, "-m", "coverage", "run", f"--data-file={data}", f"--source={ROOT / 'lotavec'}",
                         __file__, "--replay", str(corpus), str(artifacts)], capture_output=True, text=True, cwd=ROOT)
    rep = subprocess.run([PYTHON, "-m", "coverage", "report", f"--data-file={data}",
                          f"--include={ROOT / 'lotavec' / 'format'}/*"], capture_output=True, text=True, cwd=ROOT)
    m = re.search(r"^TOTAL.*?(\d+)%\s*$", rep.stdout, re.M)
    per = {Path(line.split()[0]).name: line.split()[-1] for line in rep.stdout.splitlines() if "/format/" in line}
    rows.append(Row("fuzz: atheris corpus coverage of lotavec/format",
                    f"{m.group(1) if m else '?'}% of lines over {rp.stdout.strip()} corpus inputs (" +
                    ", ".join(f"{k} {v}" for k, v in per.items()) + ")", rp.returncode == 0, {"report": rep.stdout}))
    return rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--target":
        target_main([sys.argv[0], *sys.argv[2:]])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--replay":
        replay_main(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    try:
        import atheris  # noqa: F401
    except ImportError:
        return finish([Row("fuzz: atheris coverage-guided", "atheris is not installed (.venv/bin/pip install atheris)", False)])
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return finish(run(args.seconds, args.workdir))
    with tempfile.TemporaryDirectory(prefix="lotavec-atheris-") as wd:
        return finish(run(args.seconds, Path(wd)))


if __name__ == "__main__":
    sys.exit(main())
