"""open_model sources, candidate selection by module type, compatibility checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from lotavec.errors import ModelError, NotFoundError, SelectionError, TensorMismatchError
from lotavec.format.safetensors_io import SafetensorsFile
from lotavec.models import check_compatible, classify, open_model, select_candidates
from lotavec.testing import make_tiny_model
from lotavec.torchio import to_storage

# What a human reading each architecture's modeling code calls its attention and MLP matrices.
EXPECTED_LINEAR = {
    "llama": ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
              "self_attn.q_proj", "self_attn.v_proj"],
    "qwen2": ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
              "self_attn.q_proj", "self_attn.v_proj"],
    "gpt2": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    "gpt_neox": ["attention.dense", "attention.query_key_value", "mlp.dense_4h_to_h", "mlp.dense_h_to_4h"],
}
BLOCK_PREFIX = {"llama": "model.layers", "qwen2": "model.layers", "gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers"}


def _expected(arch):
    return sorted(f"{BLOCK_PREFIX[arch]}.{i}.{m}.weight" for i in range(2) for m in EXPECTED_LINEAR[arch])


@pytest.mark.parametrize("arch", sorted(EXPECTED_LINEAR))
def test_default_candidates_are_block_matrices_for_folder_module_and_state_dict(arch, tiny_model_dirs):
    model = make_tiny_model(arch, seed=0)
    assert select_candidates(tiny_model_dirs[arch]) == _expected(arch)
    assert select_candidates(model) == _expected(arch)
    # A bare state dict has no architecture: the documented name/shape heuristic must agree here.
    assert select_candidates(dict(model.state_dict())) == _expected(arch)


@pytest.mark.parametrize("arch", sorted(EXPECTED_LINEAR))
def test_flags_add_kinds_and_tied_weights_count_once(arch, tiny_model_dirs):
    folder = tiny_model_dirs[arch]
    kinds = classify(folder)
    everything = select_candidates(folder, embeddings=True, lm_head=True, norms=True, biases=True)
    with open_model(folder) as src:
        assert everything == src.names()  # every stored tensor is one of the selectable kinds
        tied = src.tied_groups()
    if arch == "gpt_neox":
        assert tied == [] and kinds["embed_out.weight"] == "lm_head"
    else:
        assert len(tied) == 1 and tied[0][1] == "lm_head.weight"
        assert "lm_head.weight" not in everything
        # Asking for the LM head of a tied model selects the one stored tensor, once.
        assert select_candidates(folder, lm_head=True) == sorted(_expected(arch) + [tied[0][0]])
    norms = select_candidates(folder, norms=True)
    assert set(norms) - set(_expected(arch)) == {n for n, k in kinds.items() if k == "norm"}


def test_include_exclude_semantics(tiny_model_dirs):
    folder = tiny_model_dirs["llama"]
    base = _expected("llama")
    only_mlp = select_candidates(folder, exclude=[r"self_attn"])
    assert only_mlp == [n for n in base if "mlp" in n]
    plus_norm = select_candidates(folder, include=[r"\.norm\.weight$"])
    assert plus_norm == sorted(base + ["model.norm.weight"])
    # exclude wins over include
    assert select_candidates(folder, include=[r"\.norm\."], exclude=[r"norm"]) == base
    with pytest.raises(SelectionError, match="match no tensor"):
        select_candidates(folder, include=["no_such_tensor"])
    with pytest.raises(SelectionError, match="not a valid regular expression"):
        select_candidates(folder, exclude=["("])
    with pytest.raises(SelectionError, match="no candidate tensors"):
        select_candidates(folder, exclude=["."])


def test_folder_source_reads_storage_arrays(tiny_model_dirs):
    folder = tiny_model_dirs["llama"]
    model = make_tiny_model("llama", seed=0)
    sd = model.state_dict()
    with open_model(folder) as src:
        assert src.path == folder and src.config["model_type"] == "llama"
        assert src.names() == sorted(src.names())
        for name in src.names():
            arr = src.array(name)
            assert not arr.flags.writeable
            assert src.info(name) == ("BF16", tuple(sd[name].shape))
            np.testing.assert_array_equal(arr, to_storage(sd[name])[0])
            src.release(name)
            np.testing.assert_array_equal(src.array(name), to_storage(sd[name])[0])  # re-read after release
        # the tied alias resolves to the stored embedding
        assert "lm_head.weight" in src and src.resolve("lm_head.weight") == "model.embed_tokens.weight"
        with pytest.raises(NotFoundError, match="no_such"):
            src.array("no_such.weight")


def test_sharded_folder_and_single_file(sharded_pair, tiny_model_dirs):
    base, _ = sharded_pair
    index = json.loads((base / "model.safetensors.index.json").read_text())
    with open_model(base) as src:
        assert src.names() == sorted(index["weight_map"])
        assert len({src.file_of(n) for n in src.names()}) >= 2
    single = tiny_model_dirs["gpt2"] / "model.safetensors"
    with open_model(single) as src:
        assert src.path is None and src.config is None
        assert src.names() == sorted(SafetensorsFile(single).keys())


def test_broken_folders_give_clear_errors(tmp_path, sharded_pair, tiny_model_dirs):
    broken = tmp_path / "broken"
    shutil.copytree(sharded_pair[0], broken)
    shard = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"]
    (broken / shard).unlink()
    with pytest.raises(NotFoundError, match=f"names shard '{shard}'.*missing"):
        open_model(broken)
    binonly = tmp_path / "binonly"
    binonly.mkdir()
    shutil.copy(tiny_model_dirs["llama"] / "config.json", binonly)
    (binonly / "pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(ModelError, match=r"binonly.*pytorch_model\.bin.*save_pretrained"):
        open_model(binonly)
    with pytest.raises(NotFoundError):
        open_model(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="cannot open a int"):
        open_model(3)


def test_module_source_dedups_tied_weights_and_shares_memory():
    model = make_tiny_model("llama", seed=0)
    src = open_model(model)
    assert "lm_head.weight" not in src.names()
    assert src.tied_groups() == [("model.embed_tokens.weight", "lm_head.weight")]
    arr = src.array("model.layers.0.mlp.up_proj.weight")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = 3.0
    assert arr[0, 0] == 0x4040  # bf16 bits of 3.0: the array is a view, not a copy


def test_check_compatible(tiny_pair, tiny_model_dirs):
    base, ft = tiny_pair
    check_compatible(base, ft)
    check_compatible(base, make_tiny_model("llama", seed=3))
    with pytest.raises(TensorMismatchError, match=r"vocabulary was resized.*260 rows.*300.*resize_token_embeddings"):
        check_compatible(base, make_tiny_model("llama", vocab_size=300))
    with pytest.raises(TensorMismatchError, match=r"dtype differs for 20 tensor\(s\).*base BF16, fine-tuned F32"):
        check_compatible(base, make_tiny_model("llama", dtype="float32"))
    with pytest.raises(TensorMismatchError, match=r"in the fine-tuned model but not the base: 'model.layers.0.self_attn.k_proj.bias'"):
        check_compatible(base, tiny_model_dirs["qwen2"])
    with pytest.raises(TensorMismatchError, match=r"shape differs.*model.layers.0.mlp.up_proj.weight \(base \[128, 64\], fine-tuned \[96, 64\]\)"):
        check_compatible(base, make_tiny_model("llama", intermediate_size=96))
    sd = dict(make_tiny_model("llama").state_dict())
    del sd["model.norm.weight"]
    with pytest.raises(TensorMismatchError, match="missing from the fine-tuned model: 'model.norm.weight'"):
        check_compatible(base, sd)
    check_compatible(base, sd, names=select_candidates(base))  # only candidates compared


def test_module_names_follow_checkpoint_names(tiny_model_dirs):
    model = make_tiny_model("gpt_neox", seed=0)  # transformers saves its lm_head as embed_out
    src = open_model(model)
    assert "embed_out.weight" in src.names() and "lm_head.weight" not in src.names()
    assert src.module_name("embed_out.weight") == "lm_head.weight"
    assert src.tensor("embed_out.weight") is model.state_dict()["lm_head.weight"] or torch.equal(
        src.tensor("embed_out.weight"), model.lm_head.weight)
    check_compatible(tiny_model_dirs["gpt_neox"], model)
    assert classify(model)["embed_out.weight"] == "lm_head"


def test_join_ranges_and_batched_release(tiny_model_dirs):
    from lotavec.format.safetensors_io import SafetensorsFile, join_ranges

    assert join_ranges([(10, 20), (0, 5), (20, 30), (25, 27), (40, 50)]) == [(0, 5), (10, 30), (40, 50)]
    assert join_ranges([(0, 5), (8, 9)], slack=3) == [(0, 9)]
    assert join_ranges([]) == []
    f = SafetensorsFile(tiny_model_dirs["llama"] / "model.safetensors")
    f.RELEASE_BATCH = 1  # every release hands its pages over at once; data stays readable
    for name in f.keys():
        before = f.array(name).copy()
        f.advise_done(name)
        assert f._released == [] and np.array_equal(f.array(name), before)
    f.close()
