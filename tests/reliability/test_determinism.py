"""Determinism, short version of ``campaign/determinism.py``: same inputs give byte-identical
tickets (extract; encoding with 1 or 2 writer threads) and merged folders (engine threads 1 and 2),
and training with a seed gives identical ticket content with 1 or 2 torch threads.
"""

from __future__ import annotations

import pytest
from common import file_sha, tree_hash, write_jsonl
from kill import ticket_content

from lotavec.extraction import extract
from lotavec.merge import MergeParams, merge
from lotavec.ticket import load_ticket


def test_extract_and_encoding_are_byte_identical(tmp_path, campaign_pair):
    base, ft = campaign_pair
    extract(base, ft, tmp_path / "a.safetensors", density=0.2)
    extract(base, ft, tmp_path / "b.safetensors", density=0.2)
    assert file_sha(tmp_path / "a.safetensors") == file_sha(tmp_path / "b.safetensors")
    shas = set()
    with load_ticket(tmp_path / "a.safetensors") as t:
        for threads in (1, 2, 1, 2):
            t.save(tmp_path / f"r{threads}.safetensors", chunk_elements=512, threads=threads)
            shas.add(file_sha(tmp_path / f"r{threads}.safetensors"))
    assert len(shas) == 1


@pytest.mark.parametrize("params", [MergeParams(), MergeParams(method="dare_ties", density=0.5, seed=3)],
                         ids=["sum", "dare_ties"])
def test_merge_is_byte_identical_across_runs_and_threads(tmp_path, campaign_pair, params):
    base, ft = campaign_pair
    extract(base, ft, tmp_path / "t.safetensors", density=0.2)
    hashes = set()
    for i, threads in enumerate((1, 2, 2)):
        merge(base, [tmp_path / "t.safetensors"], tmp_path / f"m{i}", params=params, threads=threads)
        hashes.add(tree_hash(tmp_path / f"m{i}"))
    assert len(hashes) == 1


@pytest.fixture(scope="module")
def trained(tmp_path_factory, campaign_pair):
    import torch

    from lotavec.train.pipeline import TrainConfig, train

    work = tmp_path_factory.mktemp("det_train")
    data = write_jsonl(work / "d.jsonl", 16)
    cfg = TrainConfig(density=0.2, calibration_steps=2, steps=2, batch_size=4, max_length=32, seed=0)
    out = []
    was = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            p = work / f"t{threads}.safetensors"
            train(campaign_pair[0], data, p, config=cfg)
            out.append(p)
    finally:
        torch.set_num_threads(was)
    return out


def test_train_content_is_identical_across_thread_counts(trained):
    assert ticket_content(trained[0]) == ticket_content(trained[1])


def test_train_tickets_are_byte_identical(trained):
    assert file_sha(trained[0]) == file_sha(trained[1])
