"""``transformers.Trainer`` integration: train only the ticket entries with the user's own stack.

Two ways in:

* :class:`LotaTrainer` — a ``Trainer`` subclass taking ``masks=``. It wraps the model with
  :class:`~lotavec.train.sparse.SparseTuner` before ``Trainer`` builds its optimizer, so the optimizer
  (and accelerate / DDP, single- or multi-node) only ever sees the trainable values. Checkpoints
  hold the sparse values (``lota_values.safetensors``: per tensor ``<name>.indices`` int64 and
  ``<name>.values``), not a dense model, and ``resume_from_checkpoint`` / ``load_best_model_at_end``
  read them back. :meth:`LotaTrainer.export` returns the trained entries.
* :class:`LotaCallback` — for a ``Trainer`` (subclass) you build yourself around a model you
  wrapped with ``SparseTuner``: it checks at the start of training that the optimizer holds only
  the tuner's values, and hands the exported entries to ``on_export`` at the end (main process only).
  Checkpoints written by a plain ``Trainer`` are dense state dicts of the parametrized model; use
  ``LotaTrainer`` or ``save_strategy="no"`` with it.

Under DDP every rank holds identical values after each step, so exporting on the main process is
enough. FSDP / DeepSpeed ZeRO-3 are not supported by this integration (see ``sparse.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback

from ..errors import NotFoundError, TrainingError
from .sparse import ExportedEntries, SparseTuner

__all__ = ["LotaTrainer", "LotaCallback", "VALUES_FILE", "save_values", "load_values"]

#: File name of the sparse values inside a checkpoint folder.
VALUES_FILE = "lota_values.safetensors"


def save_values(tuner: SparseTuner, path: str | os.PathLike) -> None:
    """Write the tuner's indices and trainable values (master dtype) to a safetensors file."""
    tensors = {}
    for name, values in tuner.values_state().items():
        tensors[f"{name}.indices"] = tuner.indices(name).contiguous()
        tensors[f"{name}.values"] = values.cpu().contiguous()
    tmp = f"{os.fspath(path)}.tmp"
    save_file(tensors, tmp, metadata={"format": "pt", "lotavec": "trainer-values"})
    os.replace(tmp, path)


def load_values(tuner: SparseTuner, path: str | os.PathLike) -> None:
    """Load values written by :func:`save_values` into ``tuner`` (indices must match).

    Raises:
        NotFoundError: no such file.
        TrainingError: the file's indices differ from the tuner's masks.
    """
    if not os.path.isfile(path):
        raise NotFoundError(f"no sparse-values checkpoint at {os.fspath(path)!r} (expected {VALUES_FILE})")
    tensors = load_file(os.fspath(path))
    state = {}
    for name in tuner.names:
        idx = tensors.get(f"{name}.indices")
        if idx is None or not torch.equal(idx, tuner.indices(name)):
            raise TrainingError(f"{os.fspath(path)}: indices for {name!r} differ from this run's mask; "
                                "resume with the same masks")
        state[name] = tensors[f"{name}.values"]
    tuner.load_values_state(state)


class LotaTrainer(Trainer):
    """A ``transformers.Trainer`` that trains only the masked entries of ``model``.

    Args:
        model: the ``PreTrainedModel`` to train (wrapped in place).
        args: ``TrainingArguments``.
        masks: ``{parameter name: sorted flat indices}`` (see :class:`SparseTuner`).
        master_dtype: dtype of the trainable values (e.g. ``torch.float32`` for a bf16 model).
        **kwargs: everything else ``Trainer`` takes (datasets, collator, callbacks...).

    Raises:
        TrainingError, TensorMismatchError: invalid masks.

    Example:
        >>> trainer = LotaTrainer(model=model, args=args, masks=masks, train_dataset=data,
        ...                       data_collator=Collator.for_tokenizer(tok))  # doctest: +SKIP
        >>> trainer.train(); entries = trainer.export()  # doctest: +SKIP
    """

    def __init__(self, model=None, args=None, *, masks: Mapping[str, object],
                 master_dtype: torch.dtype | None = None, **kwargs):
        if model is None:
            raise TrainingError("LotaTrainer needs a model (model_init is not supported)")
        self.tuner = SparseTuner(model, masks, master_dtype=master_dtype)
        super().__init__(model=model, args=args, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the sparse values (not a dense model), the tokenizer and the training arguments."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        save_values(self.tuner, os.path.join(output_dir, VALUES_FILE))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_values(self.tuner, os.path.join(resume_from_checkpoint, VALUES_FILE))

    def _load_best_model(self) -> None:
        load_values(self.tuner, os.path.join(self.state.best_model_checkpoint, VALUES_FILE))

    def export(self, *, changed_only: bool = False) -> ExportedEntries:
        """The trained entries, ``{name: (indices, values, dtype)}`` (see :meth:`SparseTuner.export`)."""
        return self.tuner.export(changed_only=changed_only)

    def merge_and_unwrap(self) -> torch.nn.Module:
        """Write the trained values into the model and remove the wrappers (a plain model again)."""
        return self.tuner.merge_into_model()


def _check_optimizer(tuner: SparseTuner, optimizer) -> None:
    allowed = {id(p) for p in tuner.trainable_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in allowed:
                raise TrainingError(
                    f"the optimizer holds a parameter of shape {tuple(p.shape)} that is not one of the "
                    "SparseTuner's trainable values, so entries outside the ticket could change; build the "
                    "Trainer after wrapping the model with SparseTuner, or use LotaTrainer")


class LotaCallback(TrainerCallback):
    """Guard and export hook for a ``Trainer`` around a model wrapped with :class:`SparseTuner`.

    Args:
        tuner: the ``SparseTuner`` wrapping the trainer's model.
        on_export: called once at the end of training on the main process with
            :meth:`SparseTuner.export`'s entries.

    Raises (at train begin):
        TrainingError: the optimizer holds parameters other than the tuner's values.
    """

    def __init__(self, tuner: SparseTuner, on_export: Callable[[ExportedEntries], None] | None = None):
        self.tuner = tuner
        self.on_export = on_export

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is not None:
            _check_optimizer(self.tuner, optimizer)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.on_export is not None and state.is_world_process_zero:
            self.on_export(self.tuner.export())
        return control
