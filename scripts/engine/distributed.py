"""Pieces of multi-process training (``configs/multi_gpu_train.json``) that DistributedDataParallel leaves open."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric
from torch import nn

from scripts.networks import GroupedNetwork

__all__ = ["BroadcastFromRank0", "ShardedEpochMetric", "distributed_forward"]


def _world_size() -> int:
    """Processes in the default group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distributed_forward(
    module: nn.Module,
    network: GroupedNetwork,
    groups: Iterable[str],
    device: str | torch.device,
    find_unused_parameters: bool = True,
) -> nn.parallel.DistributedDataParallel:
    """DistributedDataParallel of ``module`` that averages the gradients of ``network``'s ``groups`` only.

    Each stage gets its own wrapper over the parameters it trains (warm-up: the CNN; stage 1:
    ``ExplainForward`` of UM-ProtoShare; stage 3: its classifier). The parameters of the other groups
    are left to the other wrappers: a reducer that also held the classifier would see its stage-3
    gradients as "used" and fail at the next stage-1 step. ``find_unused_parameters`` tolerates
    parameters frozen for a stage (``freeze_gates``) or unused by a model variant.

    Args:
        module: the module whose forward carries the stage's gradients; contains parameters of ``network``.
        network: the network whose named groups select the synchronised parameters.
        groups: the groups the stage trains.
        device: the rank's device (``cuda:LOCAL_RANK``, or the CPU with gloo).
        find_unused_parameters: DDP's option of that name.
    """
    groups = list(groups)
    kept = {id(p) for group in groups for p in network.group_parameters(group)}
    names = [name for name, _ in module.named_parameters()]
    ignored = [name for name, p in module.named_parameters() if id(p) not in kept]
    if len(ignored) == len(names):
        raise ValueError(
            f"distributed_forward: {type(module).__name__} holds no parameter of the groups {groups} of "
            f"{type(network).__name__}."
        )
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignored)
    device = torch.device(device)
    return nn.parallel.DistributedDataParallel(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


class BroadcastFromRank0:
    """Makes every rank hold rank 0's weights at the start and rank 0's buffers after each epoch.

    STARTED (after a resume has loaded the checkpoint): all parameters and buffers are broadcast, so
    the ranks start identical even where a DDP wrapper leaves parameters out. After each epoch's last
    iteration: the buffers (batch-norm running statistics). DistributedDataParallel broadcasts
    buffers before each forward, so the statistics that the last forward of an epoch updates stay
    rank-specific; without SyncBatchNorm (CPU and gloo) the ranks would then hand the warm-up
    backbone over, push and train stage 3 with different statistics. ITERATION_COMPLETED runs before
    every EPOCH_COMPLETED handler, wherever this handler is attached. Does nothing in one process.

    Args:
        modules: the networks kept identical (UM-ProtoShare and the warm-up CNN).
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)

    def attach(self, engine: Engine) -> None:
        """Register on STARTED and on the ITERATION_COMPLETED that ends each epoch."""
        engine.add_event_handler(Events.STARTED, self.broadcast, True)
        engine.add_event_handler(Events.ITERATION_COMPLETED(self._ends_epoch), self.broadcast, False)

    @staticmethod
    def _ends_epoch(engine: Engine, iteration: int) -> bool:
        return iteration % engine.state.epoch_length == 0

    def broadcast(self, engine: Engine | None = None, parameters: bool = False) -> None:
        """Broadcast every buffer (and with ``parameters`` every parameter) of ``modules`` from rank 0, in place."""
        if _world_size() == 1:
            return
        with torch.no_grad():
            for module in self.modules:
                tensors = [*module.parameters(), *module.buffers()] if parameters else list(module.buffers())
                for tensor in tensors:
                    dist.broadcast(tensor, src=0)


class ShardedEpochMetric(EpochMetric):
    """ignite's EpochMetric over shards of any size: every rank's outputs are gathered once, without padding.

    ``EpochMetric`` all-gathers tensors of equal size only, which needs a padded sampler that counts
    some cases twice. This one gathers each rank's (N_r, C) predictions and (N_r,) targets as objects,
    so that MONAI's ``DistributedSampler(even_divisible=False)`` (each case on exactly one rank) gives
    the metric of the whole set, identical on every rank.
    """

    def compute(self) -> float:
        """``compute_fn`` of all ranks' predictions (N, C) and targets (N,), concatenated in rank order."""
        local = ([p.cpu() for p in self._predictions], [t.cpu() for t in self._targets])
        shards = idist.all_gather(local) if idist.get_world_size() > 1 else [local]
        predictions = [p for shard_predictions, _ in shards for p in shard_predictions]
        targets = [t for _, shard_targets in shards for t in shard_targets]
        if not predictions:
            raise NotComputableError(f"{type(self).__name__} got no example on any rank.")
        return self.compute_fn(torch.cat(predictions), torch.cat(targets))
