"""Training loops: per-token loss, determinism, grad accumulation, sparse_train results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bits, random_masks, token_batches

from lotavec.errors import TrainingError
from lotavec.testing import make_tiny_model
from lotavec.train.data import Collator, batch_stream, load_jsonl
from lotavec.train.loop import batch_loss, dense_finetune, evaluate, sparse_train


def test_loss_is_per_token_mean_over_counted_tokens(tiny_llama):
    batch = token_batches(1)[0]
    summed = batch_loss(tiny_llama, batch, torch.device("cpu"), False)
    labels = batch["labels"].clone()
    out = tiny_llama(input_ids=batch["input_ids"], labels=labels)  # HF: mean over labels != -100
    n = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(summed / n, out.loss, rtol=1e-5, atol=1e-6)
    assert evaluate(tiny_llama, [batch]) == pytest.approx(float(out.loss.detach()), rel=1e-5)


def test_dense_finetune_learns_and_is_deterministic():
    runs = []
    for _ in range(2):
        model = make_tiny_model("llama", dtype="float32", seed=0)
        batches = token_batches(1)  # one repeated batch: the loss must fall
        res = dense_finetune(model, batches, steps=8, lr=3e-3)
        runs.append((res, model.state_dict()))
    (a, sd_a), (b, sd_b) = runs
    assert a.losses == b.losses
    assert a.losses[-1] < a.losses[0] - 0.5
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert a.trainable == a.total and a.optimizer_state_bytes >= 8 * a.total
    assert len(a.step_times) == 8 and a.peak_memory_bytes > 0 and a.memory_kind == "cpu_peak_rss"


def test_grad_accum_matches_one_large_batch():
    big = token_batches(1, batch=4)[0]
    halves = [{k: v[:2] for k, v in big.items()}, {k: v[2:] for k, v in big.items()}]
    halves[1]["labels"][:, -3:] = -100  # unequal token counts: a mean of means would differ
    big["labels"][2:, -3:] = -100
    out = []
    for batches, accum in (([big], 1), (halves, 2)):
        model = make_tiny_model("llama", dtype="float32", seed=0)
        res = dense_finetune(model, batches, steps=1, lr=1e-3, optimizer="sgd", max_grad_norm=None,
                             grad_accum=accum)
        out.append((res.losses[0], model.get_parameter("model.layers.0.mlp.up_proj.weight").detach()))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
    torch.testing.assert_close(out[0][1], out[1][1], rtol=0, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adafactor"])
def test_sparse_train_exact_with_bf16_autocast(optimizer):
    model = make_tiny_model("llama", dtype="float32", seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_masks(model, 0.1, seed=3)
    logs, ticks = [], []
    res = sparse_train(model, masks, token_batches(2), steps=4, lr={"sgd": 3.0}.get(optimizer, 1e-2),
                       optimizer=optimizer, weight_decay=0.1, bf16=True, grad_accum=2,
                       eval_batches=token_batches(1, seed=9), eval_every=2, on_log=logs.append,
                       progress=lambda stage, done, total: ticks.append((stage, done, total)))
    assert [s for s, _ in res.eval_losses] == [2, 4] and len(logs) == 4 and "eval_loss" in logs[1]
    assert ticks[-1][1:] == (4, 4) and ticks[-1][0].startswith("train loss=")
    assert res.trainable == sum(len(m) for m in masks.values())
    assert res.total == sum(p.numel() for p in make_tiny_model("llama", dtype="float32").parameters())
    assert set(res.entries) == set(masks)
    for name, p in model.named_parameters():  # keep="merged": the model holds the trained values
        on = torch.zeros(p.numel(), dtype=torch.bool)
        on[masks[name]] = True
        assert torch.equal(bits(p)[~on], bits(base[name])[~on]), name
        idx, vals, dtype = res.entries[name]
        assert dtype == "F32" and np.array_equal(idx, masks[name].numpy())
        assert np.array_equal(p.detach().reshape(-1).numpy()[idx], vals)
    assert not any(p.requires_grad is False for p in model.parameters())


def test_sparse_train_keep_base_and_lower_loss_on_repeated_batch():
    model = make_tiny_model("llama", dtype="bfloat16", seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = sparse_train(model, random_masks(model, 0.2), token_batches(1), steps=10, lr=1e-2, keep="base")
    assert res.losses[-1] < res.losses[0] - 0.2
    assert all(torch.equal(bits(p), bits(base[n])) for n, p in model.named_parameters())
    assert all(d == "BF16" and v.dtype == np.uint16 for _, v, d in res.entries.values())


def test_sparse_train_from_jsonl_is_deterministic(tmp_path, tok):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(f'{{"prompt": "{i}+{i}=", "completion": "{2 * i}"}}' for i in range(12)))
    data = load_jsonl(path, tok, max_length=32)
    runs = []
    for _ in range(2):
        model = make_tiny_model("llama", dtype="float32", seed=0)
        stream = batch_stream(data, 4, Collator.for_tokenizer(tok), seed=5)
        res = sparse_train(model, random_masks(model, 0.1), stream, steps=3, lr=1e-2, seed=1)
        runs.append(res)
    assert runs[0].losses == runs[1].losses
    for name in runs[0].entries:
        assert np.array_equal(runs[0].entries[name][1], runs[1].entries[name][1])


def test_errors_and_failed_run_restores_model(tiny_llama):
    with pytest.raises(TrainingError, match="cuda"):
        sparse_train(tiny_llama, random_masks(tiny_llama, 0.1), token_batches(1), 1, 1e-3,
                     device="cuda" if not torch.cuda.is_available() else "meta")
    with pytest.raises(TrainingError, match="unknown optimizer"):
        sparse_train(tiny_llama, random_masks(tiny_llama, 0.1), token_batches(1), 1, 1e-3, optimizer="lion")
    assert not any("parametrizations" in n for n, _ in tiny_llama.named_parameters())
    with pytest.raises(TrainingError, match="ran out at step 2"):
        dense_finetune(tiny_llama, iter(token_batches(3)), steps=2, lr=1e-3, grad_accum=2)
    empty = token_batches(1)
    empty[0]["labels"][:] = -100
    with pytest.raises(TrainingError, match="no counted"):
        dense_finetune(tiny_llama, empty, steps=1, lr=1e-3)
