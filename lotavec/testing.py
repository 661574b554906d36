"""Tiny random models and a tiny tokenizer for tests, demos and benchmarks (no downloads).

Everything here is deterministic from its arguments and built offline:

* :func:`make_tiny_tokenizer` — a byte-level BPE tokenizer with no merges (one token per byte,
  so any text round-trips exactly), ChatML special tokens and a SmolLM2-style chat template.
* :func:`make_tiny_model` — a small Llama / GPT-2 / GPT-NeoX / Qwen2 causal LM with random
  weights, optionally saved as a normal Hugging Face folder (safetensors, tokenizer,
  generation config).
* :func:`make_finetuned` — a synthetic "fine-tune" of such a folder: a random subset of the
  entries of chosen tensors is perturbed, every chosen entry really changes.

Example:
    >>> base = make_tiny_model("llama", "/tmp/base")  # doctest: +SKIP
    >>> make_finetuned("/tmp/base", "/tmp/ft", density=0.1)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import statistics
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .format.dtypes import from_float32, to_float32

#: Special tokens of the tiny tokenizer, in id order (ids 0..3); byte ``b`` has id ``4 + b``.
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")
BOS_ID, EOS_ID, PAD_ID = 1, 2, 3
#: Vocabulary size of the tiny tokenizer.
TINY_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256

#: ChatML template in the style of SmolLM2-Instruct (no default system prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Architectures :func:`make_tiny_model` knows.
ARCHS = ("llama", "gpt2", "gpt_neox", "qwen2")

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
           "float32": "float32", "fp32": "float32"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_tiny_tokenizer(out_dir: str | os.PathLike | None = None):
    """Build a tiny byte-level tokenizer offline.

    Every byte is one token (id ``4 + byte``), so any text encodes and decodes exactly. Special
    tokens: ``<|endoftext|>`` (0), ``<|im_start|>`` (1, bos), ``<|im_end|>`` (2, eos),
    ``<pad>`` (3, pad). The chat template is ChatML like SmolLM2's.

    Args:
        out_dir: when given, the tokenizer is saved there (``tokenizer.json`` and friends).

    Returns:
        A ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for b, ch in sorted(_bytes_to_unicode().items()):
        vocab[ch] = len(SPECIAL_TOKENS) + b
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        unk_token=None,
        model_max_length=256,
        chat_template=CHAT_TEMPLATE,
    )
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(out_dir)
    return tok


def tiny_config(arch: str, *, vocab_size: int | None = None, tie_word_embeddings: bool | None = None, **overrides: Any):
    """The transformers config of a tiny model (hidden 64, 2 layers, 4 heads).

    Args:
        arch: one of :data:`ARCHS`.
        vocab_size: defaults to the tiny tokenizer's.
        tie_word_embeddings: defaults to the architecture's usual choice (tied for llama, gpt2
            and qwen2 like SmolLM2 / GPT-2 / Qwen2-0.5B; untied for gpt_neox like Pythia).
        **overrides: any other config field (``num_hidden_layers=4``...).

    Raises:
        ModelError: unknown architecture.
    """
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    vocab = TINY_VOCAB_SIZE if vocab_size is None else int(vocab_size)
    ids = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    if arch == "llama":
        cls, kw, tied = LlamaConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=256), True
    elif arch == "qwen2":
        cls, kw, tied = Qwen2Config, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2,
                                          max_position_embeddings=256), True
    elif arch == "gpt_neox":
        cls, kw, tied = GPTNeoXConfig, dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=256), False
    elif arch == "gpt2":
        cls, kw, tied = GPT2Config, dict(n_embd=64, n_layer=2, n_head=4, n_positions=256), True
    else:
        raise ModelError(f"unknown tiny architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    kw.update(ids)
    kw["vocab_size"] = vocab
    kw["tie_word_embeddings"] = tied if tie_word_embeddings is None else bool(tie_word_embeddings)
    kw.update(overrides)
    return cls(**kw)


def make_tiny_model(
    arch: str,
    out_dir: str | os.PathLike | None = None,
    *,
    dtype: str = "bfloat16",
    seed: int = 0,
    vocab_size: int | None = None,
    tie_word_embeddings: bool | None = None,
    max_shard_size: int | str | None = None,
    **overrides: Any,
):
    """Build a tiny random causal LM, deterministic from ``seed``.

    Args:
        arch: ``"llama"``, ``"gpt2"``, ``"gpt_neox"`` or ``"qwen2"``.
        out_dir: when given, ``save_pretrained`` (safetensors) there together with the tiny
            tokenizer and the generation config.
        dtype: ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``.
        seed: weights depend only on this (the global torch RNG is left untouched).
        vocab_size, tie_word_embeddings, **overrides: see :func:`tiny_config`.
        max_shard_size: shard the saved weights (e.g. ``"200KB"`` or an int of bytes).

    Returns:
        The model (``eval()`` mode, on CPU, in ``dtype``).

    Raises:
        ModelError: unknown architecture or dtype.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}")
    config = tiny_config(arch, vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model = model.to(getattr(torch, _DTYPES[dtype])).eval()
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
        with _quiet_transformers():
            model.save_pretrained(out, **kw)
        make_tiny_tokenizer(out)
    return model


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' own progress bars (library code must not print)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


#: Config overrides for a ~1.1B-parameter Llama (TinyLlama-1.1B's shape) for benchmarks.
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)


def make_synthetic_model(
    arch: str,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    dtype: str = "bfloat16",
    max_shard_size: int | str = "2GB",
    progress: Callable[[str, int, int], None] | None = None,
    **overrides: Any,
) -> Path:
    """Write a random model folder of any size without materializing the model (streaming).

    The architecture is instantiated on the meta device only for its tensor names and shapes;
    values come from numpy: normal(0, ``initializer_range``) for weights and embeddings (drawn
    from a table of 65536 quantiles, so at most 65536 distinct values), ones for
    normalization weights, zeros for biases. Memory stays around one tensor. Use
    ``**LLAMA_1B`` for a ~1.1B-parameter Llama.

    Args:
        arch: one of :data:`ARCHS`.
        out_dir: output folder (replaced if it exists); gets the tiny tokenizer too.
        seed: values depend only on this and the tensor names.
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.
        max_shard_size: shard size (``save_pretrained`` conventions).
        progress: optional ``progress("synthesize", tensors_done, tensors_total)``.
        **overrides: config fields (see :func:`tiny_config`).

    Returns:
        ``Path(out_dir)``.

    Raises:
        ModelError: unknown architecture or dtype, or one with persistent buffers.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from .hfwriter import ShardedWriter, atomic_output_dir
    from .models import _checkpoint_names, _module_kinds

    if dtype not in _DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}")
    spec = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}[_DTYPES[dtype]]
    vocab = overrides.pop("vocab_size", None)
    tie = overrides.pop("tie_word_embeddings", None)
    config = tiny_config(arch, vocab_size=vocab, tie_word_embeddings=tie, **overrides)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    if dict(model.named_buffers()).keys() & model.state_dict().keys():
        raise ModelError(f"{arch}: persistent buffers cannot be synthesized; use make_tiny_model")
    params = dict(model.named_parameters())  # tied parameters once
    kinds = _module_kinds(model)
    to_ckpt = _checkpoint_names(model, list(params))
    plan = sorted((to_ckpt.get(n, n), spec, tuple(p.shape), n) for n, p in params.items())
    std = float(getattr(config, "initializer_range", 0.02))
    # Normal samples by lookup: 65536 quantiles of N(0, std), indexed by random uint16s. Ten
    # times faster than drawing normals, and finer than bf16's own resolution.
    quantiles = [statistics.NormalDist(0.0, std).inv_cdf((k + 0.5) / 65536) for k in range(65536)]
    table = from_float32(np.array(quantiles, dtype=np.float32), spec)
    config.dtype = _DTYPES[dtype]
    with atomic_output_dir(out_dir, overwrite=True, fsync=False) as tmp:
        with ShardedWriter(tmp, [e[:3] for e in plan], max_shard_size=max_shard_size) as w:
            for i, (name, _, shape, mname) in enumerate(plan):
                rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                kind = kinds.get(mname, "other")
                if kind == "norm" and mname.endswith("weight"):
                    x = np.ones(shape, np.float32)
                elif kind in ("norm", "bias"):
                    x = np.zeros(shape, np.float32)
                else:
                    x = None
                    w.write(name, table[rng.integers(0, table.size, size=shape, dtype=np.uint16)])
                if x is not None:
                    w.write(name, from_float32(x, spec))
                if progress is not None:
                    progress("synthesize", i + 1, len(plan))
        config.save_pretrained(tmp)
        GenerationConfig.from_model_config(config).save_pretrained(tmp)
        make_tiny_tokenizer(tmp)
    return Path(out_dir)


def perturb_storage(storage: np.ndarray, dtype: str, rng: np.random.Generator, density: float, scale: float) -> np.ndarray:
    """Return a copy of ``storage`` where about ``density`` of the entries really changed.

    Args:
        storage: storage array (BF16 as uint16 bits).
        dtype: its spec dtype name (``BF16``, ``F16``, ``F32``).
        rng: the random generator to draw from.
        density: probability of each entry being perturbed.
        scale: standard deviation of the added Gaussian noise.

    Returns:
        The new storage array; every chosen entry differs from the old one in its bits.
    """
    flat = np.array(storage, copy=True).reshape(-1)
    chosen = np.flatnonzero(rng.random(flat.size, dtype=np.float32) < density)
    if chosen.size == 0:
        return flat.reshape(storage.shape)
    old = flat[chosen]
    noise = rng.standard_normal(chosen.size, dtype=np.float32) * np.float32(scale)
    new = from_float32(to_float32(old, dtype) + noise, dtype)
    bits = new.view(np.uint16 if new.itemsize == 2 else np.uint32)
    same = bits == old.view(bits.dtype)
    bits[same] += 1  # rounding swallowed the noise: move one ulp so the entry really changes
    flat[chosen] = new
    return flat.reshape(storage.shape)


def make_finetuned(
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    density: float = 0.1,
    seed: int = 1,
    scale: float = 0.01,
    tensors: Iterable[str] | None = None,
    max_shard_size: int | str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Path:
    """Write a synthetic fine-tune of the model folder ``base_dir`` to ``out_dir`` (streaming).

    About ``density`` of the entries of each chosen tensor get Gaussian noise of std ``scale``
    added (rounded to the tensor's dtype, and nudged by one ulp where rounding would have left
    them unchanged); all other entries and tensors are bit-identical to the base. Config,
    tokenizer and generation config are copied. Tensors are read from the memory-mapped base
    and written one at a time, so models larger than memory work too.

    Args:
        base_dir: a Hugging Face model folder (e.g. from :func:`make_tiny_model`).
        out_dir: output folder (created; replaced if it exists).
        density: fraction of entries perturbed in each chosen tensor.
        seed: the perturbation depends only on this and the tensor names.
        scale: noise standard deviation.
        tensors: names of the tensors to perturb; default: the extraction candidates
            (:func:`lotavec.models.select_candidates` with default flags).
        max_shard_size: shard size of the output; default: the base's largest shard (one file
            if the base has one file).
        progress: optional ``progress("finetune", tensors_done, tensors_total)``.

    Returns:
        ``Path(out_dir)``.

    Raises:
        NotFoundError: ``base_dir`` or a named tensor does not exist.
    """
    from .hfwriter import ShardedWriter, atomic_output_dir, copy_model_files
    from .models import open_model, select_candidates

    with open_model(base_dir) as src:
        chosen = set(select_candidates(src) if tensors is None else tensors)
        for name in sorted(chosen):
            src.info(name)  # NotFoundError naming the tensor
        if max_shard_size is None:
            files = {src.file_of(n) for n in src.names()}
            max_shard_size = max(os.path.getsize(f) for f in files) if len(files) > 1 else 1 << 62
        names = src.names()
        with atomic_output_dir(out_dir, overwrite=True, fsync=False) as tmp:
            with ShardedWriter(tmp, [(n, *src.info(n)) for n in names], max_shard_size=max_shard_size) as w:
                for i, name in enumerate(names):
                    arr = src.array(name)
                    if name in chosen:
                        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                        arr = perturb_storage(arr, src.info(name)[0], rng, density, scale)
                    w.write(name, arr)
                    src.release(name)
                    if progress is not None:
                        progress("finetune", i + 1, len(names))
            copy_model_files(base_dir, tmp)
    return Path(out_dir)
