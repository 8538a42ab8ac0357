"""Push under DistributedDataParallel: two gloo ranks on CPU (torchrun), each searching its own shard."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from scripts.push import push_prototypes
from tests.helpers import run_process_group
from tests.test_push import CLASSES, batches, make_cases, tiny
from tests.workers.ddp_push import LABELS, SHARDS

WORLD = 2


def test_ddp_push_matches_single_process_push_on_every_rank(tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
        "-m", "tests.workers.ddp_push", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    done = run_process_group(command, env, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
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
    # the same image on both ranks under different ids: the lowest rank wins every prototype
    assert all(t == ["rank0"] * model.num_prototypes for t in (ranks[0]["tie"], ranks[1]["tie"]))
