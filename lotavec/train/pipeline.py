"""The LoTA pipeline: calibrate → mask → sparse training → ticket, in one call.

1. **Calibrate**: dense fine-tuning for ``calibration_steps`` in memory (or take the mask from an
   existing fine-tuned checkpoint or ticket, ``mask_from``).
2. **Mask**: exact top-k of ``|θ_T − θ_0|`` over the candidate matrices, one global threshold by
   default (the extraction issue's selection, :mod:`lotavec.mask`), excluding the entries of
   earlier tickets (``disjoint_from``, LoTTO).
3. **Sparse training**: reset to θ_0 and train only the masked entries (:mod:`lotavec.train.sparse`):
   every other entry stays bit-identical, whatever the optimizer.
4. **Export**: a lossless ticket (values relative to the *original* base) with provenance.

Sequential tickets (LoTTO): with ``disjoint_from=[A, ...]`` and ``sequential=True`` (default), the
earlier tickets are applied to the base first, so task B is learned on top of A, and B's mask
excludes A's entries. Because the tickets are disjoint, merging A and B into the base with
``sum`` reproduces the sequentially trained model bit-exactly.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import DisjointnessError, TrainingError
from ..format.dtypes import TICKET_DTYPES
from ..mask import Candidate, select_topk
from ..models import open_model, select_candidates
from ..ticket import Ticket, TicketTensor, TicketWriter, load_ticket
from ..torchio import to_storage
from .data import Collator, TokenizedData, batch_stream, fixed_batches, load_jsonl
from .loop import SparseTrainResult, TrainResult, dense_finetune, sparse_train

Progress = Callable[[str, int, int], None] | None


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train` (validated on construction).

    Attributes:
        density: fraction of candidate parameters in the ticket (LoTA's 1 − sparsity).
        calibration_steps: dense fine-tuning steps used to find the mask (0 needs ``mask_from``).
        steps: sparse training steps.
        lr: learning rate of sparse training; ``calibration_lr`` of calibration (default ``lr``).
        batch_size, grad_accum, max_length: batching (tokens per example are cut to max_length).
        optimizer: ``"adamw"``, ``"sgd"`` or ``"adafactor"``; ``weight_decay`` its decay.
        bf16: bf16 autocast; ``device``: ``"cpu"`` or ``"cuda"``.
        seed: seeds data order, dropout and anything random.
        scope: ``"global"`` (one threshold, LoTA) or ``"tensor"``.
        embeddings, lm_head, norms, biases, include, exclude: candidate tensors, as for extraction.
        warmup_steps, schedule: learning-rate schedule (``constant``, ``linear``, ``cosine``).
        calibration_dtype: dtype of the model during calibration (``"float32"`` keeps small
            updates of a bf16 model from rounding away; ``None`` keeps the model's dtype).
        sequential: with ``disjoint_from``, train on top of the earlier tickets (LoTTO).
        eval_every: evaluate every N steps when eval data is given (0: at the end only).
    """

    density: float = 0.1
    calibration_steps: int = 50
    steps: int = 100
    lr: float = 1e-4
    calibration_lr: float | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_length: int = 512
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    bf16: bool = False
    device: str = "cpu"
    seed: int = 0
    scope: str = "global"
    embeddings: bool = False
    lm_head: bool = False
    norms: bool = False
    biases: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    warmup_steps: int = 0
    schedule: str = "constant"
    calibration_dtype: str | None = "float32"
    sequential: bool = True
    eval_every: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise TrainingError(f"--density must be in (0, 1], got {self.density}")
        for name in ("calibration_steps", "steps", "batch_size", "grad_accum", "max_length", "warmup_steps", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0 or (name in ("batch_size", "grad_accum", "max_length") and v < 1):
                raise TrainingError(f"--{name.replace('_', '-')} must be a non-negative integer (≥ 1 for sizes), got {v!r}")
        if self.steps < 1:
            raise TrainingError("--steps must be at least 1")
        if not self.lr > 0 or (self.calibration_lr is not None and not self.calibration_lr > 0):
            raise TrainingError("--lr must be positive")
        if self.scope not in ("global", "tensor"):
            raise TrainingError(f"--scope must be global or tensor, got {self.scope!r}")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise TrainingError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.calibration_dtype not in (None, "float32", "bfloat16", "float16"):
            raise TrainingError(f"calibration_dtype must be float32, bfloat16, float16 or None, got {self.calibration_dtype!r}")


@dataclass
class TrainOutput:
    """What :func:`train` produced.

    Attributes:
        ticket: the exported ticket (file-backed when a path was given).
        path: where it was written, or ``None``.
        masks: ``{tensor name: sorted flat indices}`` the ticket trains.
        calibration: the calibration run's :class:`~lotavec.train.loop.TrainResult` (None with ``mask_from``).
        training: the sparse run's :class:`~lotavec.train.loop.SparseTrainResult`.
        model: the trained model (base + earlier tickets + this one), in memory.
        seconds: wall time of the whole call.
    """

    ticket: Ticket
    path: str | None
    masks: dict[str, np.ndarray]
    calibration: TrainResult | None
    training: SparseTrainResult
    model: Any
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)


def load_base(base: Any, *, dtype: str | None = None):
    """``(model, tokenizer, folder or None)`` from a folder path, or a model given as is."""
    if isinstance(base, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.exists(base):
            from .. import hub

            if isinstance(base, str) and hub.parse_ref(base) is not None:
                base = hub.resolve_model(base).path

        open_model(base).close()
        from transformers.utils import logging as hf_logging

        was = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # the library does not print; the CLI shows its own bars
        try:
            model = AutoModelForCausalLM.from_pretrained(os.fspath(base), dtype=dtype or "auto")
        finally:
            if was:
                hf_logging.enable_progress_bar()
        tok = AutoTokenizer.from_pretrained(os.fspath(base))
        return model, tok, os.fspath(base)
    return base, None, None


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _mask_from_delta(model, start: dict[str, torch.Tensor], cfg: TrainConfig, exclude: dict[str, np.ndarray],
                     progress: Progress) -> dict[str, np.ndarray]:
    """Top-k of |θ_T − θ_0| over the candidates, keyed by module parameter names."""
    src = open_model(model, role="calibrated model")
    names = [n for n in select_candidates(src, embeddings=cfg.embeddings, lm_head=cfg.lm_head, norms=cfg.norms,
                                          biases=cfg.biases, include=cfg.include, exclude=cfg.exclude)
             if src.info(n)[0] in TICKET_DTYPES]
    if not names:
        raise TrainingError("no candidate tensors to train: check include/exclude")
    params = dict(model.named_parameters())
    cands = []
    for n in names:
        m = src.module_name(n)

        def scores(m: str = m) -> np.ndarray:
            d = params[m].detach().float().cpu().reshape(-1) - start[m].float().cpu().reshape(-1)
            return d.abs().numpy()

        cands.append(Candidate(n, src.numel(n), scores, exclude.get(n)))
    sel = select_topk(cands, density=cfg.density, scope=cfg.scope, progress=progress)
    return {n: idx for n, idx in sel.items()}


def _mask_from_source(base_model, mask_from: Any, cfg: TrainConfig, exclude, progress) -> dict[str, np.ndarray]:
    """Mask from an existing ticket (its entries) or a fine-tuned checkpoint (its top-k delta)."""
    if isinstance(mask_from, Ticket) or (isinstance(mask_from, (str, os.PathLike)) and os.path.isfile(mask_from)):
        tk = mask_from if isinstance(mask_from, Ticket) else load_ticket(mask_from)
        return {n: tk.indices(n) for n in tk.names}
    from ..extraction import extract

    r = extract(base_model, mask_from, None, density=cfg.density, scope=cfg.scope, embeddings=cfg.embeddings,
                lm_head=cfg.lm_head, norms=cfg.norms, biases=cfg.biases, include=cfg.include, exclude=cfg.exclude,
                disjoint_from=[], progress=progress)
    out = {n: r.ticket.indices(n) for n in r.ticket.names}
    for n, ex in exclude.items():
        if n in out:
            out[n] = np.setdiff1d(out[n], ex, assume_unique=True)
    return out


def train(base: Any, data: str | os.PathLike | TokenizedData, out: str | os.PathLike | None = None, *,
          config: TrainConfig | None = None, eval_data: str | os.PathLike | TokenizedData | None = None,
          tokenizer: Any = None, disjoint_from: Sequence[Any] = (), mask_from: Any = None,
          base_ref: dict[str, Any] | None = None, progress: Progress = None,
          on_log: Callable[[dict], None] | None = None) -> TrainOutput:
    """Train a lottery ticket on a task and export it.

    Args:
        base: base model folder (HF, safetensors) or a ``transformers`` causal LM (then pass
            ``tokenizer``); a module is trained in place.
        data: training JSONL (``{"prompt","completion"}``, ``{"messages"}`` or ``{"text"}`` lines),
            or already tokenized data.
        out: ticket file to write (atomic); ``None`` keeps it in memory.
        config: :class:`TrainConfig`.
        eval_data: evaluation JSONL (loss reported during and after training).
        tokenizer: needed when ``base`` is a module.
        disjoint_from: earlier tickets (LoTTO): excluded from the mask, applied first when
            ``config.sequential``.
        mask_from: take the mask from this ticket or fine-tuned checkpoint instead of calibrating.
        base_ref: ``{"repo_id", "revision"}`` of the base, recorded in the ticket.
        progress, on_log: callbacks (``progress(stage, done, total)``; structured log records).

    Returns:
        :class:`TrainOutput`.

    Raises:
        TrainingError, DataError, DisjointnessError, ModelError.
    """
    cfg = config or TrainConfig()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model, tok, folder = load_base(base)
    tokenizer = tokenizer or tok
    if tokenizer is None and not isinstance(data, TokenizedData):
        raise TrainingError("pass tokenizer= when the base is a model object and data is a file")
    ds = data if isinstance(data, TokenizedData) else load_jsonl(data, tokenizer, cfg.max_length, progress=progress)
    ev = None
    if eval_data is not None:
        ev = eval_data if isinstance(eval_data, TokenizedData) else load_jsonl(eval_data, tokenizer, cfg.max_length)
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    collator = Collator(pad)
    eval_batches = fixed_batches(ev.examples, cfg.batch_size, collator) if ev is not None else None
    earlier = [t if isinstance(t, Ticket) else load_ticket(t) for t in disjoint_from]
    orig = _state(model)  # the original base, for ticket values and fingerprints
    if earlier and cfg.sequential:
        from ..merge.apply import apply

        for t in earlier:
            apply(model, t)
    start = _state(model) if (earlier and cfg.sequential) else orig
    src0 = open_model(model, role="base")
    exclude: dict[str, np.ndarray] = {}
    for t in earlier:
        for n in t.names:
            idx = t.indices(n)
            exclude[n] = np.union1d(exclude[n], idx) if n in exclude else idx

    calib = None
    if mask_from is not None:
        masks = _mask_from_source(folder or model, mask_from, cfg, exclude, progress)
    else:
        if cfg.calibration_steps < 1:
            raise TrainingError("--calibration-steps must be ≥ 1, or take the mask from a ticket/checkpoint")
        orig_dtype = next(model.parameters()).dtype
        if cfg.calibration_dtype is not None:
            model.to(getattr(torch, cfg.calibration_dtype))
        calib = dense_finetune(model, batch_stream(ds.examples, cfg.batch_size, collator, seed=cfg.seed),
                               cfg.calibration_steps, cfg.calibration_lr or cfg.lr, optimizer=cfg.optimizer,
                               weight_decay=cfg.weight_decay, bf16=cfg.bf16, device=cfg.device,
                               grad_accum=cfg.grad_accum, seed=cfg.seed, warmup_steps=cfg.warmup_steps,
                               schedule=cfg.schedule, progress=progress, on_log=on_log)
        masks = _mask_from_delta(model, start, cfg, exclude, progress)
        model.to(orig_dtype)
        model.load_state_dict(start)  # restart from θ0 (plus earlier tickets), exactly
        for p in model.parameters():
            p.requires_grad_(False)
    module_masks = {src0.module_name(n): idx for n, idx in masks.items() if idx.size}
    if not module_masks:
        raise TrainingError("the mask is empty: nothing to train (density too low or everything excluded)")
    res = sparse_train(model, module_masks, batch_stream(ds.examples, cfg.batch_size, collator, seed=cfg.seed + 1),
                       cfg.steps, cfg.lr, optimizer=cfg.optimizer, weight_decay=cfg.weight_decay, bf16=cfg.bf16,
                       device=cfg.device, grad_accum=cfg.grad_accum, seed=cfg.seed, warmup_steps=cfg.warmup_steps,
                       schedule=cfg.schedule, eval_batches=eval_batches, eval_every=cfg.eval_every,
                       progress=progress, on_log=on_log)
    to_ckpt = {src0.module_name(n): n for n in masks}
    tensors = []
    for mname, (idx, vals, dtype) in res.entries.items():
        base_np, bdt = to_storage(orig[mname].cpu())
        if bdt != dtype:
            raise TrainingError(f"tensor {mname!r}: trained as {dtype} but the base holds {bdt}")
        tensors.append(TicketTensor.from_finetuned(to_ckpt.get(mname, mname), base_np, vals, idx, dtype))
    tensors.sort(key=lambda t: t.name)
    summary = _summary(cfg, ds, calib, res, masks, earlier, mask_from)
    ticket = _write(tensors, out, base_ref or {}, _deterministic(summary))
    for t in earlier:
        for n in ticket.names:
            if n in t and np.intersect1d(ticket.indices(n), t.indices(n)).size:
                raise DisjointnessError(f"tensor {n!r}: the new ticket overlaps {t.path or 'an earlier ticket'}")
    return TrainOutput(ticket, os.fspath(out) if out is not None else None, masks, calib, res, model,
                       time.perf_counter() - t0, summary)


def _summary(cfg: TrainConfig, ds: TokenizedData, calib: TrainResult | None, res: SparseTrainResult,
             masks: dict[str, np.ndarray], earlier: list[Ticket], mask_from: Any) -> dict[str, Any]:
    cand = int(sum(m.size for m in masks.values()))
    return {
        "lotavec_version": __version__,
        "method": "LoTTO" if earlier else "LoTA",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "selection": {"rule": "topk_abs_delta", "scope": cfg.scope, "density": cfg.density, "selected": cand,
                      "source": "ticket_or_checkpoint" if mask_from is not None else "calibration",
                      "disjoint_from": [t.path or "in-memory ticket" for t in earlier]},
        "seeds": {"seed": cfg.seed, "data_order_calibration": cfg.seed, "data_order_training": cfg.seed + 1},
        "training": {
            "data": {"path": ds.path, "sha256": ds.fingerprint, **ds.stats()},
            "calibration": calib.stats() if calib is not None else None,
            "sparse": res.stats(),
            "losses": [round(x, 5) for x in res.losses],
        },
    }


_RUN_DEPENDENT = ("median_step_s", "total_s", "peak_memory_bytes", "memory_kind")


def _deterministic(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary without timings and memory readings, so the same run gives the same ticket bytes."""
    out = dict(summary)
    tr = dict(out["training"])
    for key in ("calibration", "sparse"):
        if tr.get(key) is not None:
            tr[key] = {k: v for k, v in tr[key].items() if k not in _RUN_DEPENDENT}
    out["training"] = tr
    return out


def _write(tensors: list[TicketTensor], out, base_ref: dict[str, Any], summary: dict[str, Any]) -> Ticket:
    if out is None:
        return Ticket(tensors, base=base_ref, provenance=summary)
    with TicketWriter(out, base=base_ref, provenance=summary) as w:
        for t in tensors:
            w.add(t)
    return load_ticket(out)
