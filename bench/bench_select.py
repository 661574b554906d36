"""Benchmark: exact streaming top-k selection against the cost of computing the scores once.

Builds ``--tensors`` synthetic base/fine-tuned pairs of ``--numel`` entries each (storage dtype
``--dtype``; the fine-tune changes a fraction ``--touched`` of the entries by Gaussian noise whose
scale differs per tensor), then times

* the floor: calling every candidate's score function once (|fine-tuned - base| in float32), and
* ``select_topk`` (which calls them once, twice or three times, plus its own work),

and prints the ratio, the number of score passes, and the peak traced allocation of the selection.

Usage: ``.venv/bin/python bench/bench_select.py [--tensors 20 --numel 5000000 --density 0.1]``
(``--ranged`` gives the candidates ``score_range`` instead of ``scores``; ``--help`` for more).
Times are CPU seconds of this process, best of ``--repeat`` interleaved runs.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from lotavec.format.dtypes import from_float32, to_float32
from lotavec.mask import Candidate, select_topk
from lotavec.mask._radix import CHUNK


def make_pairs(n: int, numel: int, dtype: str, touched: float, order: str, seed: int):
    """Synthetic (base, fine-tuned) storage arrays; per-tensor delta scales span 4x.

    ``order``: "random" (scales shuffled), "increasing" (each tensor's deltas larger than the
    previous one's: the worst case for a streaming threshold) or "equal".
    """
    rng = np.random.default_rng(seed)
    steps = np.arange(n) if order == "increasing" else rng.permutation(n)
    pairs = []
    for i in steps:
        base = (rng.standard_normal(numel, dtype=np.float32) * np.float32(0.02)).astype(np.float32)
        scale = np.float32(1e-3 * (1 if order == "equal" else 2 ** (2 * i / max(n - 1, 1))))
        delta = rng.standard_normal(numel, dtype=np.float32) * scale
        if touched < 1:
            delta[rng.random(numel, dtype=np.float32) >= touched] = 0
        ft = base + delta
        if dtype == "bf16":
            base, ft = from_float32(base, "BF16"), from_float32(ft, "BF16")
        pairs.append((base, ft))
    return pairs


def candidates(pairs, dtype: str, calls: list[int], ranged: bool = False):
    """Candidates computing |ft - base| in float32 on every call, like extraction from mmap.

    ``ranged``: give ``score_range`` (scores of a slice, computed chunk by chunk) instead.
    """
    name = "BF16" if dtype == "bf16" else "F32"

    def delta(base, ft):
        d = to_float32(ft, name)
        d -= to_float32(base, name)
        return np.abs(d, out=d)

    def scorer(base, ft):
        def scores():
            calls[0] += 1
            return delta(base, ft)

        def score_range(start, stop):
            calls[0] += start == 0
            return delta(base[start:stop], ft[start:stop])

        return (None, score_range) if ranged else (scores, None)

    out = []
    for i, (b, f) in enumerate(pairs):
        scores, score_range = scorer(b, f)
        out.append(Candidate(f"t{i}", b.size, scores, score_range=score_range))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tensors", type=int, default=20)
    p.add_argument("--numel", type=int, default=5_000_000)
    p.add_argument("--density", type=float, default=0.1)
    p.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    p.add_argument("--touched", type=float, default=1.0, help="fraction of entries changed")
    p.add_argument(
        "--order",
        choices=["random", "increasing", "equal"],
        default="random",
        help="order of the per-tensor delta scales",
    )
    p.add_argument("--scope", choices=["global", "tensor"], default="global")
    p.add_argument("--max-retained-bytes", type=int, default=None)
    p.add_argument("--ranged", action="store_true", help="score_range: scores chunk by chunk")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--trace", action="store_true", help="also measure peak allocation (slower)")
    a = p.parse_args()

    pairs = make_pairs(a.tensors, a.numel, a.dtype, a.touched, a.order, seed=0)
    calls = [0]
    cands = candidates(pairs, a.dtype, calls, a.ranged)
    total = a.tensors * a.numel

    def run(cs):
        return select_topk(
            cs, density=a.density, scope=a.scope, max_retained_bytes=a.max_retained_bytes
        )

    # The selector's own work, isolated: the same selection over score arrays computed beforehand
    # (the callables return them without recomputation). Less sensitive to a busy machine.
    cached = [np.asarray(c.scores() if c.scores else c.score_range(0, c.numel)) for c in cands]
    ccands = [Candidate(c.name, c.numel, lambda s=s: s) for c, s in zip(cands, cached)]
    floors, times, own, passes = [], [], [], []
    for _ in range(a.repeat):  # interleaved, best of each: the machine may be shared
        floors.append(_time(lambda: _score_pass(cands)))
        calls[0] = 0
        times.append(_time(lambda: run(cands)))
        passes.append(calls[0] / a.tensors)
        own.append(_time(lambda: run(ccands)))
    floor, sel, work = min(floors), min(times), min(own)
    passes = passes[times.index(sel)]
    nnz = sum(v.size for v in run(cands).values())
    ns = 1e9 / total
    print(
        f"{a.tensors} tensors x {a.numel:,} = {total:,} scores ({a.dtype}, touched {a.touched:g}), "
        f"scales {a.order}, density {a.density:g}, scope {a.scope}"
        f"{', score_range' if a.ranged else ''}: selected {nnz:,}"
    )
    print(f"floor (scores once):       {floor:.3f} s = {floor * ns:.2f} ns/entry")
    print(
        f"select_topk:               {sel:.3f} s = {sel * ns:.2f} ns/entry, {passes:g} score pass(es)"
    )
    print(f"  its own work (cached):   {work:.3f} s = {work * ns:.2f} ns/entry")
    print(f"ratio select/floor:        {sel / floor:.2f}")
    print(f"ratio (floor x passes + own work)/floor: {(floor * passes + work) / floor:.2f}")
    if a.trace:
        tracemalloc.start()
        out = select_topk(
            cands, density=a.density, scope=a.scope, max_retained_bytes=a.max_retained_bytes
        )
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        result = sum(v.nbytes for v in out.values())
        print(
            f"peak traced allocation: {peak / 2**20:.1f} MiB (result {result / 2**20:.1f} MiB, "
            f"largest tensor fp32 {a.numel * 4 / 2**20:.1f} MiB)"
        )


def _score_pass(cands) -> None:
    """The floor: every candidate's scores computed once, each dropped before the next (in
    chunks of the selector's size for ``score_range``)."""
    for c in cands:
        if c.scores is not None:
            c.scores()
        else:
            for start in range(0, c.numel, CHUNK):
                c.score_range(start, min(start + CHUNK, c.numel))


def _time(fn) -> float:
    """CPU seconds of this process (robust to other load on the machine; numpy is single-threaded
    here) — wall time is printed separately by the caller when wanted."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


if __name__ == "__main__":
    main()
