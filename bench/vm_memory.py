"""Why bench_merge backs free memory before each run: this VM's cost of touching new memory.

The copy floor of ``bench_merge.py`` (read every tensor of a base model, write it into a new
folder, no fsync) is timed in a fresh process, interleaved ``--repeat`` times, under three
conditions:

* **hot**: started right after the previous copy's output was deleted (its freed pages are
  still backed by the host);
* **idle**: started after ``--idle`` seconds of sleep (the VM has handed freed memory back to
  its host by then: virtio-balloon free page reporting);
* **idle + backed**: the same sleep, then ``back_free_memory()`` (``_models.BACK_ENV``) right
  before the timed section, as every ``bench_merge`` run does.

It also prints whether this machine's balloon device offers free page reporting.

Usage: ``./dev bench vm_memory [--model llama1b] [--repeat 3] [--idle 6]``
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import BACK_ENV, base_dir, folder_bytes, python_snippet, run_measured, warm  # noqa: E402
from bench_merge import _COPY  # noqa: E402

_REPORTING_BIT = 5  # VIRTIO_BALLOON_F_REPORTING


def reporting() -> str:
    feats = glob.glob("/sys/bus/virtio/drivers/virtio_balloon/virtio*/features")
    if not feats:
        return "no virtio balloon device"
    bits = Path(feats[0]).read_text().strip()
    on = len(bits) > _REPORTING_BIT and bits[_REPORTING_BIT] == "1"
    return f"virtio balloon free page reporting {'on' if on else 'off'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="llama1b")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--idle", type=float, default=6.0)
    a = ap.parse_args()
    base = base_dir(a.model)
    argv = python_snippet(_COPY) + [str(base)]
    back = str(int(1.5 * folder_bytes(base)) + (512 << 20))
    runs: dict[str, list[float]] = {"hot": [], "idle": [], "idle + backed": []}
    with tempfile.TemporaryDirectory(prefix="vm-memory-", dir=Path(__file__).parent / "out") as tmp:
        out = Path(tmp) / "copy"
        for _ in range(a.repeat):
            for cond in runs:
                os.sync()
                warm([base])
                if cond != "hot":
                    time.sleep(a.idle)
                env = {BACK_ENV: back} if cond == "idle + backed" else {BACK_ENV: "0"}
                runs[cond].append(run_measured(argv + [str(out)], env=env).work)
                shutil.rmtree(out, ignore_errors=True)
    print(f"{reporting()}; copy floor of {a.model} ({folder_bytes(base) / 1e9:.2f} GB), seconds per run:")
    for cond, xs in runs.items():
        print(f"  {cond:>14}: " + ", ".join(f"{x:.2f}" for x in xs) + f"  (best {min(xs):.2f})")


if __name__ == "__main__":
    main()
