"""One rank of the distributed push test: ``python -m torch.distributed.run --nproc_per_node=2 -m
tests.workers.ddp_push OUT_DIR``.

Each rank wraps the same seeded tiny model in DistributedDataParallel, pushes over its own shard of
the cases, then pushes one image that is identical on both ranks under a rank-specific id (a tie),
and saves its prototypes and push records to ``OUT_DIR/rank<RANK>.pt``.

A rank that succeeds leaves with ``os._exit(0)`` while its DDP wrapper is still alive, skipping the
teardown that would free it. Freeing the wrapper (at ``main``'s return or at exit) drops the last
reference to the gloo process group, whose destructor joins gloo's
worker threads while holding the GIL; a worker thread still releasing the last broadcast's tensor
needs the GIL to do so, and the two wait for each other forever (rank 1 hung there in 1 of 14
local runs, gdb showing both stacks; CI's 10-minute timeout of this test fits the same hang).
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from scripts.push import push_prototypes
from tests.test_push import CLASSES, SHAPE, batches, make_cases, tiny

LABELS = [0, 1, 1, 0, 1, 0, 0]
SHARDS = [[0, 1, 2, 3], [4, 5, 6]]
"""Case indices searched by each rank."""


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    model = tiny(seed=0)
    ddp = DistributedDataParallel(model)
    cases = [make_cases(LABELS)[n] for n in SHARDS[rank]]
    result = push_prototypes(ddp, batches(cases), CLASSES)
    prototypes = [model.head(s).prototypes.detach().clone() for s in model.scales]
    image = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(9))
    tie = push_prototypes(ddp, [{"image": image, "label": torch.tensor([0]), "case_id": [f"rank{rank}"]}], CLASSES)
    torch.save(
        {"prototypes": prototypes, "records": result.records, "tie": [r["case_id"] for r in tie.records]},
        Path(out_dir) / f"rank{rank}.pt",
    )
    dist.barrier()  # both ranks leave their last collective before either tears the group down
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # while `ddp` still holds the group: see the module docstring


if __name__ == "__main__":
    main(sys.argv[1])
