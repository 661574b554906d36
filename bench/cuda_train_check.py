"""CUDA check: full vs exact sparse training step time and memory, and off-mask exactness, on a GPU.

One prepared, self-contained script for a GPU machine (run it from the repository root):

    python3 bench/cuda_train_check.py [--shapes 8x512,8x2048 --steps 10 --density 0.1] [--json out.json]

Model: a random Llama with SmolLM2-135M's shape (30 layers, d=576, vocab 49152, tied embeddings).
For each batch shape (``--shapes``, random tokens) and precision ("autocast": fp32 weights + bf16
autocast; "bf16": bf16 weights and bf16 trainable values, like the full run's bf16 weights and
optimizer state) it measures, in this order, with the same step code
(:func:`lotavec.train.loop.train_step`):

* full fine-tuning (AdamW, weight decay 0.1): median step time, ``max_memory_allocated``,
  optimizer-state bytes;
* sparse training of a random ``--density`` mask of every tensor: the same numbers, then merges
  the trained values and checks that **every off-mask entry is bit-identical** to the base and
  that most masked entries changed.

Prints one JSON document (also written to ``--json`` and, when set, ``$OUT/cuda_train_check.json``).
Exit status: 0 all checks passed; 1 an exactness check failed; 2 no CUDA device; 3 an error, or
with ``--strict-speed`` a step-time ratio above 1.15 (otherwise ``speed_ok`` is only reported).
``--profile`` adds, per run, the GPU-busy and wall time per step over 3 profiled steps (a step
whose GPU-busy time is far below its wall time is bound by the host launching kernels, not by the
GPU). ``--device cpu --tiny`` is a dry run of the script's logic without a GPU (no memory
numbers). Imports ``lotavec.train`` straight from this checkout; when the package's optional
dependencies (zstandard...) are missing there, it loads only the modules it needs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _import_lotavec_train():
    """Import lotavec.train.{loop,sparse}; bypass lotavec/__init__ if its dependencies are missing."""
    sys.path.insert(0, str(ROOT))
    try:
        import lotavec  # noqa: F401
    except ImportError:
        for name in [m for m in sys.modules if m == "lotavec" or m.startswith("lotavec.")]:
            del sys.modules[name]
        pkg = types.ModuleType("lotavec")
        pkg.__path__ = [str(ROOT / "lotavec")]
        sys.modules["lotavec"] = pkg
    from lotavec.train import loop, sparse

    return loop, sparse


VOCAB = 49152


def smollm2_shaped(device, dtype, seed: int = 0, tiny: bool = False):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3)
    if tiny:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2)
    cfg = LlamaConfig(**shape, vocab_size=VOCAB, max_position_embeddings=8192, rope_theta=100000.0,
                      tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).train()


def random_masks(model, density: float, seed: int = 0):
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)
    return {n: torch.nonzero(torch.rand(p.numel(), generator=g) < density).reshape(-1)
            for n, p in model.named_parameters()}


def _bits(t):
    import torch

    view = {2: torch.int16, 4: torch.int32}[t.element_size()]
    return t.detach().contiguous().reshape(-1).view(view)


def run_mode(loop, sparse_mod, args, precision: str, mode: str, batch, dev) -> dict:
    import torch

    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    model = smollm2_shaped(dev, dtype, tiny=args.tiny)
    result: dict = {"precision": precision, "mode": mode}
    if mode == "full":
        params = list(model.parameters())
        tuner = None
    else:
        masks = random_masks(model, args.density)
        base = {n: _bits(p).to("cpu", copy=True) for n, p in model.named_parameters()}  # off the GPU: not in its peak
        tuner = sparse_mod.SparseTuner(model, masks)
        params = tuner.trainable_parameters()
    opt = loop.make_optimizer(params, "adamw", args.lr, weight_decay=0.1)
    if cuda:
        torch.cuda.synchronize(dev)
    result["memory_before_training_bytes"] = int(torch.cuda.memory_allocated(dev)) if cuda else None
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        losses.append(loop.train_step(model, params, opt, [batch], device=dev, bf16=True, max_grad_norm=1.0))
        times.append(time.perf_counter() - t0)
    t = sorted(times[args.warmup:])
    if getattr(args, "profile", False) and cuda:
        bsz, seq = batch["input_ids"].shape
        try:
            result["profile"] = profile_steps(loop, model, params, opt, batch, dev, args,
                                              f"{precision}_{mode}_{bsz}x{seq}")
        except Exception as e:  # the timings above stand without it
            result["profile"] = {"error": f"{type(e).__name__}: {e}"}
    result.update(median_step_s=t[len(t) // 2], min_step_s=t[0], max_step_s=t[-1],
                  max_memory_allocated_bytes=int(torch.cuda.max_memory_allocated(dev)) if cuda else None,
                  optimizer_state_bytes=sparse_mod.optimizer_state_bytes(opt),
                  trainable=sum(p.numel() for p in params), first_loss=losses[0], last_loss=losses[-1])
    if tuner is not None:
        tuner.merge_into_model()
        moved = changed = on_total = 0
        for n, p in model.named_parameters():
            on = torch.zeros(p.numel(), dtype=torch.bool)
            on[masks[n]] = True
            after = _bits(p).cpu()
            moved += int((after[~on] != base[n][~on]).sum())
            changed += int((after[on] != base[n][on]).sum())
            on_total += int(on.sum())
        result.update(off_mask_entries_moved=moved, masked_changed_fraction=changed / max(1, on_total),
                      exact=moved == 0 and changed > 0.5 * on_total)
    del model, opt, params, tuner
    return result


def profile_steps(loop, model, params, opt, batch, dev, args, tag: str, steps: int = 3) -> dict:
    """GPU-busy vs wall time per step (torch.profiler); op tables appended to cuda_train_profile.txt in
    $OUT or --json's folder."""
    from torch.profiler import ProfilerActivity, profile

    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            loop.train_step(model, params, opt, [batch], device=dev, bf16=True, max_grad_norm=1.0)
    wall = time.perf_counter() - t0
    ka = prof.key_averages()
    cuda_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) for e in ka)
    folder = os.environ.get("OUT") or (os.path.dirname(args.json) if args.json else None)
    if folder:
        with open(Path(folder, "cuda_train_profile.txt"), "a") as fh:  # one file: $OUT brings back few
            fh.write(f"===== {tag}\n{ka.table(sort_by='self_cpu_time_total', row_limit=30)}\n")
    return {"steps": steps, "wall_per_step_s": wall / steps, "gpu_busy_per_step_s": cuda_us / 1e6 / steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="8x512,8x2048",
                    help="batch x sequence length of each measured setting, comma-separated")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--precisions", default="autocast,bf16")
    ap.add_argument("--json")
    ap.add_argument("--strict-speed", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="also profile 3 steps of each run: GPU-busy vs wall time per step, op tables to $OUT")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu for a dry run")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (dry runs)")
    args = ap.parse_args()
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device (torch.cuda.is_available() is False)"}))
        return 2
    loop, sparse_mod = _import_lotavec_train()
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (dry run)"
    report = {"device": name, "torch": torch.__version__, "args": vars(args), "runs": []}
    ok = True
    for shape in args.shapes.split(","):
        bsz, seq = (int(x) for x in shape.lower().split("x"))
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, VOCAB, (bsz, seq), generator=g).to(dev)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        for precision in args.precisions.split(","):
            full = run_mode(loop, sparse_mod, args, precision, "full", batch, dev)
            sp = run_mode(loop, sparse_mod, args, precision, "sparse", batch, dev)
            ratio = sp["median_step_s"] / full["median_step_s"]
            summary = {"batch": bsz, "seq": seq, "precision": precision, "step_time_ratio": ratio,
                       "speed_ok": ratio <= 1.15,
                       "memory_ratio": sp["max_memory_allocated_bytes"] / full["max_memory_allocated_bytes"]
                       if dev.type == "cuda" else None,
                       "optimizer_state_ratio": sp["optimizer_state_bytes"] / full["optimizer_state_bytes"],
                       "exact": sp["exact"], "full": full, "sparse": sp}
            report["runs"].append(summary)
            ok &= sp["exact"]
            if args.strict_speed and ratio > 1.15:
                ok = False
    text = json.dumps(report, indent=2)
    print(text)
    for path in [args.json, os.path.join(os.environ["OUT"], "cuda_train_check.json") if os.environ.get("OUT") else None]:
        if path:
            Path(path).write_text(text)
    if not all(r["exact"] for r in report["runs"]):
        return 1
    return 0 if ok else 3


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(3)
