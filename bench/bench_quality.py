"""Quality evidence for LoTA on a real model: SmolLM2-135M-Instruct, two exact-match tasks, CPU.

Task A = ``reverse_words``, task B = ``upper_words`` (:mod:`lotavec.tasks`): the same kind of input (four
words) with different instructions, so training on B can overwrite A. Hyper-parameters are the
demo's (:class:`lotavec.demo.DemoConfig`): LoTA density 1 % of the attention/MLP weights,
calibration 20 steps at 5e-5, sparse training 30 steps at 5e-4; full fine-tuning 30 steps at 5e-5
per task; LoRA rank 4 (about the ticket's number of trainable entries) 50 steps at 1e-3 per task
(as many optimizer steps as LoTA's calibration + sparse training). AdamW, batch 8, bf16 autocast,
one seed, one setting per method (no sweeps).

Measured, each model scored on ``--n-test`` held-out items of both tasks (greedy, exact match):

(a) LoTA on A vs full fine-tuning on A;
(b) sequential A → B: A's score after B under full fine-tuning, LoTA → LoTTO and LoRA → LoRA;
(c) disjoint tickets merged with ``lotavec.merge``: the sequential LoTTO pair (the same model as (b)),
    each ticket alone on the base, and an independently trained pair (B' disjoint from A but
    trained from the bare base);
(d) LoTA's mask vs a uniformly random mask of the same size over the same tensors (same sparse
    training);
(e) LoRA (PEFT) alone and sequentially (merged into the weights between tasks).

Tickets are scored as deployed: applied to a freshly loaded base (``lotavec.apply``) or merged into
a model folder (``lotavec.merge``), not the in-memory model :func:`lotavec.train` returns.

Cost (step time, peak memory, optimizer state of sparse vs full training) is measured properly by
``bench/bench_train_step.py``; this script only reports the median step times it saw (noisy).

Usage: ``./dev bench bench_quality [--n-test 150] [--threads 1] [--out bench/out/quality.md]``
(tcmalloc preloaded by ``./dev``). Prints a Markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

A_TASK, B_TASK = "reverse_words", "upper_words"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    """Shared state: tokenizer, data, test items, the score table."""

    def __init__(self, args, work: Path):
        from transformers import AutoTokenizer

        from lotavec.demo import DemoConfig, resolve_device
        from lotavec.realmodel import ensure_smollm2
        from lotavec.tasks import make_items, write_jsonl
        from lotavec.train.data import load_jsonl

        self.args, self.work = args, work
        self.cfg = DemoConfig(tasks=(A_TASK, B_TASK), n_test=args.n_test, device=args.device, threads=args.threads)
        self.device = resolve_device(self.cfg.device)
        self.folder = ensure_smollm2()
        self.tok = AutoTokenizer.from_pretrained(self.folder)
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.tests = {t: make_items(t, "test", args.n_test) for t in (A_TASK, B_TASK)}
        self.data = {}
        for t in (A_TASK, B_TASK):
            p = write_jsonl(work / f"{t}.train.jsonl", make_items(t, "train", self.cfg.n_train, seed=0))
            self.data[t] = load_jsonl(p, self.tok, self.cfg.max_length)
        self.rows: list[dict] = []
        self.step_times: dict[str, list[float]] = {}

    def model(self, dtype: str | None = None):
        from lotavec.demo import load_causal_lm

        return load_causal_lm(self.folder, dtype=dtype, device=self.device)

    def with_tickets(self, *tickets: Path):
        """A freshly loaded base with the tickets applied (lotavec.apply)."""
        from lotavec.merge.apply import apply

        m = self.model()
        for t in tickets:
            apply(m, t)
        return m

    def model_from(self, folder: Path):
        from lotavec.demo import load_causal_lm

        return load_causal_lm(folder, device=self.device)

    def score(self, group: str, label: str, model, trainable: int | None, note: str = "") -> dict:
        from lotavec.tasks import score_items

        t0 = time.perf_counter()
        row = {"group": group, "label": label, "trainable": trainable, "note": note, "order": len(self.rows)}
        for t, items in self.tests.items():
            r = score_items(model, self.tok, items, batch_size=self.cfg.eval_batch_size, bf16=self.cfg.bf16)
            row[t] = (r.correct, r.n)
        self.rows.append(row)
        log(f"{label}: A {row[A_TASK][0]}/{row[A_TASK][1]}, B {row[B_TASK][0]}/{row[B_TASK][1]} "
            f"(eval {time.perf_counter() - t0:.0f} s)")
        return row

    def train_config(self, **kw):
        from lotavec.train.pipeline import TrainConfig

        c = self.cfg
        base = dict(density=c.density, calibration_steps=c.calibration_steps, calibration_lr=c.calibration_lr,
                    steps=c.steps, lr=c.lr, batch_size=c.batch_size, max_length=c.max_length, bf16=c.bf16,
                    device=self.device, seed=c.seed)
        base.update(kw)
        return TrainConfig(**base)

    def times(self, key: str, step_times: list[float]) -> None:
        self.step_times.setdefault(key, []).extend(step_times)


def run_fft(b: Bench) -> None:
    from lotavec.demo import full_finetune

    c = b.cfg
    m = b.model("float32")
    n = sum(p.numel() for p in m.parameters())
    for task, label in ((A_TASK, "full fine-tune on A"), (B_TASK, "full fine-tune A → B")):
        r = full_finetune(m, b.data[task], c.fft_steps, c.fft_lr, pad_token_id=b.pad, batch_size=c.batch_size,
                          bf16=c.bf16, device=b.device, seed=c.seed)
        b.times("full fine-tuning", r.step_times)
        b.score("(a)" if task == A_TASK else "(b)", label, m, n, f"{c.fft_steps} steps/task, lr {c.fft_lr:g}")


def run_lota(b: Bench) -> dict:
    import torch

    import lotavec

    w = b.work
    ra = lotavec.train(b.folder, b.data[A_TASK], w / "A.lota", config=b.train_config(), tokenizer=b.tok)
    b.times("LoTA sparse training", ra.training.step_times)
    b.times("full fine-tuning", ra.calibration.step_times)
    nnz = ra.ticket.nnz
    masks = {k: v for k, v in ra.masks.items()}
    del ra  # every ticket is scored as deployed: applied to a freshly loaded base, or merged into a folder
    note = f"density {b.cfg.density:g}; calib {b.cfg.calibration_steps} + sparse {b.cfg.steps} steps, lr {b.cfg.lr:g}"
    b.score("(a)", "LoTA on A", b.with_tickets(w / "A.lota"), nnz, note)
    rb = lotavec.train(b.folder, b.data[B_TASK], w / "B.lota", config=b.train_config(), tokenizer=b.tok,
                       disjoint_from=[w / "A.lota"])
    b.times("LoTA sparse training", rb.training.step_times)
    nnz_b = rb.ticket.nnz
    lotavec.merge(b.folder, [w / "A.lota", w / "B.lota"], w / "merged_seq", overwrite=True)
    merged = b.model_from(w / "merged_seq")
    sa, sb = merged.state_dict(), rb.model.state_dict()
    same = sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
    del rb
    b.score("(b)", "LoTA A → LoTTO B = merged A + B (lotavec.merge)", merged, nnz + nnz_b,
            "B trained on top of A, disjoint; merged weights " +
            ("bit-identical to the sequentially trained model" if same else "DIFFER from the sequential model"))
    del merged
    b.score("(c)", "base + ticket B alone", b.with_tickets(w / "B.lota"), None, "the LoTTO B ticket without A")
    rb2 = lotavec.train(b.folder, b.data[B_TASK], w / "B_indep.lota", config=b.train_config(sequential=False),
                        tokenizer=b.tok, disjoint_from=[w / "A.lota"])
    b.times("LoTA sparse training", rb2.training.step_times)
    nnz_b2 = rb2.ticket.nnz
    del rb2
    b.score("(c)", "base + ticket B' alone", b.with_tickets(w / "B_indep.lota"), nnz_b2,
            "B' disjoint from A, trained from the base")
    lotavec.merge(b.folder, [w / "A.lota", w / "B_indep.lota"], w / "merged_indep", overwrite=True)
    b.score("(c)", "merged A + B' (independent tickets)", b.model_from(w / "merged_indep"), None, "lotavec.merge, sum")
    return masks


def run_random_mask(b: Bench, lota_masks: dict) -> None:
    """(d) the same sparse training on a uniform random mask with LoTA's size, over the same tensors."""
    from lotavec.train.data import Collator, batch_stream
    from lotavec.train.loop import sparse_train

    c = b.cfg
    m = b.model()
    names = sorted(lota_masks)
    params = dict(m.named_parameters())
    sizes = np.array([params[n].numel() for n in names], dtype=np.int64)
    k = int(sum(v.size for v in lota_masks.values()))
    rng = np.random.default_rng(12345)
    flat = np.sort(rng.choice(int(sizes.sum()), size=k, replace=False))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    masks = {}
    for i, n in enumerate(names):
        lo, hi = np.searchsorted(flat, [bounds[i], bounds[i + 1]])
        if hi > lo:
            masks[n] = (flat[lo:hi] - bounds[i]).astype(np.int64)
    stream = batch_stream(b.data[A_TASK].examples, c.batch_size, Collator(b.pad), seed=c.seed + 1)
    r = sparse_train(m, masks, stream, c.steps, c.lr, bf16=c.bf16, device=b.device, seed=c.seed)
    b.times("LoTA sparse training", r.step_times)
    b.score("(d)", "random mask on A (same size)", m, k, f"uniform over the same tensors; sparse {c.steps} steps, lr {c.lr:g}")


def run_lora(b: Bench, rank: int, steps: int, lr: float) -> None:
    """(e) LoRA on A, then (merged into the weights) a fresh LoRA on B."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lotavec.train.data import Collator, batch_stream
    from lotavec.train.loop import batch_loss

    c = b.cfg
    dev = torch.device(b.device)
    m = b.model("float32")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    for task, group, label in ((A_TASK, "(e)", f"LoRA r={rank} on A"), (B_TASK, "(b)", f"LoRA r={rank} A → B")):
        torch.manual_seed(c.seed)
        pm = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets))
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        stream = batch_stream(b.data[task].examples, c.batch_size, Collator(b.pad), seed=c.seed)
        pm.train()
        times = []
        for _ in range(steps):
            batch = next(stream)
            t0 = time.perf_counter()
            n_tok = int((batch["labels"][:, 1:] != -100).sum())
            (batch_loss(pm, batch, dev, c.bf16) / n_tok).backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        b.times("LoRA", times)
        n = sum(p.numel() for p in params)
        b.score(group, label, pm, n, f"{steps} steps/task, lr {lr:g}, alpha {2 * rank}" +
                ("" if task == A_TASK else "; A's adapter merged first"))
        m = pm.merge_and_unload()


def table(b: Bench, seconds: float, cpu: float, load: tuple[list[float], list[float]]) -> str:
    def cell(row, t):
        k, n = row[t]
        return f"{k / n:.2f} ({k}/{n})"

    lines = ["| | model | A: reverse_words | B: upper_words | trainable entries | notes |",
             "|---|---|---|---|---|---|"]
    for r in b.rows:
        tr = f"{r['trainable'] / 1e6:.2f} M" if r["trainable"] else "—"
        lines.append(f"| {r['group']} | {r['label']} | {cell(r, A_TASK)} | {cell(r, B_TASK)} | {tr} | {r['note']} |")
    lines += ["", "Median step time seen in these runs (batch 8, bf16 autocast; shared, noisy machine — "
              "see bench/bench_train_step.py for the controlled cost measurement):", ""]
    for k, v in b.step_times.items():
        lines.append(f"- {k}: {statistics.median(v):.2f} s/step over {len(v)} steps")
    import torch

    lines += ["", f"SmolLM2-135M-Instruct (lotavec.realmodel), device {b.device}, {torch.get_num_threads()} torch "
              f"threads, {b.args.n_test} test items per task, seed {b.cfg.seed}. Total wall time {seconds / 60:.1f} min "
              f"(process CPU {cpu / 60:.1f} min; 1-min load average {load[0][0]:.1f} at start, {load[1][0]:.1f} "
              "at end; the machine is shared, so times are noisy)."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-test", type=int, default=150, help="held-out items per task")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is faster on a busy machine)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--lora-rank", type=int, default=4)
    ap.add_argument("--lora-steps", type=int, default=50)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "quality.md"))
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0, c0, load0 = time.perf_counter(), time.process_time(), list(os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="lotavec-quality-") as tmp:
        b = Bench(args, Path(tmp))
        b.score("", "base model", b.model(), None)
        run_fft(b)
        masks = run_lota(b)
        run_random_mask(b, masks)
        run_lora(b, args.lora_rank, args.lora_steps, args.lora_lr)
    groups = ["", "(a)", "(d)", "(e)", "(b)", "(c)"]
    b.rows.sort(key=lambda r: (groups.index(r["group"]), r["order"]))
    md = table(b, time.perf_counter() - t0, time.process_time() - c0, (load0, list(os.getloadavg())))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md + "\n")
    print(md)
    log(f"written {out}")


if __name__ == "__main__":
    main()
