"""SparseTuner: off-mask bit-identity under every optimizer/precision, memory, export, unwrap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import bits, random_masks, token_batches

from lotavec.errors import TensorMismatchError, TrainingError
from lotavec.testing import make_tiny_model
from lotavec.train.loop import batch_loss, make_optimizer
from lotavec.train.sparse import SparseTuner, optimizer_state_bytes

PRECISIONS = {
    # name: (model dtype, bf16 autocast, master dtype of the trainable values)
    "fp32": ("float32", False, None),
    "bf16-autocast": ("float32", True, None),
    "bf16-weights": ("bfloat16", False, None),
    "bf16-weights-fp32-master": ("bfloat16", True, torch.float32),
}
OPTIMIZERS = {"adamw": 1e-2, "sgd": 3.0, "adafactor": 1e-2}


def _train(model, tuner, optimizer: str, lr: float, bf16: bool, steps: int = 3):
    opt = make_optimizer(tuner.trainable_parameters(), optimizer, lr, weight_decay=0.1)
    model.train()
    for batch in token_batches(steps):
        n = int((batch["labels"][:, 1:] != -100).sum())
        (batch_loss(model, batch, torch.device("cpu"), bf16) / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_off_mask_bit_identical_and_masked_entries_change(optimizer, precision):
    dtype, bf16, master = PRECISIONS[precision]
    model = make_tiny_model("llama", dtype=dtype, seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = random_masks(model, 0.1)
    tuner = SparseTuner(model, masks, master_dtype=master)
    _train(model, tuner, optimizer, OPTIMIZERS[optimizer], bf16)
    entries = tuner.export()
    tuner.merge_into_model()
    changed = total = 0
    for name, p in model.named_parameters():
        assert p.dtype == base[name].dtype
        idx = torch.as_tensor(entries[name][0])
        on = torch.zeros(p.numel(), dtype=torch.bool)
        on[idx] = True
        after, before = bits(p), bits(base[name])
        assert torch.equal(after[~on], before[~on]), f"{name}: an off-mask entry moved"
        changed += int((after[on] != before[on]).sum())
        total += int(on.sum())
        # the export holds exactly the merged values
        assert np.array_equal(entries[name][1].view(np.int16 if p.element_size() == 2 else np.int32),
                              after[on].numpy())
    assert changed / total > 0.5, f"only {changed}/{total} masked entries changed"


def test_frozen_tensors_have_no_grad_and_values_grad_is_gathered_dense_grad(tiny_llama):
    names = {"model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"}
    masks = random_masks(tiny_llama, 0.1, names=names)
    batch = token_batches(1)[0]
    batch_loss(tiny_llama, batch, torch.device("cpu"), False).backward()
    dense = {n: tiny_llama.get_parameter(n).grad.reshape(-1)[masks[n]].clone() for n in names}
    tiny_llama.zero_grad(set_to_none=True)

    tuner = SparseTuner(tiny_llama, masks)
    batch_loss(tiny_llama, batch, torch.device("cpu"), False).backward()
    trainable = {id(p) for p in tuner.trainable_parameters()}
    assert len(trainable) == 2
    for name, p in tiny_llama.named_parameters():
        if id(p) in trainable:
            assert p.requires_grad and p.grad is not None and p.grad.shape == p.shape
        else:
            assert not p.requires_grad and p.grad is None, name
    for name, values in tuner.named_trainable_parameters().items():
        torch.testing.assert_close(values.grad, dense[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("density", [0.05, 0.1, 0.3])
def test_optimizer_state_proportional_to_density(density):
    model = make_tiny_model("llama", dtype="float32", seed=0)
    full_opt = make_optimizer([p for p in model.parameters()], "adamw", 1e-3, weight_decay=0.1)
    batch = token_batches(1)[0]
    batch_loss(model, batch, torch.device("cpu"), False).backward()
    full_opt.step()
    full = optimizer_state_bytes(full_opt)
    n_params = sum(p.numel() for p in model.parameters())
    assert full >= 2 * 4 * n_params

    model = make_tiny_model("llama", dtype="float32", seed=0)
    tuner = SparseTuner(model, random_masks(model, density))
    opt = _train(model, tuner, "adamw", 1e-3, False, steps=1)
    sparse = optimizer_state_bytes(opt)
    assert sparse <= 1.1 * density * full
    assert sparse >= 2 * 4 * tuner.num_trainable()


def test_tied_weights_trained_once(tiny_llama):
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight
    masks = random_masks(tiny_llama, 0.2, names={"model.embed_tokens.weight"})
    masks["lm_head.weight"] = masks["model.embed_tokens.weight"].clone()  # same tensor, same mask: OK
    tuner = SparseTuner(tiny_llama, masks)
    assert len(tuner.trainable_parameters()) == 1
    assert tiny_llama.lm_head.weight.data_ptr() != 0  # both sites see the effective weight
    _train(tiny_llama, tuner, "adamw", 1e-2, False, steps=2)
    assert torch.equal(tiny_llama.lm_head.weight, tiny_llama.model.embed_tokens.weight)
    entries = tuner.export()
    assert list(entries) == ["model.embed_tokens.weight"]
    tuner.merge_into_model()
    assert tiny_llama.lm_head.weight is tiny_llama.model.embed_tokens.weight


def test_tied_weights_with_different_masks_rejected(tiny_llama):
    masks = random_masks(tiny_llama, 0.2, names={"model.embed_tokens.weight"})
    masks["lm_head.weight"] = masks["model.embed_tokens.weight"][:-1]
    with pytest.raises(TrainingError, match="same \\(tied\\) tensor"):
        SparseTuner(tiny_llama, masks)


def test_merge_restores_plain_model_and_flags(tiny_llama):
    flags = {n: p.requires_grad for n, p in tiny_llama.named_parameters()}
    names = [n for n, _ in tiny_llama.named_parameters()]
    tuner = SparseTuner(tiny_llama, random_masks(tiny_llama, 0.1))
    assert any("parametrizations" in n for n, _ in tiny_llama.named_parameters())
    _train(tiny_llama, tuner, "adamw", 1e-2, False, steps=1)
    entries = tuner.export(changed_only=True)
    model = tuner.merge_into_model()
    assert [n for n, _ in model.named_parameters()] == names
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    for name, (idx, vals, dtype) in entries.items():
        assert dtype == "F32" and idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
        assert np.array_equal(model.get_parameter(name).detach().reshape(-1).numpy()[idx], vals)
    with pytest.raises(TrainingError, match="already merged"):
        tuner.export()


def test_export_bf16_rounds_fp32_master_to_model_dtype():
    model = make_tiny_model("llama", dtype="bfloat16", seed=0)
    name = "model.layers.1.self_attn.o_proj.weight"
    tuner = SparseTuner(model, random_masks(model, 0.1, names={name}), master_dtype=torch.float32)
    values = tuner.named_trainable_parameters()[name]
    assert values.dtype == torch.float32
    with torch.no_grad():
        values.add_(1e-3)
    idx, stored, dtype = tuner.export()[name]
    assert dtype == "BF16" and stored.dtype == np.uint16
    expected = values.detach().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(stored, expected)
    # the effective weight seen by the forward pass is the same rounding
    eff = model.get_submodule("model.layers.1.self_attn.o_proj").weight
    assert np.array_equal(bits(eff)[torch.as_tensor(idx)].numpy().view(np.uint16), stored)


@pytest.mark.parametrize("masks, error, pattern", [
    ({"model.nope.weight": np.array([0])}, TensorMismatchError, "does not have"),
    ({"model.norm.weight": np.array([0, 64])}, TensorMismatchError, "must lie in"),
    ({"model.norm.weight": np.array([3, 2])}, TrainingError, "strictly increasing"),
    ({"model.norm.weight": np.array([2, 2])}, TrainingError, "strictly increasing"),
    ({"model.norm.weight": np.array([[1]])}, TrainingError, "1-D"),
    ({"model.norm.weight": np.array([0.5])}, TrainingError, "integer"),
    ({"model.norm.weight": np.array([], dtype=np.int64)}, TrainingError, "nothing to train"),
])
def test_bad_masks(tiny_llama, masks, error, pattern):
    with pytest.raises(error, match=pattern):
        SparseTuner(tiny_llama, masks)
    # a failed construction leaves the model untouched
    assert all(p.requires_grad for p in tiny_llama.parameters())


def test_already_parametrized_tensor_rejected_and_model_left_intact(tiny_llama):
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    parametrize.register_parametrization(tiny_llama.lm_head, "weight", Double())  # tied to embed_tokens
    masks = random_masks(tiny_llama, 0.1, names={"model.layers.0.mlp.up_proj.weight"})
    masks["model.embed_tokens.weight"] = torch.arange(5)
    with pytest.raises(TrainingError, match="already parametrized"):
        SparseTuner(tiny_llama, masks)
    assert all(p.requires_grad for p in tiny_llama.parameters())
    assert not parametrize.is_parametrized(tiny_llama.get_submodule("model.layers.0.mlp.up_proj"))


def test_other_architectures_untied_and_biases():
    model = make_tiny_model("gpt_neox", dtype="float32", seed=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    tuner = SparseTuner(model, random_masks(model, 0.1))
    _train(model, tuner, "adamw", 1e-2, False, steps=2)
    entries = tuner.export()
    tuner.merge_into_model()
    for name, p in model.named_parameters():
        on = torch.zeros(p.numel(), dtype=torch.bool)
        on[torch.as_tensor(entries[name][0])] = True
        assert torch.equal(bits(p)[~on], bits(base[name])[~on])
        assert not torch.equal(bits(p)[on], bits(base[name])[on])
