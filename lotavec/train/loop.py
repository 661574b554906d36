"""Training loops: dense fine-tuning (mask calibration) and exact sparse training of a ticket.

Both loops share one step: per-token mean cross-entropy over the counted tokens (``labels != -100``)
of a whole gradient-accumulation group, optional bf16 autocast (CPU or CUDA), gradient clipping,
a warmup + constant/linear/cosine schedule. They report progress through ``progress(stage, done,
total)`` (the stage reads ``"train loss=2.3456"``) and structured records through ``on_log``.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrainingError
from .data import IGNORE_INDEX
from .sparse import ExportedEntries, SparseTuner, optimizer_state_bytes

__all__ = ["TrainResult", "SparseTrainResult", "dense_finetune", "sparse_train", "make_optimizer",
           "evaluate", "batch_loss", "train_step"]

Progress = Callable[[str, int, int], None]
Batch = Mapping[str, torch.Tensor]
OPTIMIZERS = ("adamw", "sgd", "adafactor")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainResult:
    """What a training run measured.

    Attributes:
        losses: training loss (per-token mean over counted tokens) of each optimizer step.
        eval_losses: ``[(step, loss)]`` when evaluation batches were given.
        step_times: wall seconds of each optimizer step (forward, backward, update; not data loading).
        peak_memory_bytes: CUDA ``max_memory_allocated`` during the run, or on CPU the process's
            peak resident set size (a process-lifetime high-water mark).
        memory_kind: ``"cuda_max_allocated"`` or ``"cpu_peak_rss"``.
        optimizer_state_bytes: bytes of optimizer state at the end.
        trainable: number of trainable entries; total: number of model parameters.
        tokens: counted (loss) tokens seen.
    """

    losses: list[float] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    peak_memory_bytes: int = 0
    memory_kind: str = ""
    optimizer_state_bytes: int = 0
    trainable: int = 0
    total: int = 0
    tokens: int = 0

    def stats(self) -> dict:
        """A JSON-ready summary (median step time, memory, counts, first/last loss)."""
        times = sorted(self.step_times)
        return {"steps": len(self.losses), "first_loss": self.losses[0] if self.losses else None,
                "last_loss": self.losses[-1] if self.losses else None,
                "eval_losses": [list(e) for e in self.eval_losses],
                "median_step_s": times[len(times) // 2] if times else None, "total_s": sum(times),
                "peak_memory_bytes": self.peak_memory_bytes, "memory_kind": self.memory_kind,
                "optimizer_state_bytes": self.optimizer_state_bytes, "trainable": self.trainable,
                "total_parameters": self.total, "loss_tokens": self.tokens}


@dataclass
class SparseTrainResult(TrainResult):
    """:class:`TrainResult` plus the exported entries (see :meth:`SparseTuner.export`)."""

    entries: ExportedEntries = field(default_factory=dict)


def make_optimizer(params: Sequence[nn.Parameter], name: str, lr: float, *, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9,
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    """Build ``"adamw"``, ``"sgd"`` (with momentum) or ``"adafactor"`` (transformers, fixed lr).

    Raises:
        TrainingError: unknown name or non-positive learning rate.
    """
    if not lr > 0:
        raise TrainingError(f"learning rate must be positive, found {lr}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    raise TrainingError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _schedule(optimizer, steps: int, warmup_steps: int, schedule: str):
    if schedule not in SCHEDULES:
        raise TrainingError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        frac = (step - warmup_steps) / max(1, steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1.0 - frac)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _count(batch: Batch) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def batch_loss(model: nn.Module, batch: Batch, device: torch.device, bf16: bool) -> torch.Tensor:
    """Summed next-token cross-entropy (fp32) over the counted tokens of one batch."""
    ids = batch["input_ids"].to(device)
    labels = batch["labels"].to(device)
    mask = batch.get("attention_mask")
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=None if mask is None else mask.to(device)).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], *, device: str | torch.device = "cpu",
             bf16: bool = False) -> float:
    """Per-token mean loss over all counted tokens of ``batches`` (model left in its mode).

    Raises:
        TrainingError: the batches hold no counted token.
    """
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    try:
        for b in batches:
            total += float(batch_loss(model, b, dev, bf16))
            n += _count(b)
    finally:
        model.train(was_training)
    if n == 0:
        raise TrainingError("evaluation batches contain no counted (label != -100) token")
    return total / n


def _cycle(batches: Iterable[Batch]) -> Iterator[Batch]:
    if iter(batches) is batches:  # a one-shot iterator: consume it
        yield from batches
        return
    while True:
        n = 0
        for b in batches:
            n += 1
            yield b
        if n == 0:
            raise TrainingError("no training batches")


def _device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' requested but torch.cuda.is_available() is False; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise TrainingError(f"device must be 'cpu' or 'cuda', found {str(device)!r}")
    return dev


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def train_step(model: nn.Module, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer,
               group: Sequence[Batch], *, device: torch.device, bf16: bool = False,
               max_grad_norm: float | None = None) -> float:
    """One optimizer step over a gradient-accumulation group of batches.

    The loss is the per-token mean over every counted token of the whole group (not a mean of
    per-batch means). Gradients are cleared afterwards; on CUDA the step is synchronised.

    Returns:
        The step's loss.

    Raises:
        TrainingError: the group holds no counted token.
    """
    n_tokens = sum(_count(b) for b in group)
    if n_tokens == 0:
        raise TrainingError("the batches of this step contain no counted (label != -100) token")
    total = 0.0
    for b in group:
        loss = batch_loss(model, b, device, bf16) / n_tokens
        loss.backward()
        total += float(loss.detach())
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return total


def _run(model: nn.Module, params: list[nn.Parameter], batches: Iterable[Batch], steps: int, lr: float, *,
         opt: dict, dev: torch.device, bf16: bool, grad_accum: int, max_grad_norm: float | None,
         warmup_steps: int, schedule: str, eval_batches, eval_every: int, stage: str,
         progress: Progress | None, on_log: Callable[[dict], None] | None) -> TrainResult:
    """The shared optimisation loop (``model`` already on ``dev``, ``params`` the trainable ones)."""
    if steps < 1 or grad_accum < 1:
        raise TrainingError(f"steps and grad_accum must be at least 1, found steps={steps}, grad_accum={grad_accum}")
    optimizer = make_optimizer(params, lr=lr, **opt)
    scheduler = _schedule(optimizer, steps, warmup_steps, schedule)
    res = TrainResult(trainable=sum(p.numel() for p in params), total=sum(p.numel() for p in model.parameters()))
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    stream = _cycle(batches)
    model.train()
    for step in range(1, steps + 1):
        group = []
        for _ in range(grad_accum):
            try:
                group.append(next(stream))
            except StopIteration:
                raise TrainingError(f"training batches ran out at step {step}: {steps} steps × grad_accum "
                                    f"{grad_accum} need {steps * grad_accum} batches") from None
        n_tokens = sum(_count(b) for b in group)
        t0 = time.perf_counter()
        try:
            total = train_step(model, params, optimizer, group, device=dev, bf16=bf16,
                               max_grad_norm=max_grad_norm)
        except TrainingError as e:
            raise TrainingError(f"step {step}: {e}") from None
        scheduler.step()
        res.step_times.append(time.perf_counter() - t0)
        res.losses.append(total)
        res.tokens += n_tokens
        record = {"stage": stage, "step": step, "loss": total, "lr": scheduler.get_last_lr()[0]}
        if eval_batches is not None and ((eval_every and step % eval_every == 0) or step == steps):
            ev = evaluate(model, eval_batches, device=dev, bf16=bf16)
            res.eval_losses.append((step, ev))
            record["eval_loss"] = ev
        if on_log is not None:
            on_log(record)
        if progress is not None:
            progress(f"{stage} loss={total:.4f}", step, steps)
    res.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    if dev.type == "cuda":
        res.peak_memory_bytes, res.memory_kind = int(torch.cuda.max_memory_allocated(dev)), "cuda_max_allocated"
    else:
        res.peak_memory_bytes, res.memory_kind = _peak_rss_bytes(), "cpu_peak_rss"
    return res


def dense_finetune(model: nn.Module, batches: Iterable[Batch], steps: int, lr: float, *,
                   optimizer: str = "adamw", weight_decay: float = 0.0, bf16: bool = False,
                   device: str = "cpu", grad_accum: int = 1, seed: int = 0,
                   max_grad_norm: float | None = 1.0, warmup_steps: int = 0, schedule: str = "constant",
                   eval_batches: Sequence[Batch] | None = None, eval_every: int = 0,
                   progress: Progress | None = None, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Full fine-tuning in memory (mask calibration): every floating parameter trains.

    Args:
        model: a causal LM (``model(input_ids, attention_mask).logits``); trained in place and
            moved to ``device``.
        batches: batches of ``{"input_ids", "attention_mask", "labels"}``; a re-iterable
            (list) is cycled, a one-shot iterator is consumed (e.g. :func:`~lotavec.train.data.batch_stream`).
        steps: optimizer steps (each over ``grad_accum`` batches).
        lr: peak learning rate.
        optimizer: ``"adamw"``, ``"sgd"`` (momentum 0.9) or ``"adafactor"``.
        weight_decay: decoupled (AdamW) or L2 (SGD) weight decay.
        bf16: bf16 autocast (CUDA or CPU).
        device: ``"cpu"`` or ``"cuda"``.
        seed: seeds torch before training (dropout); data order is the batches' business.
        max_grad_norm: clip the gradient norm (None or 0: off).
        warmup_steps, schedule: linear warmup, then ``"constant"``, ``"linear"`` or ``"cosine"``.
        eval_batches, eval_every: evaluate every ``eval_every`` steps (0: only at the end).
        progress, on_log: callbacks (see the module docstring).

    Returns:
        :class:`TrainResult` (losses, timing, memory).

    Raises:
        TrainingError: bad arguments, no CUDA, batches that run out or hold no counted token.
    """
    dev = _device(device)
    torch.manual_seed(seed)
    model.to(dev)
    for p in model.parameters():
        p.requires_grad_(p.dtype.is_floating_point)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = {"name": optimizer, "weight_decay": weight_decay}
    return _run(model, params, batches, steps, lr, opt=opt, dev=dev, bf16=bf16, grad_accum=grad_accum,
                max_grad_norm=max_grad_norm, warmup_steps=warmup_steps, schedule=schedule,
                eval_batches=eval_batches, eval_every=eval_every, stage="calibrate", progress=progress,
                on_log=on_log)


def sparse_train(model: nn.Module, masks: Mapping[str, object], batches: Iterable[Batch], steps: int,
                 lr: float, *, optimizer: str = "adamw", weight_decay: float = 0.0, bf16: bool = False,
                 device: str = "cpu", grad_accum: int = 1, seed: int = 0,
                 max_grad_norm: float | None = 1.0, warmup_steps: int = 0, schedule: str = "constant",
                 master_dtype: torch.dtype | None = torch.float32,
                 eval_batches: Sequence[Batch] | None = None, eval_every: int = 0,
                 keep: str = "merged", progress: Progress | None = None,
                 on_log: Callable[[dict], None] | None = None) -> SparseTrainResult:
    """Train only the masked entries of ``model``; every other entry stays bit-identical.

    Args:
        model, batches, steps, lr, optimizer, weight_decay, bf16, device, grad_accum, seed,
        max_grad_norm, warmup_steps, schedule, eval_batches, eval_every, progress, on_log:
            as in :func:`dense_finetune`.
        masks: ``{parameter name: sorted flat indices}`` (see :class:`SparseTuner`).
        master_dtype: dtype of the trainable values (default fp32 master values; ``None`` trains
            in the model dtype). Exported values are rounded to the model dtype.
        keep: after training, ``"merged"`` leaves the trained values in the model (a plain module)
            and ``"base"`` restores the base weights.

    Returns:
        :class:`SparseTrainResult`; ``entries`` = ``{name: (indices, values, dtype)}`` in the
        model dtype, ``optimizer_state_bytes`` counts only the trainable entries' state.

    Raises:
        TrainingError, TensorMismatchError: bad masks or arguments (see :class:`SparseTuner`).
    """
    if keep not in ("merged", "base"):
        raise TrainingError(f"keep must be 'merged' or 'base', found {keep!r}")
    dev = _device(device)
    torch.manual_seed(seed)
    model.to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    tuner = SparseTuner(model, masks, master_dtype=master_dtype)
    try:
        opt = {"name": optimizer, "weight_decay": weight_decay}
        res = _run(model, tuner.trainable_parameters(), batches, steps, lr, opt=opt, dev=dev, bf16=bf16,
                   grad_accum=grad_accum, max_grad_norm=max_grad_norm, warmup_steps=warmup_steps,
                   schedule=schedule, eval_batches=eval_batches, eval_every=eval_every, stage="train",
                   progress=progress, on_log=on_log)
        entries = tuner.export()
    except BaseException:
        tuner.restore_base()
        raise
    if keep == "merged":
        tuner.merge_into_model()
    else:
        tuner.restore_base()
    res.total = n_params  # the model's own parameters, not counting the trainable copies
    out = SparseTrainResult(**vars(res))
    out.entries = entries
    return out
