"""Push under DistributedDataParallel: two gloo processes on CPU, each searching its own shard."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from scripts.push import push_prototypes
from tests.test_push import CLASSES, SHAPE, batches, make_cases, tiny

WORLD = 2
LABELS = [0, 1, 1, 0, 1, 0, 0]
SHARDS = [[0, 1, 2, 3], [4, 5, 6]]
"""Case indices searched by each rank."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def push_on_rank(rank: int, port: int, out_dir: str) -> None:
    """One rank: the same seeded model wrapped in DDP, pushed over shard ``rank`` of the cases, then a tie."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        model = tiny(seed=0)
        ddp = DistributedDataParallel(model)
        cases = [make_cases(LABELS)[n] for n in SHARDS[rank]]
        result = push_prototypes(ddp, batches(cases), CLASSES)
        prototypes = [model.head(s).prototypes.detach().clone() for s in model.scales]
        # the same image on both ranks under different ids: the lowest rank must win every prototype
        image = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(9))
        tie = push_prototypes(ddp, [{"image": image, "label": torch.tensor([0]), "case_id": [f"rank{rank}"]}], CLASSES)
        torch.save(
            {"prototypes": prototypes, "records": result.records, "tie": [r["case_id"] for r in tie.records]},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_push_matches_single_process_push_on_every_rank(tmp_path):
    mp.spawn(push_on_rank, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    model = tiny(seed=0)
    single = push_prototypes(model, batches(make_cases(LABELS)), CLASSES)
    for scale_index, s in enumerate(model.scales):
        assert torch.equal(ranks[0]["prototypes"][scale_index], ranks[1]["prototypes"][scale_index])
        assert torch.allclose(ranks[0]["prototypes"][scale_index], model.head(s).prototypes, atol=1e-5)
    assert ranks[0]["records"] == ranks[1]["records"]
    assert [r["case_id"] for r in ranks[0]["records"]] == [r["case_id"] for r in single.records]
    # both shards contribute winners, so the merge really crosses ranks
    winners = {int(r["case_id"][4:]) for r in single.records}
    assert all(winners & set(shard) for shard in SHARDS)
    for distributed, local in zip(ranks[0]["records"], single.records):
        assert distributed["similarity"] == pytest.approx(local["similarity"], abs=1e-5)
    assert all(t == ["rank0"] * model.num_prototypes for t in (ranks[0]["tie"], ranks[1]["tie"]))
