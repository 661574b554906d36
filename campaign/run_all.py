"""Run the whole reliability campaign, one script after the other, collecting every row.

Rows go to ``--results`` (JSON lines, one per row) and each script's output to ``--logs``. The
table in docs/RELIABILITY.md is written from these results by hand, with the command of each row.

Usage:
    .venv/bin/python campaign/run_all.py [--results results.jsonl] [--logs DIR] [--only kill,hostile]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (name, arguments) of each campaign script, in running order.
STEPS = [
    ("fuzz", ["fuzz.py", "--cases", "100100", "--workers", "2", "--coverage"]),
    ("atheris", ["fuzz_atheris.py", "--seconds", "600"]),
    ("hostile", ["hostile.py", "--max-header"]),
    ("kill", ["kill.py", "--kills", "50", "--exec-kills", "5"]),
    ("wrong_base", ["wrong_base.py"]),
    ("determinism", ["determinism.py"]),
    ("concurrency", ["concurrency.py", "--readers", "4", "--seconds", "20"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=Path("campaign-results.jsonl"))
    ap.add_argument("--logs", type=Path, default=Path("campaign-logs"))
    ap.add_argument("--only", default="", help="comma-separated step names")
    args = ap.parse_args()
    only = {s for s in args.only.split(",") if s}
    args.logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LOTAVEC_CAMPAIGN_RESULTS=str(args.results.absolute()))
    status = 0
    for name, argv in STEPS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        with open(args.logs / f"{name}.log", "w") as log:
            rc = subprocess.call([sys.executable, str(HERE / argv[0]), *argv[1:]], stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f"{name}: exit {rc} in {time.perf_counter() - t0:.0f} s", flush=True)
        status |= rc != 0
    return status


if __name__ == "__main__":
    sys.exit(main())
