"""Benchmark: ticket extraction against the time to just read both models once (issue 3).

For each model pair (see ``_models.py``: SmolLM2-135M + a synthetic fine-tune, and a random
~1.1B-parameter sharded Llama + a synthetic fine-tune, each touching ~10 % of the candidates), in
one run and interleaved ``--repeat`` times, each in its own fresh process:

* **read floor**: open both folders (mmap, as extraction does) and copy every tensor of both
  once into a reusable buffer, releasing pages as it goes;
* **extract**: ``lotavec.extract(base, ft, out, density=D)`` (global scope, exact top-k).

Both files are read from a warm page cache: every safetensors file is read once before timing and
``mincore`` reports the resident fraction. Times are of the timed section inside each child
(interpreter start and imports of numpy/torch/transformers excluded, the same for both); the
best of the repeats is kept. Peak RSS is the child's ``ru_maxrss`` (mapped file pages included);
"own" is peak minus the RSS just before the timed section. The memory target of the issue is
``3 x largest candidate in float32 + 64 MiB`` beyond the inputs; the selected indices themselves
(8 bytes per selected entry) are shown beside it.

Usage: ``.venv/bin/python bench/bench_extract.py [--models smollm2,llama1b] [--density 0.1] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (  # noqa: E402
    MODEL_KINDS,
    base_dir,
    finetuned_dir,
    fmt_mb,
    folder_bytes,
    log,
    page_cache_fraction,
    python_snippet,
    run_measured,
    warm,
)

MiB = 1 << 20

# Both children import the same heavy modules before their timed section.
_IMPORTS = """
import numpy as np, torch, transformers
import transformers.core_model_loading, transformers.models.llama.modeling_llama
import lotavec.extraction
from lotavec.models import open_model
"""

_FLOOR = _IMPORTS + """
base, ft = sys.argv[1], sys.argv[2]
r0 = rss()
t, c = time.perf_counter(), time.process_time()
nbytes = 0
with open_model(base) as b, open_model(ft, role="fine-tuned") as f:
    buf = np.empty(max(b.numel(n) * 4 for n in b.names()), dtype=np.uint8)
    for src in (b, f):
        for n in src.names():
            a = src.array(n).reshape(-1).view(np.uint8)
            np.copyto(buf[: a.size], a)
            nbytes += a.size
            src.release(n)
report(work=time.perf_counter() - t, cpu=time.process_time() - c, base_rss=r0, bytes=nbytes)
"""

_EXTRACT = _IMPORTS + """
base, ft, out, density = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
r0 = rss()
start_sampler()
t, c = time.perf_counter(), time.process_time()
r = lotavec.extraction.extract(base, ft, out, density=density)
report(work=time.perf_counter() - t, cpu=time.process_time() - c, base_rss=r0, nnz=r.nnz,
       candidates=len(r.candidates), candidate_params=r.candidate_params,
       largest=max(r.numels.values()), ticket_bytes=os.path.getsize(out))
"""


def bench_pair(kind: str, density: float, repeat: int, tmp: Path) -> dict:
    base, ft = base_dir(kind), finetuned_dir(kind, 1)
    warm([base, ft])
    cached = page_cache_fraction([base, ft])
    floors, runs = [], []
    for i in range(repeat):  # interleaved: the machine is shared and its load drifts
        floors.append(run_measured(python_snippet(_FLOOR) + [str(base), str(ft)]))
        out = tmp / f"{kind}-{i}.lota"
        runs.append(run_measured(python_snippet(_EXTRACT) + [str(base), str(ft), str(out), str(density)]))
        out.unlink()
        log(f"{kind} #{i + 1}: floor {floors[-1].work:.2f} s, extract {runs[-1].work:.2f} s, "
            f"peak {fmt_mb(runs[-1].peak_rss)}")
    fl = min(floors, key=lambda m: m.work)
    ex = min(runs, key=lambda m: m.work)
    info = ex.extra
    largest = info["largest"]
    own = max(r.peak_rss - r.base_rss for r in runs)
    anon = max(r.extra["peak_anon"] - r.extra["anon_before"] for r in runs)
    file_pages = max(r.extra["peak_file"] - r.extra["file_before"] for r in runs)
    return {
        "kind": kind, "bytes": folder_bytes(base) + folder_bytes(ft), "cached": cached,
        "floor": fl.work, "floor_cpu": min(f.extra["cpu"] for f in floors), "extract": ex.work, "extract_cpu": min(r.extra["cpu"] for r in runs),
        "extract_wall": ex.wall, "floor_rss": max(f.peak_rss for f in floors),
        "peak": max(r.peak_rss for r in runs), "before": ex.base_rss, "own": own, "anon": anon,
        "file_pages": file_pages,
        "largest": largest, "bound": 3 * 4 * largest + 64 * MiB, "selection": 8 * info["nnz"],
        "nnz": info["nnz"], "candidate_params": info["candidate_params"], "ticket_bytes": info["ticket_bytes"],
        "floors": [f.work for f in floors], "extracts": [r.work for r in runs],
    }


def _kernels() -> str:
    from lotavec import native

    return "compiled (lotavec/_csrc/select.c)" if native.kernels("select") is not None else "numpy (LOTAVEC_NATIVE=0 or not built)"


def table(rows: list[dict], density: float, repeat: int) -> str:
    lines = [
        f"Extraction at density {density:g} (global top-k), best of {repeat} interleaved runs; "
        f"{datetime.date.today()}, {os.cpu_count()} cores, {platform.machine()}, load avg "
        f"{os.getloadavg()[0]:.1f} at the end; selection kernels: {_kernels()}.",
        "",
        "| pair | both models | page cache | read floor wall (CPU) | extract wall (CPU) | ratio wall | ratio CPU "
        "| selected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['bytes'] / 1e9:.2f} GB | {r['cached']:.0%} warm "
            f"| {r['floor']:.2f} s ({r['floor_cpu']:.2f} s) | {r['extract']:.2f} s ({r['extract_cpu']:.2f} s) "
            f"| **{r['extract'] / r['floor']:.2f}×** | {r['extract_cpu'] / r['floor_cpu']:.2f}× "
            f"| {r['nnz']:,} of {r['candidate_params']:,} |")
    lines += [
        "",
        "| pair | largest candidate (fp32) | bound 3×fp32+64 MiB | RSS before | peak RSS | own (peak − before) "
        "| anonymous own (sampled) | anon / bound | mapped file pages own (sampled) | selection if held (8 B/entry) "
        "| floor peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {fmt_mb(4 * r['largest'])} | {fmt_mb(r['bound'])} | {fmt_mb(r['before'])} "
            f"| {fmt_mb(r['peak'])} | {fmt_mb(r['own'])} | {fmt_mb(r['anon'])} | **{r['anon'] / r['bound']:.2f}** "
            f"| {fmt_mb(r['file_pages'])} | {fmt_mb(r['selection'])} | {fmt_mb(r['floor_rss'])} |")
    lines += ["", "Per-run seconds (floor / extract): " + "; ".join(
        f"{r['kind']}: " + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(r["floors"], r["extracts"])) for r in rows)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODEL_KINDS), help="comma-separated: smollm2, llama1b")
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-extract-", dir=Path(__file__).parent / "out") as tmp:
        for kind in a.models.split(","):
            rows.append(bench_pair(kind.strip(), a.density, a.repeat, Path(tmp)))
    print(table(rows, a.density, a.repeat))


if __name__ == "__main__":
    main()
