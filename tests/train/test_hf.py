"""transformers.Trainer integration: LotaTrainer trains, checkpoints, resumes and exports sparsely."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import bits, random_masks
from transformers import Trainer, TrainingArguments

from lotavec.errors import TrainingError
from lotavec.testing import make_tiny_model
from lotavec.train.data import Collator
from lotavec.train.hf import VALUES_FILE, LotaCallback, LotaTrainer
from lotavec.train.sparse import SparseTuner


def _data(tok, n=16):
    out = []
    for i in range(n):
        p, c = tok(f"{i}+{i}=")["input_ids"], tok(str(2 * i))["input_ids"] + [tok.eos_token_id]
        out.append({"input_ids": p + c, "labels": [-100] * len(p) + c})
    return out


def _args(out, steps, **kw):
    kw = {"save_strategy": "no", **kw}
    return TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=steps,
                             learning_rate=1e-2, weight_decay=0.1, lr_scheduler_type="constant",
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0, **kw)


def test_lota_trainer_trains_only_the_ticket_and_exports(tmp_path, tok):
    model = make_tiny_model("llama", dtype="float32", seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_masks(model, 0.1)
    trainer = LotaTrainer(model=model, args=_args(tmp_path, 4, save_strategy="steps", save_steps=2),
                          masks=masks, train_dataset=_data(tok), data_collator=Collator.for_tokenizer(tok))
    trainer.train()
    n_opt = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert n_opt == trainer.tuner.num_trainable() == sum(len(m) for m in masks.values())
    entries = trainer.export()
    assert os.path.isfile(tmp_path / "checkpoint-4" / VALUES_FILE)
    assert not os.path.exists(tmp_path / "checkpoint-4" / "model.safetensors")  # no dense copy
    plain = trainer.merge_and_unwrap()
    changed = 0
    for name, p in plain.named_parameters():
        on = torch.zeros(p.numel(), dtype=torch.bool)
        on[masks[name]] = True
        assert torch.equal(bits(p)[~on], bits(base[name])[~on]), name
        assert np.array_equal(p.detach().reshape(-1).numpy()[entries[name][0]], entries[name][1])
        changed += int((bits(p)[on] != bits(base[name])[on]).sum())
    assert changed > 0.5 * n_opt


def test_lota_trainer_resumes_from_sparse_checkpoint(tmp_path, tok):
    def run(out, steps, resume=None):
        model = make_tiny_model("llama", dtype="float32", seed=0)
        trainer = LotaTrainer(model=model, args=_args(out, steps, save_strategy="steps", save_steps=2),
                              masks=random_masks(model, 0.1), train_dataset=_data(tok),
                              data_collator=Collator.for_tokenizer(tok))
        trainer.train(resume_from_checkpoint=resume)
        return trainer.export()

    straight = run(tmp_path / "a", 4)
    run(tmp_path / "b", 2)
    resumed = run(tmp_path / "b", 4, resume=str(tmp_path / "b" / "checkpoint-2"))
    two = run(tmp_path / "c", 2)
    for name, (_, vals, _) in straight.items():
        np.testing.assert_allclose(resumed[name][1], vals, rtol=1e-5, atol=1e-6)
    # resuming went on training: the result is not the 2-step one it started from
    assert any(not np.array_equal(resumed[n][1], two[n][1]) for n in two)


def test_callback_with_plain_trainer_exports_and_guards(tmp_path, tok):
    model = make_tiny_model("llama", dtype="float32", seed=0)
    tuner = SparseTuner(model, random_masks(model, 0.1))
    got = {}
    trainer = Trainer(model=model, args=_args(tmp_path, 2), train_dataset=_data(tok),
                      data_collator=Collator.for_tokenizer(tok), callbacks=[LotaCallback(tuner, got.update)])
    trainer.train()
    assert set(got) == set(tuner.names)

    extra = torch.nn.Parameter(torch.zeros(3))
    model2 = make_tiny_model("llama", dtype="float32", seed=0)
    tuner2 = SparseTuner(model2, random_masks(model2, 0.1))
    model2.register_parameter("stray", extra)  # a trainable tensor outside the ticket
    trainer = Trainer(model=model2, args=_args(tmp_path / "x", 1), train_dataset=_data(tok),
                      data_collator=Collator.for_tokenizer(tok), callbacks=[LotaCallback(tuner2)])
    with pytest.raises(TrainingError, match="not one of the SparseTuner's trainable values"):
        trainer.train()


def test_gradient_checkpointing_with_frozen_embeddings_still_trains(tmp_path, tok):
    model = make_tiny_model("llama", dtype="float32", seed=0)
    masks = random_masks(model, 0.1, names={"model.layers.0.mlp.down_proj.weight"})
    before = model.get_parameter("model.layers.0.mlp.down_proj.weight").detach().reshape(-1)[masks[
        "model.layers.0.mlp.down_proj.weight"]].clone()
    args = _args(tmp_path, 2, activation_checkpointing=True,
                 activation_checkpointing_kwargs={"use_reentrant": True})
    trainer = LotaTrainer(model=model, args=args, masks=masks, train_dataset=_data(tok),
                          data_collator=Collator.for_tokenizer(tok))
    trainer.train()
    after = torch.as_tensor(trainer.export()["model.layers.0.mlp.down_proj.weight"][1])
    assert (after != before).float().mean() > 0.5
