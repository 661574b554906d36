"""Session-wide test setup: offline Hub, the ``cuda`` marker, tiny models built once.

Fixtures (all session-scoped, built with :mod:`lotavec.testing` under ``tmp_path_factory``):

* ``tiny_tokenizer_dir`` — a folder holding the tiny byte-level tokenizer.
* ``tiny_model_dirs`` — ``{"llama" | "gpt2" | "gpt_neox" | "qwen2": folder}``, bf16, one
  ``model.safetensors`` each.
* ``tiny_pair`` — ``(base, finetuned)`` llama folders; the fine-tune perturbs ~10 % of the
  entries of every attention/MLP matrix (seed 1).
* ``sharded_pair`` — ``(base, finetuned)`` llama folders sharded into several
  ``model-0000k-of-0000n.safetensors`` files with ``model.safetensors.index.json``.

Treat these folders as read-only: copy one (``shutil.copytree``) before modifying it.
"""

from __future__ import annotations

import os

import pytest

# Nothing in the test suite may reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``cuda`` when no CUDA device is available."""
    if not any(item.get_closest_marker("cuda") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Folder with the tiny tokenizer (tokenizer.json, tokenizer_config.json, chat template)."""
    from lotavec.testing import make_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_tokenizer")
    make_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory):
    """``{arch: folder}`` for llama, gpt2, gpt_neox and qwen2 tiny random bf16 models."""
    from lotavec.testing import ARCHS, make_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    dirs = {}
    for arch in ARCHS:
        make_tiny_model(arch, root / arch, seed=0)
        dirs[arch] = root / arch
    return dirs


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory, tiny_model_dirs):
    """``(base_dir, finetuned_dir)``: tiny llama and a synthetic fine-tune of it (density 0.1)."""
    from lotavec.testing import make_finetuned

    ft = tmp_path_factory.mktemp("tiny_pair") / "llama_ft"
    make_finetuned(tiny_model_dirs["llama"], ft, density=0.1, seed=1)
    return tiny_model_dirs["llama"], ft


@pytest.fixture(scope="session")
def merge_kit(tmp_path_factory, tiny_pair):
    """Tickets of the tiny llama for merge tests: A (ft1), B (ft2, disjoint from A), C (ft2,
    overlaps A), all at density 0.05, and full (ft1, every changed entry); with ``base``, ``ft1``,
    ``ft2`` and their folder ``root``. Shared: tests write their outputs elsewhere."""
    import lotavec
    from lotavec.testing import make_finetuned

    root = tmp_path_factory.mktemp("merge_kit")
    base, ft1 = tiny_pair
    ft2 = make_finetuned(base, root / "ft2", density=0.1, seed=2)
    a = lotavec.extract(base, ft1, root / "a.lota", density=0.05)
    b = lotavec.extract(base, ft2, root / "b.lota", density=0.05, disjoint_from=[root / "a.lota"])
    c = lotavec.extract(base, ft2, root / "c.lota", density=0.05)
    full = lotavec.extract(base, ft1, root / "full.lota", all_changed=True)
    return {"base": base, "ft1": ft1, "ft2": ft2, "A": a.path, "B": b.path, "C": c.path, "full": full.path,
            "root": root}


@pytest.fixture
def merge_jobs(monkeypatch):
    """What each merge of the test did with a job table for the C threads (``engine._MergeJobs``),
    in order: the table after it ran (``.names``, ``.table`` with its ``KIND`` and ``STATE``
    columns), or ``None`` for a merge that made none."""
    import lotavec.merge.engine as eng

    seen: list = []
    real_plan, real_run = eng._MergeJobs.plan.__func__, eng._MergeJobs.run

    def plan(cls, *a, **k):
        jobs = real_plan(cls, *a, **k)
        if jobs is None:
            seen.append(None)
        return jobs

    def run(self, *a, **k):
        try:
            return real_run(self, *a, **k)
        finally:
            seen.append(self)

    monkeypatch.setattr(eng._MergeJobs, "plan", classmethod(plan))
    monkeypatch.setattr(eng._MergeJobs, "run", run)
    return seen


@pytest.fixture(scope="session")
def sharded_pair(tmp_path_factory):
    """``(base_dir, finetuned_dir)``: a 4-layer tiny llama sharded into several files, and its fine-tune."""
    from lotavec.testing import make_finetuned, make_tiny_model

    root = tmp_path_factory.mktemp("sharded_pair")
    make_tiny_model("llama", root / "base", seed=0, num_hidden_layers=4, max_shard_size="100KB")
    make_finetuned(root / "base", root / "ft", density=0.1, seed=1, max_shard_size="100KB")
    return root / "base", root / "ft"
