"""DDP (gloo, 2 CPU processes): the trainable values are ordinary parameters; ranks stay in sync."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import bits, random_masks, token_batches

from lotavec.testing import make_tiny_model
from lotavec.train.loop import make_optimizer
from lotavec.train.sparse import SparseTuner


def _worker(rank: int, world: int, store: str, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model = make_tiny_model("llama", dtype="float32", seed=0)
        base = {n: p.detach().clone() for n, p in model.named_parameters()}
        masks = random_masks(model, 0.1)
        tuner = SparseTuner(model, masks)
        ddp = DDP(model)
        opt = make_optimizer(tuner.trainable_parameters(), "adamw", 1e-2, weight_decay=0.1)
        for batch in token_batches(3, seed=100 + rank):  # each rank sees different data
            ddp(input_ids=batch["input_ids"], labels=batch["labels"]).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        entries = tuner.export()
        tuner.merge_into_model()
        moved = 0
        for name, p in model.named_parameters():
            on = torch.zeros(p.numel(), dtype=torch.bool)
            on[masks[name]] = True
            moved += int((bits(p)[~on] != bits(base[name])[~on]).sum())
        np.savez(f"{out}/rank{rank}.npz", moved=moved, **{k: v[1] for k, v in entries.items()})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_stay_in_sync_and_exact(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert int(r0["moved"]) == 0 and int(r1["moved"]) == 0
    names = [k for k in r0.files if k != "moved"]
    assert len(names) > 10
    for k in names:
        assert np.array_equal(r0[k], r1[k]), f"{k}: ranks diverged (gradients not all-reduced?)"
    # and training did something: the values differ from a rank-0-only run's starting point
    model = make_tiny_model("llama", dtype="float32", seed=0)
    masks = random_masks(model, 0.1)
    name = "model.layers.0.mlp.up_proj.weight"
    start = model.get_parameter(name).detach().reshape(-1)[masks[name]].numpy()
    assert (r0[name] != start).mean() > 0.5
