"""CUDA, end to end (skipped without CUDA): ``lotavec.train`` with ``device="cuda"`` and bf16 autocast
exports a ticket that is the trained model; a LoTTO ticket trained after it on the GPU is disjoint and
both merge (on the CPU) into the sequentially trained model; ``LotaTrainer`` trains only its ticket on
the GPU. ``lotavec train --device cuda`` is tested in tests/cli/test_cli_train.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bits, random_masks
from test_pipeline import (
    CFG,
    assert_ticket_is_the_trained_model,
    bitsof,
    folder_state,
    model_state,
    task,
    write_jsonl,
)

import lotavec
from lotavec.merge.config import MergeParams
from lotavec.train.pipeline import TrainConfig

pytestmark = pytest.mark.cuda

GPU = dict(CFG, device="cuda", bf16=True)


@pytest.fixture(scope="module")
def runs(tiny_model_dirs, tmp_path_factory):
    base = tiny_model_dirs["llama"]
    root = tmp_path_factory.mktemp("cuda_pipeline")
    a = lotavec.train(base, write_jsonl(root / "add.jsonl", task("add")), root / "a.lota", config=TrainConfig(**GPU))
    b = lotavec.train(base, write_jsonl(root / "echo.jsonl", task("echo")), root / "b.lota", config=TrainConfig(**GPU),
                      disjoint_from=[a.path])
    return base, a, b


def test_cuda_ticket_is_the_trained_model(runs, tmp_path):
    base, a, _ = runs
    assert next(a.model.parameters()).device.type == "cuda"
    trained = {n: t.cpu() for n, t in model_state(a.model).items()}
    assert_ticket_is_the_trained_model(base, a.path, trained, tmp_path)


def test_cuda_lotto_is_disjoint_and_merges_into_the_sequential_model(runs, tmp_path):
    base, a, b = runs
    ta, tb = lotavec.load_ticket(a.path), lotavec.load_ticket(b.path)
    assert all(np.intersect1d(ta.indices(n), tb.indices(n)).size == 0 for n in tb.names if n in ta)
    lotavec.merge(base, [a.path, b.path], tmp_path / "ab", params=MergeParams(method="disjoint"))
    merged = folder_state(tmp_path / "ab")
    seq = {n: t.cpu() for n, t in model_state(b.model).items()}
    for n in merged:
        assert torch.equal(bitsof(merged[n]), bitsof(seq[n])), n


def test_cuda_lota_trainer_trains_only_its_ticket(tmp_path, tok):
    from test_hf import _data
    from transformers import TrainingArguments

    from lotavec.testing import make_tiny_model
    from lotavec.train.data import Collator
    from lotavec.train.hf import LotaTrainer

    model = make_tiny_model("llama", dtype="float32", seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_masks(model, 0.1)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4,
                             learning_rate=1e-2, weight_decay=0.1, lr_scheduler_type="constant", bf16=True,
                             report_to=[], disable_tqdm=True, seed=0, save_strategy="no")
    trainer = LotaTrainer(model=model, args=args, masks=masks, train_dataset=_data(tok),
                          data_collator=Collator.for_tokenizer(tok))
    trainer.train()
    plain = trainer.merge_and_unwrap()
    changed = 0
    for name, p in plain.named_parameters():
        assert p.device.type == "cuda"
        on = torch.zeros(p.numel(), dtype=torch.bool)
        on[masks[name]] = True
        got = bits(p.detach().cpu())
        assert torch.equal(got[~on], bits(base[name])[~on]), name
        changed += int((got[on] != bits(base[name])[on]).sum())
    assert changed > 0.5 * sum(len(m) for m in masks.values())

