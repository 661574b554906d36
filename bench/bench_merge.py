"""Benchmark: merging two 10 % tickets, against mergekit and a plain streaming copy (issue 4).

For each model (see ``_models.py``: SmolLM2-135M and a random ~1.1B-parameter Llama), with two
synthetic fine-tunes each changing ~10 % of the candidate entries, and their lossless tickets
(``--all-changed``, so the fine-tuned folders are exactly the equivalent dense models), in one run
and interleaved ``--repeat`` times, each in its own fresh process:

* **copy floor**: open the base (mmap) and write every tensor out with lotavec's streaming sharded
  writer (no fsync), releasing pages as it goes: read every tensor, write it out;
* **copy floor --fsync**: the same, flushing the output to disk before renaming it into place, as
  lotavec's merge does by default (write-back started as tensors are written, then fsync): the
  floor of a durable copy. The "× floor, same fsync" column divides lotavec's default rows by it
  and the ``--no-fsync`` rows by the plain floor;
* **lotavec sum / ties**: ``lotavec.merge(base, [t1, t2], out, params=...)`` (``sum``: weights 1;
  ``ties``: density ``--ties-density``, mergekit semantics, per-tensor trim), all cores; by default
  lotavec fsyncs its output before renaming it into place; the ``--no-fsync`` rows do not (like
  the floor and mergekit);
* **mergekit task_arithmetic / ties**: ``mergekit.merge.run_merge`` on the base and the two dense
  fine-tunes with the same weights and density, CPU, default options (what ``mergekit-yaml`` runs).

Before every run the page cache is synced (no dirty pages of earlier outputs) and the inputs are
read once more (warm); the table's "cached" column is the smallest resident fraction seen. Each
output is deleted right after its run (in the first round, lotavec's `sum`/`ties` outputs are kept
until the mergekit output they are compared with exists): outputs left in the page cache put the
later runs under memory pressure, and their writes then pay for the kernel's reclaim. Times
are of the timed section inside each child (imports excluded for every tool), best of the
repeats; CPU is user+system time of the child's timed section (all threads), which other jobs on a
shared machine disturb less than wall time. Peak RSS is the child's ``ru_maxrss`` (anonymous memory
and mapped file pages). Inputs are read from a warm page cache (``mincore`` fraction shown). The
outputs of lotavec and mergekit are compared entry by entry (fraction of bf16 entries that differ).

mergekit is not a lotavec dependency: ``pip install --no-deps mergekit==0.1.5 'immutables>=0.21,<1'``
(its other requirements are lotavec's own or unused by ``run_merge``).

Usage: ``.venv/bin/python bench/bench_merge.py [--models smollm2,llama1b] [--repeat 2] [--no-mergekit]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _models import (  # noqa: E402
    MODEL_KINDS,
    Measured,
    base_dir,
    finetuned_dir,
    fmt_mb,
    folder_bytes,
    log,
    page_cache_fraction,
    python_snippet,
    run_measured,
    ticket_path,
    warm,
)

_COPY = """
import numpy as np
from lotavec.hfwriter import ShardedWriter, atomic_output_dir, copy_model_files
from lotavec.models import open_model
base, out, fsync = sys.argv[1], sys.argv[2], sys.argv[3] == "fsync"
r0 = rss()
start_sampler()
t, c = time.perf_counter(), time.process_time()
with open_model(base) as src:
    names = src.names()
    with atomic_output_dir(out, fsync=fsync) as tmp:
        with ShardedWriter(tmp, [(n, *src.info(n)) for n in names], max_shard_size="5GB", flush_behind=fsync) as w:
            for n in names:
                w.write(n, src.array(n))
                src.release(n)
        copy_model_files(base, tmp)
report(work=time.perf_counter() - t, cpu=time.process_time() - c, base_rss=r0)
"""

_LOTAVEC = """
import numpy as np
import lotavec.merge
from lotavec.merge import MergeParams
base, out, method, density, fsync, t1, t2 = sys.argv[1:8]
params = (MergeParams(method="sum") if method == "sum" else
          MergeParams(method="ties", density=float(density), semantics="mergekit"))
r0 = rss()
start_sampler()
t, c = time.perf_counter(), time.process_time()
r = lotavec.merge.merge(base, [t1, t2], out, params=params, fsync=fsync == "fsync")
report(work=time.perf_counter() - t, cpu=time.process_time() - c, base_rss=r0, changed=r.changed_entries)
"""

_MERGEKIT = """
import torch, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
config, out = sys.argv[1], sys.argv[2]
options = MergeOptions(quiet=True)
options.apply_global_options()
source = open(config).read()
cfg = MergeConfiguration.model_validate(yaml.safe_load(source))
r0 = rss()
start_sampler()
t, c = time.perf_counter(), time.process_time()
run_merge(cfg, out, options=options, config_source=source)
report(work=time.perf_counter() - t, cpu=time.process_time() - c, base_rss=r0)
"""


def mergekit_config(path: Path, method: str, base: Path, fts: list[Path], density: float) -> Path:
    """Write a mergekit YAML equivalent to the lotavec merge (weights 1, bf16 output)."""
    params = "{weight: 1.0}" if method == "task_arithmetic" else f"{{weight: 1.0, density: {density}}}"
    models = "".join(f"  - model: {ft}\n    parameters: {params}\n" for ft in fts)
    path.write_text(f"merge_method: {method}\nbase_model: {base}\nmodels:\n{models}dtype: bfloat16\n")
    return path


def differing_fraction(a: Path, b: Path) -> float:
    """Fraction of entries (all tensors) whose stored bits differ between two model folders."""
    import numpy as np

    from lotavec.models import open_model

    diff = total = 0
    with open_model(a) as x, open_model(b) as y:
        for n in x.names():
            u, v = x.array(n), y.array(n).astype(x.array(n).dtype, copy=False)
            diff += int(np.count_nonzero(u.reshape(-1) != v.reshape(-1)))
            total += u.size
            x.release(n)
            y.release(n)
    return diff / total


def bench_model(kind: str, repeat: int, density: float, with_mergekit: bool, skip: set[str], tmp: Path) -> dict:
    base = base_dir(kind)
    fts = [finetuned_dir(kind, s) for s in (1, 2)]
    tks = [ticket_path(kind, s) for s in (1, 2)]
    inputs = [base, *fts, *tks]
    warm(inputs)
    cached = page_cache_fraction(inputs)
    tools: dict[str, list[str]] = {
        "copy floor": python_snippet(_COPY) + [str(base), "{out}", "nofsync"],
        "copy floor --fsync": python_snippet(_COPY) + [str(base), "{out}", "fsync"],
        "lotavec sum": python_snippet(_LOTAVEC) + [str(base), "{out}", "sum", str(density), "fsync", *map(str, tks)],
        "lotavec sum --no-fsync": python_snippet(_LOTAVEC) + [str(base), "{out}", "sum", str(density), "nofsync",
                                                             *map(str, tks)],
        "lotavec ties": python_snippet(_LOTAVEC) + [str(base), "{out}", "ties", str(density), "fsync", *map(str, tks)],
        "lotavec ties --no-fsync": python_snippet(_LOTAVEC) + [str(base), "{out}", "ties", str(density), "nofsync",
                                                              *map(str, tks)],
    }
    if with_mergekit:
        for m in ("task_arithmetic", "ties"):
            cfg = mergekit_config(tmp / f"{kind}-{m}.yaml", m, base, fts, density)
            tools[f"mergekit {m}"] = python_snippet(_MERGEKIT) + [str(cfg), "{out}"]
    tools = {t: argv for t, argv in tools.items() if f"{kind}:{t}" not in skip}
    runs: dict[str, list[Measured]] = {t: [] for t in tools}
    diffs: dict[str, float] = {}
    pairs = {"mergekit task_arithmetic": ("sum", "lotavec sum"), "mergekit ties": ("ties", "lotavec ties")}
    # lotavec outputs compared with a mergekit output (first round only): kept until that exists
    keep = {mine for theirs, (_, mine) in pairs.items() if theirs in tools and mine in tools}
    for i in range(repeat):  # interleaved: the machine is shared and its load drifts
        for tool, argv in tools.items():
            out = tmp / f"{kind}-{tool.replace(' ', '-')}"
            # Every run starts from the same state: no dirty pages left by the previous run's
            # output (its write-back would compete), and the inputs back in the page cache.
            # (Dropping the page cache between runs was tried and made write() copies into the
            # page cache 2-4x slower for the next runs on this VM: not a steady state.)
            os.sync()
            warm(inputs)
            cached = min(cached, page_cache_fraction(inputs))
            runs[tool].append(run_measured([a.replace("{out}", str(out)) for a in argv]))
            log(f"{kind} #{i + 1} {tool}: {runs[tool][-1].work:.2f} s (CPU {runs[tool][-1].extra['cpu']:.2f} s), "
                f"peak {fmt_mb(runs[tool][-1].peak_rss)}")
            # Delete every output at once (outputs left in the page cache put the next runs under
            # memory pressure: the kernel then reclaims while they write), except, in the first
            # round, the lotavec outputs that are compared with mergekit's.
            if i == 0 and tool in pairs and pairs[tool][1] in keep:
                ours, mine = pairs[tool]
                mine_out = tmp / f"{kind}-{mine.replace(' ', '-')}"
                diffs[ours] = differing_fraction(mine_out, out)
                shutil.rmtree(mine_out, ignore_errors=True)
            if not (i == 0 and tool in keep):
                shutil.rmtree(out, ignore_errors=True)
    return {"kind": kind, "bytes": folder_bytes(base), "cached": cached, "diffs": diffs,
            "work": {t: min(m.work for m in ms) for t, ms in runs.items()},
            "cpu": {t: min(m.extra["cpu"] for m in ms) for t, ms in runs.items()},
            "process": {t: min(m.wall for m in ms) for t, ms in runs.items()},
            "peak": {t: max(m.peak_rss for m in ms) for t, ms in runs.items()},
            "before": {t: min(m.base_rss for m in ms) for t, ms in runs.items()},
            "anon": {t: max(m.extra["peak_anon"] - m.extra["anon_before"] for m in ms) for t, ms in runs.items()},
            "file": {t: max(m.extra["peak_file"] - m.extra["file_before"] for m in ms) for t, ms in runs.items()},
            "all": {t: [m.work for m in ms] for t, ms in runs.items()}}


def table(rows: list[dict], repeat: int, density: float) -> str:
    lines = [
        f"Two tickets at 10 % density; ties density {density:g} (mergekit semantics, per tensor); best of "
        f"{repeat} interleaved runs; {datetime.date.today()}, {os.cpu_count()} cores, {platform.machine()}, "
        f"load avg {os.getloadavg()[0]:.1f} at the end.",
        "",
        "| model | tool | wall | × copy floor | × floor, same fsync | CPU | × floor CPU | process wall | peak RSS "
        "| RSS before | × mergekit RSS | own anon / mapped files (sampled) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fw, fc = r["work"]["copy floor"], r["cpu"]["copy floor"]
        ff = r["work"].get("copy floor --fsync")
        mk = {"lotavec sum": "mergekit task_arithmetic", "lotavec ties": "mergekit ties",
              "lotavec sum --no-fsync": "mergekit task_arithmetic", "lotavec ties --no-fsync": "mergekit ties"}
        for tool in r["work"]:
            peer = mk.get(tool)
            rel = (f"{r['peak'][tool] / r['peak'][peer]:.2f}" if peer in r["peak"] else "–")
            # lotavec's default (no "--no-fsync") flushes its output to disk, like "copy floor --fsync"
            durable = tool.startswith("lotavec") and "--no-fsync" not in tool or tool == "copy floor --fsync"
            same = ff if durable else fw
            like = f"**{r['work'][tool] / same:.2f}×**" if same and not tool.startswith("mergekit") else "–"
            lines.append(
                f"| {r['kind']} ({r['bytes'] / 1e9:.2f} GB, {r['cached']:.0%} cached) | {tool} "
                f"| {r['work'][tool]:.2f} s | {r['work'][tool] / fw:.2f}× | {like} | {r['cpu'][tool]:.2f} s "
                f"| {r['cpu'][tool] / fc:.2f}× | {r['process'][tool]:.2f} s | {fmt_mb(r['peak'][tool])} "
                f"| {fmt_mb(r['before'][tool])} | {rel} | {fmt_mb(r['anon'][tool])} / {fmt_mb(r['file'][tool])} |")
    lines.append("")
    for r in rows:
        w = r["work"]
        parts = [f"{r['kind']}:"]
        for ours, theirs in (("sum", "task_arithmetic"), ("ties", "ties")):
            if f"mergekit {theirs}" in w:
                nf = w.get(f"lotavec {ours} --no-fsync")
                extra = f" ({w[f'mergekit {theirs}'] / nf:.1f}× without fsync, like mergekit)" if nf else ""
                parts.append(f"lotavec {ours} is {w[f'mergekit {theirs}'] / w[f'lotavec {ours}']:.1f}× faster than "
                             f"mergekit {theirs} (wall){extra}, outputs differ on "
                             f"{r['diffs'].get(ours, float('nan')):.4%} of entries;")
        lines.append(" ".join(parts))
    lines += ["", "Per-run seconds: " + "; ".join(
        f"{r['kind']} {t}: " + ", ".join(f"{x:.2f}" for x in xs) for r in rows for t, xs in r["all"].items())]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODEL_KINDS), help="comma-separated: smollm2, llama1b")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--ties-density", type=float, default=0.05,
                   help="TIES trim density p (k = p x numel per tensor; 0.05 keeps the top half of a 10 %% ticket)")
    p.add_argument("--no-mergekit", action="store_true", help="skip mergekit (not installed)")
    p.add_argument("--skip", action="append", default=[], metavar="MODEL:TOOL",
                   help="leave one run out, e.g. 'llama1b:mergekit ties' (repeatable)")
    a = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-merge-", dir=Path(__file__).parent / "out") as tmp:
        for kind in a.models.split(","):
            rows.append(bench_model(kind.strip(), a.repeat, a.ties_density, not a.no_mergekit, set(a.skip), Path(tmp)))
    print(table(rows, a.repeat, a.ties_density))


if __name__ == "__main__":
    main()
