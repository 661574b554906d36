"""Benchmark: one training step, full fine-tuning vs exact sparse (LoTA) training, on CPU.

Model: a randomly initialised Llama with SmolLM2-135M's shape (30 layers, d=576, 9/3 heads,
MLP 1536, vocab 49152, tied embeddings; 134.5 M parameters). Random init is fine for timing.
Batch ``--batch`` x ``--seq`` random tokens (all counted in the loss), AdamW (weight decay 0.01),
gradient clipping 1.0, bf16 autocast over fp32 weights by default (``--precision``). Sparse mode
masks a random ``--density`` fraction of every parameter tensor (embeddings and norms included).
Both modes run the same step function, :func:`lotavec.train.loop.train_step`.

Two measurements, each in its own subprocess:

* **time** — one process holds both models and alternates full and sparse steps (ABBA order),
  so that load from other processes on a shared machine hits both alike; reports median step
  times and the median of the per-pair sparse/full ratios.
* **memory** — one process per mode runs a few steps through :func:`dense_finetune` /
  :func:`sparse_train`; reports its peak RSS (its own, since it is a fresh process) and the
  optimizer-state bytes.

CPU training is malloc-bound with glibc (REAL_MODEL notes): children are started with
``LD_PRELOAD=libtcmalloc_minimal.so.4`` when that file exists (``apt-get install libtcmalloc-minimal4``).

Usage: ``.venv/bin/python bench/bench_train_step.py [--steps 6 --warmup 2 --density 0.1 --threads 2]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import best_of  # noqa: E402

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def smollm2_shaped(seed: int = 0):
    """A random LlamaForCausalLM with SmolLM2-135M's configuration (fp32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, rope_theta=100000.0,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def random_masks(model, density: float, seed: int = 0):
    """Each tensor: a Bernoulli(density) subset of its entries, as sorted flat indices."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {name: torch.nonzero(torch.rand(p.numel(), generator=g) < density).reshape(-1)
            for name, p in model.named_parameters()}


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49152, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    return dtype, batch


def child_memory(args, mode: str) -> dict:
    """Run one mode through the public loops in this (fresh) process; peak RSS and state bytes."""
    from lotavec.train.loop import dense_finetune, sparse_train

    dtype, batch = _setup(args)
    model = smollm2_shaped().to(dtype)
    masks = random_masks(model, args.density) if mode == "sparse" else None
    rss_model = rss_now()
    kw = dict(steps=args.mem_steps, lr=1e-4, weight_decay=0.01, bf16=args.precision == "autocast",
              max_grad_norm=1.0)
    if mode == "full":
        res = dense_finetune(model, [batch], **kw)
    else:
        res = sparse_train(model, masks, [batch], master_dtype=None, keep="base", **kw)
    return {"mode": mode, "peak_rss_bytes": res.peak_memory_bytes, "rss_after_model_bytes": rss_model,
            "optimizer_state_bytes": res.optimizer_state_bytes, "trainable": res.trainable,
            "total": res.total, "step_times": res.step_times,
            "tcmalloc": TCMALLOC in os.environ.get("LD_PRELOAD", "")}


def child_time(args) -> dict:
    """Alternate full and sparse steps (ABBA) in one process; per-mode step times."""
    import torch

    from lotavec.train.loop import make_optimizer, train_step
    from lotavec.train.sparse import SparseTuner

    dtype, batch = _setup(args)
    dev = torch.device("cpu")
    full = smollm2_shaped().to(dtype)
    full.train()
    full_opt = make_optimizer(list(full.parameters()), "adamw", 1e-4, weight_decay=0.01)
    sparse = smollm2_shaped().to(dtype)
    sparse.train()
    tuner = SparseTuner(sparse, random_masks(sparse, args.density))
    sparse_opt = make_optimizer(tuner.trainable_parameters(), "adamw", 1e-4, weight_decay=0.01)
    runs = {"full": (full, list(full.parameters()), full_opt), "sparse": (sparse, tuner.trainable_parameters(), sparse_opt)}
    times: dict[str, list[float]] = {"full": [], "sparse": [], "full_cpu": [], "sparse_cpu": []}
    for i in range(args.warmup + args.steps):
        for mode in (("full", "sparse") if i % 2 == 0 else ("sparse", "full")):
            model, params, opt = runs[mode]
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(model, params, opt, [batch], device=dev, bf16=args.precision == "autocast", max_grad_norm=1.0)
            times[mode].append(time.perf_counter() - t0)
            times[f"{mode}_cpu"].append(time.process_time() - c0)
    out = {k: v[args.warmup:] for k, v in times.items()}
    out.update(trainable=tuner.num_trainable(), tcmalloc=TCMALLOC in os.environ.get("LD_PRELOAD", ""),
               loadavg=os.getloadavg())
    return out


def child_parts(args) -> dict:
    """Best-of-N times of the parts in which a sparse step differs from a full one.

    Forward and backward matrix work is the same in both modes. A sparse step adds the scatter
    of every masked tensor (each access of ``module.weight``; the tied embedding twice) and the
    gather of the values' gradients; a full step adds gradient clipping and AdamW over every
    parameter instead of over the values. The minimum over repetitions approximates the
    uncontended cost on a shared machine.
    """
    import torch

    from lotavec.train.loop import make_optimizer
    from lotavec.train.sparse import SparseTuner

    torch.set_num_threads(args.threads)
    reps = args.part_reps

    def best(fn) -> float:
        return best_of(fn, reps)

    def time_full_update() -> float:
        params = list(smollm2_shaped().parameters())
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = make_optimizer(params, "adamw", 1e-4, weight_decay=0.01)

        def full_update():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        return best(full_update)

    t_full_update = time_full_update()
    sparse = smollm2_shaped()
    tuner = SparseTuner(sparse, random_masks(sparse, args.density))
    values = tuner.trainable_parameters()
    for v in values:
        v.grad = torch.randn_like(v) * 1e-3
    sparse_opt = make_optimizer(values, "adamw", 1e-4, weight_decay=0.01)

    def sparse_update():
        torch.nn.utils.clip_grad_norm_(values, 1.0)
        sparse_opt.step()

    sites = [m for m in sparse.modules() if hasattr(m, "parametrizations")]

    def scatter_all():
        with torch.no_grad():
            for m in sites:  # tied lm_head / embed_tokens: two sites, two scatters, as in a forward
                for name in m.parametrizations:
                    getattr(m, name)

    grads = {id(g.scatter): torch.randn(g.base.shape) for g in tuner._groups}

    def gather_all():
        for g in tuner._groups:
            grads[id(g.scatter)].reshape(-1)[g.scatter._indices]

    return {"full_update_s": t_full_update, "sparse_update_s": best(sparse_update),
            "scatter_s": best(scatter_all), "gather_s": best(gather_all), "reps": reps,
            "loadavg": os.getloadavg()}


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=["time", "parts", "mem-full", "mem-sparse"], help=argparse.SUPPRESS)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="measured steps per mode (after --warmup)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--mem-steps", type=int, default=3, help="steps of each memory run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--part-reps", type=int, default=7, help="repetitions of each part (best of)")
    ap.add_argument("--precision", choices=["autocast", "fp32", "bf16"], default="autocast",
                    help="bf16 autocast over fp32 weights, plain fp32, or bf16 weights")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    if args.child == "time":
        print(json.dumps(child_time(args)))
        return
    if args.child == "parts":
        print(json.dumps(child_parts(args)))
        return
    if args.child:
        print(json.dumps(child_memory(args, args.child[4:])))
        return
    env = dict(os.environ)
    if os.path.exists(TCMALLOC) and TCMALLOC not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = f"{TCMALLOC} {env.get('LD_PRELOAD', '')}".strip()
    flags = [x for k in ("density", "batch", "seq", "steps", "warmup", "mem_steps", "threads", "precision",
                         "part_reps")
             for x in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
    results = {}
    for child in ("mem-full", "mem-sparse", "parts", "time"):
        out = subprocess.run([sys.executable, __file__, "--child", child, *flags], env=env, check=True,
                             capture_output=True, text=True).stdout
        results[child] = json.loads(out.strip().splitlines()[-1])
    mf, ms, tm = results["mem-full"], results["mem-sparse"], results["time"]
    pair = [s / f for s, f in zip(tm["sparse"], tm["full"])]
    gib, mib = 1 << 30, 1 << 20
    print(f"SmolLM2-135M-shaped random Llama, batch {args.batch}x{args.seq}, {args.precision}, AdamW, "
          f"threads {args.threads}, tcmalloc {'on' if tm['tcmalloc'] else 'off'}; "
          f"time: {args.warmup} warmup + {args.steps} measured steps per mode, interleaved")
    print(f"load average at the end of the timing run: {tm['loadavg'][0]:.2f} (2 cores: above ~2 the wall times "
          "are contended; CPU seconds per step are less sensitive to that)")
    print(f"{'mode':8} {'median s/step':>14} {'min':>7} {'max':>7} {'CPU s/step':>11} {'peak RSS GiB':>13} "
          f"{'RSS model GiB':>14} {'opt state MiB':>14} {'trainable':>12}")
    for mode, mem in (("full", mf), ("sparse", ms)):
        t = tm[mode]
        print(f"{mode:8} {_median(t):14.3f} {min(t):7.3f} {max(t):7.3f} {_median(tm[mode + '_cpu']):11.3f} "
              f"{mem['peak_rss_bytes'] / gib:13.2f} {mem['rss_after_model_bytes'] / gib:14.2f} "
              f"{mem['optimizer_state_bytes'] / mib:14.1f} {mem['trainable']:12,}")
    ratios = {"step_time_median": _median(tm["sparse"]) / _median(tm["full"]), "step_time_paired": _median(pair),
              "cpu_time_median": _median(tm["sparse_cpu"]) / _median(tm["full_cpu"]),
              "peak_rss": ms["peak_rss_bytes"] / mf["peak_rss_bytes"],
              "optimizer_state": ms["optimizer_state_bytes"] / mf["optimizer_state_bytes"],
              "density": ms["trainable"] / ms["total"]}
    print("sparse/full: step time {step_time_median:.3f} (ratio of medians), {step_time_paired:.3f} (median of "
          "paired ratios), CPU time {cpu_time_median:.3f}; peak RSS {peak_rss:.3f}; optimizer state "
          "{optimizer_state:.4f} (density {density:.4f})".format(**ratios))
    pt = results["parts"]
    extra = pt["scatter_s"] + pt["gather_s"] + pt["sparse_update_s"]
    print(f"parts (best of {pt['reps']}, load {pt['loadavg'][0]:.2f}): full-only clip+AdamW over all parameters "
          f"{pt['full_update_s']:.3f} s; sparse-only scatter of all masked tensors {pt['scatter_s']:.3f} s + "
          f"gather of their gradients {pt['gather_s']:.3f} s + clip+AdamW over the values "
          f"{pt['sparse_update_s']:.3f} s = {extra:.3f} s; sparse - full = {extra - pt['full_update_s']:+.3f} s/step")
    ratios["parts_difference_s"] = extra - pt["full_update_s"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
