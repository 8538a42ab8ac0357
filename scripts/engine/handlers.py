"""ignite handlers of the schedule: stage switching, push, stage 3, per-epoch reseeding."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data.utils import set_rnd
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from scripts.losses import LastLayerLoss
from scripts.networks import BackboneCNN, UMProtoShare
from scripts.prototypes import SEPARATION_FLOOR
from scripts.push import PushResult, non_separating_columns, push_prototypes, save_push

from .diagnostics import collapse_warnings
from .events import StageEvents, attach_stage_events
from .iteration import train_last_layer_epoch
from .stages import Schedule

__all__ = ["EpochSeeder", "LastLayerHandler", "PushHandler", "StageHandler", "epoch_seed"]

logger = logging.getLogger(__name__)


class StageHandler:
    """Sets each epoch's trainable groups, starts UM-ProtoShare from the warm-up, steps the stage-1 LR.

    EPOCH_STARTED: ``set_trainable`` of the stage's groups on the network the stage trains (the CNN in
    warm-up, UM-ProtoShare in stage 1); in stage 1 the maps' shift of :meth:`Schedule.map_shift`;
    ``engine.state.stage`` = the stage name.
    :attr:`~scripts.engine.events.StageEvents.EPOCH_TRAINED` (before push and checkpoint): after
    the last warm-up epoch, UM-ProtoShare's encoder, decoder, fusion and add-ons are loaded from the
    CNN (:meth:`UMProtoShare.load_backbone`); after each stage-1 epoch the scheduler steps once.
    """

    def __init__(
        self, network: UMProtoShare, warmup_network: BackboneCNN, schedule: Schedule, lr_scheduler: LRScheduler
    ) -> None:
        self.network = network
        self.warmup_network = warmup_network
        self.schedule = schedule
        self.lr_scheduler = lr_scheduler

    def attach(self, engine: Engine) -> None:
        """Register on EPOCH_STARTED and EPOCH_TRAINED."""
        attach_stage_events(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(StageEvents.EPOCH_TRAINED, self.epoch_completed)

    def epoch_started(self, engine: Engine) -> None:
        """Freeze all but the stage's groups; record the stage on ``engine.state.stage``."""
        stage = self.schedule.stage_of(engine.state.epoch)
        target = self.warmup_network if stage == "warmup" else self.network
        target.set_trainable(self.schedule.trainable_groups(stage))
        if stage == "stage1" and self.schedule.map_anneal_epochs:
            self.network.set_map_shift(self.schedule.map_shift(engine.state.epoch))
        engine.state.stage = stage

    def epoch_completed(self, engine: Engine) -> None:
        """Hand the warm-up backbone over after the last warm-up epoch; step the LR after a stage-1 epoch."""
        epoch = engine.state.epoch
        if self.schedule.stage_of(epoch) == "stage1":
            self.lr_scheduler.step()
        elif epoch == self.schedule.warmup_epochs:
            unused = self.network.load_backbone(self.warmup_network.state_dict())
            logger.info("epoch %d: UM-ProtoShare starts from the warm-up backbone (unused CNN keys: %s)", epoch, unused)


def _attach_on_push_epochs(engine: Engine, event: StageEvents, handler: Any, schedule: Schedule) -> None:
    """Run ``handler`` on ``event`` of the schedule's push epochs."""
    attach_stage_events(engine)
    engine.add_event_handler(event(lambda _, epoch: schedule.is_push_epoch(epoch)), handler)


class PushHandler:
    """Push (Stage 2) after each push epoch's iterations.

    It runs on :attr:`~scripts.engine.events.StageEvents.PUSH`, after the epoch's means and before
    stage 3 (:class:`LastLayerHandler`), validation and the checkpoint, so that every checkpoint
    includes its work. The push runs on every rank (``push_prototypes`` is DDP-aware); files are
    written only with ``write_files``: ``<output_dir>/push/epoch_<e>/push.json`` and ``push_maps.pt``.
    The last push's provenance is copied into ``record``, the fold's :class:`~scripts.push.PushResult`
    that the checkpoint and the final writer share (the handler itself holds no state). Puts
    ``push/similarity`` (mean pushed similarity) and ``time/push`` (seconds) into ``engine.state.metrics``.

    With ``prune_non_separating``, the last push is followed by pruning every prototype whose mean S over the
    push set's cases of the class its weights favour exceeds every other class's by less than
    ``separation_floor`` (:func:`~scripts.push.non_separating_columns`), before that push's stage 3: the
    classifier stops reading them, their records get ``"pruned": true`` (all others ``false``) and
    ``push/pruned`` counts them. Each class keeps at least its best-separating prototype.

    Args:
        network: UM-ProtoShare (plain).
        schedule: which epochs push.
        push_loader: preprocessing-only loader over the training cases (no augmentation).
        class_names: names in label order.
        output_dir: the fold's directory.
        record: receives each push's provenance; default a new one (:attr:`record`).
        write_files: write the push records (rank 0 only under DDP).
        input_size: grid of the recorded peak voxels; default each case's preprocessed size.
        prune_non_separating: prune the prototypes that do not separate the classes after the last push.
        separation_floor: the separation they must reach.
    """

    def __init__(
        self,
        network: UMProtoShare,
        schedule: Schedule,
        push_loader: Iterable[Mapping[str, Any]],
        class_names: Sequence[str],
        output_dir: str | PathLike,
        record: PushResult | None = None,
        write_files: bool = True,
        input_size: Sequence[int] | None = None,
        prune_non_separating: bool = False,
        separation_floor: float = SEPARATION_FLOOR,
    ) -> None:
        self.network = network
        self.schedule = schedule
        self.push_loader = push_loader
        self.class_names = list(class_names)
        self.output_dir = Path(output_dir)
        self.write_files = write_files
        self.input_size = input_size
        self.record = PushResult(class_names=self.class_names) if record is None else record
        self.prune_non_separating = bool(prune_non_separating)
        self.separation_floor = float(separation_floor)

    def attach(self, engine: Engine) -> None:
        """Run on PUSH of the schedule's push epochs."""
        _attach_on_push_epochs(engine, StageEvents.PUSH, self, self.schedule)

    def __call__(self, engine: Engine) -> None:
        """Push the prototypes and record the result."""
        epoch = engine.state.epoch
        for warning in collapse_warnings(engine.state.metrics, self.class_names):
            logger.warning("epoch %d, before push: %s", epoch, warning)
        start = time.perf_counter()
        result = push_prototypes(self.network, self.push_loader, self.class_names, input_size=self.input_size)
        self.record.class_names, self.record.records, self.record.maps = result.class_names, result.records, result.maps
        engine.state.metrics["time/push"] = time.perf_counter() - start
        engine.state.metrics["push/similarity"] = float(np.mean([r["similarity"] for r in result.records]))
        if self.prune_non_separating and epoch == self.schedule.push_epochs()[-1]:
            engine.state.metrics["push/pruned"] = float(len(self.prune(epoch)))
        if self.write_files:
            save_push(self.record, self.output_dir / "push" / f"epoch_{epoch}")

    def prune(self, epoch: int) -> list[int]:
        """Prune the active prototypes of the last push that do not separate the classes; returns their columns."""
        classifier = self.network.classifier
        active = [c for c in range(self.network.num_prototypes) if bool(classifier.active[c])]
        found = non_separating_columns(self.record.records, classifier.effective_weight, self.class_names,
                                       self.separation_floor, active, self.network.prototype_name)
        classifier.prune(list(found))
        for column, record in enumerate(self.record.records):
            record["pruned"] = column in found
        logger.info(
            "epoch %d: pruned %d prototypes that do not separate the classes on the push set (separation < %.2f): %s",
            epoch, len(found), self.separation_floor, [self.network.prototype_name(c) for c in found],
        )
        return list(found)


class LastLayerHandler:
    """``stage3_epochs`` classifier epochs (Stage 3) after each push.

    It runs on :attr:`~scripts.engine.events.StageEvents.LAST_LAYER` of the push epochs, right after
    the push (:class:`PushHandler`) and before validation and the checkpoint. Puts
    ``stage3/loss|cls|l1|lr`` (last stage-3 epoch) and ``time/stage3`` (seconds) into
    ``engine.state.metrics``.

    Args:
        network: UM-ProtoShare (plain).
        schedule: which epochs push, and ``stage3_epochs``.
        train_loader: the augmented training loader.
        optimizer: the fold's Adam over the classifier.
        loss_function: stage-3 objective.
        classifier: module applying the classifier (a DDP wrapper under DDP); default the network's.
        amp: bf16 autocast (CUDA or CPU).
        channels_last_3d: channels-last images.
    """

    def __init__(
        self,
        network: UMProtoShare,
        schedule: Schedule,
        train_loader: Iterable[Mapping[str, Any]],
        optimizer: Optimizer,
        loss_function: LastLayerLoss,
        classifier: nn.Module | None = None,
        amp: bool = False,
        channels_last_3d: bool = False,
    ) -> None:
        self.network = network
        self.schedule = schedule
        self.train_loader = train_loader
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.classifier = classifier
        self.amp = amp
        self.channels_last_3d = channels_last_3d

    def attach(self, engine: Engine) -> None:
        """Run on LAST_LAYER of the schedule's push epochs."""
        _attach_on_push_epochs(engine, StageEvents.LAST_LAYER, self, self.schedule)

    def __call__(self, engine: Engine) -> None:
        """Train the classifier alone for ``stage3_epochs`` epochs."""
        epoch = engine.state.epoch
        self.network.set_trainable(self.schedule.trainable_groups("stage3"))
        seconds = 0.0
        for i in range(1, self.schedule.stage3_epochs + 1):
            means = train_last_layer_epoch(
                self.network,
                self.train_loader,
                self.optimizer,
                self.loss_function,
                engine.state.device,
                engine.prepare_batch,
                self.classifier,
                self.amp,
                self.channels_last_3d,
            )
            seconds += means.pop("seconds")
            logger.info("epoch %d stage 3 [%d/%d]: %s", epoch, i, self.schedule.stage3_epochs, _format(means))
            engine.state.metrics.update({f"stage3/{name}": value for name, value in means.items()})
        engine.state.metrics["stage3/lr"] = float(self.optimizer.param_groups[0]["lr"])
        engine.state.metrics["time/stage3"] = seconds


def _format(values: Mapping[str, float]) -> str:
    return " ".join(f"{name}: {value:.4f}" for name, value in values.items())


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed determined by (seed, epoch, rank) only."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(rank)]).generate_state(1)[0])


class EpochSeeder:
    """Reseeds python, numpy, torch and the datasets' random transforms at every EPOCH_STARTED.

    The seed depends on (``seed``, epoch, rank) only, so an epoch run after a resume draws the same
    numbers (shuffling, augmentation, L_map ratios) as in an uninterrupted run. DataLoader workers
    take their seeds from torch's generator when their iterator starts, after this handler.

    Args:
        seed: the run's seed.
        datasets: datasets whose MONAI random transforms are reseeded (``set_rnd``), for
            ``num_workers=0``; workers are seeded by MONAI's ``worker_init_fn``.
    """

    def __init__(self, seed: int, datasets: Sequence[Any] = ()) -> None:
        self.seed = int(seed)
        self.datasets = list(datasets)

    def attach(self, engine: Engine) -> None:
        """Register on EPOCH_STARTED."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Seed everything from (seed, epoch, rank)."""
        seed = epoch_seed(self.seed, engine.state.epoch, idist.get_rank())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for dataset in self.datasets:
            set_rnd(dataset, seed)
