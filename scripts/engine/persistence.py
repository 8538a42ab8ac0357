"""Checkpoint after every epoch, resume on restart, and the fold's final weights."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from torch import nn

from scripts.push import PushResult, save_push

from .events import StageEvents, attach_stage_events

__all__ = ["EpochCheckpoint", "FinalModelWriter", "RNGState", "atomic_save"]

logger = logging.getLogger(__name__)


def atomic_save(obj: Any, path: str | PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)
    return path


class RNGState:
    """The python, numpy, torch (and CUDA) generator states as a checkpointable object (plain data)."""

    def state_dict(self) -> dict[str, Any]:
        """Current generator states; loadable with ``weights_only=True``."""
        name, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
        state = {
            "python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (CUDA states only where CUDA is available)."""
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        numpy_state = state["numpy"]
        np.random.set_state(
            (numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
             numpy_state["has_gauss"], numpy_state["cached_gaussian"])
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


class EpochCheckpoint:
    """Full checkpoint after every epoch; resume from it when the run starts.

    :attr:`~scripts.engine.events.StageEvents.CHECKPOINT` (with ``save``), the last of an epoch's
    stage events, so after push and stage 3: ``{name: obj.state_dict()}`` of ``objects`` plus the
    trainer and ``engine.state.stage`` to ``path``, atomically. STARTED (with ``resume``), if ``path`` exists: everything is restored
    (``weights_only=True``) and ignite continues after the saved epoch. The configured ``max_epochs``
    is kept (a checkpoint written by a shorter run continues to the longer schedule).

    Args:
        path: the checkpoint file, e.g. ``<fold_dir>/checkpoint_last.pt``.
        objects: name → object with ``state_dict``/``load_state_dict`` (networks, optimisers,
            schedulers, handlers, :class:`RNGState`); ``"trainer"`` is added.
        save: write checkpoints (rank 0 only under DDP).
        resume: load ``path`` at start if it exists.
        map_location: where loaded tensors go.
    """

    def __init__(
        self,
        path: str | PathLike,
        objects: Mapping[str, Any],
        save: bool = True,
        resume: bool = True,
        map_location: str | torch.device | None = "cpu",
    ) -> None:
        if "trainer" in objects:
            raise ValueError('objects must not contain "trainer": the engine the handler is attached to is added.')
        self.path = Path(path)
        self.objects = dict(objects)
        self.save_enabled = save
        self.resume = resume
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        """Register the loader on STARTED and the writer on CHECKPOINT."""
        attach_stage_events(engine)
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load)
        if self.save_enabled:
            engine.add_event_handler(StageEvents.CHECKPOINT, self.save)

    def save(self, engine: Engine) -> None:
        """Write every object's state, the trainer's and the stage."""
        checkpoint = {name: obj.state_dict() for name, obj in {**self.objects, "trainer": engine}.items()}
        checkpoint["stage"] = getattr(engine.state, "stage", None)
        atomic_save(checkpoint, self.path)

    def load(self, engine: Engine) -> None:
        """Restore everything from ``path`` if it exists."""
        if not self.path.is_file():
            return
        checkpoint = torch.load(self.path, map_location=self.map_location, weights_only=True)
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load={**self.objects, "trainer": engine}, checkpoint=checkpoint, strict=True)
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise ValueError(
                f"checkpoint {self.path} is at epoch {engine.state.epoch}, beyond this run's max_epochs {max_epochs}: "
                "use another output_dir or a longer schedule."
            )
        engine.state.max_epochs = max_epochs
        engine.state.stage = checkpoint.get("stage")
        logger.info("resumed from %s after epoch %d (stage %s)", self.path, engine.state.epoch, engine.state.stage)


class FinalModelWriter:
    """On COMPLETED: ``<directory>/model.pt`` (plain state dict of the network) and the last push's record.

    Args:
        network: UM-ProtoShare (plain).
        directory: the fold's directory.
        record: the fold's last push (``push.json``, ``push_maps.pt`` beside the weights); None or an
            empty record writes the weights only.
        filename: weights file name.
    """

    def __init__(
        self,
        network: nn.Module,
        directory: str | PathLike,
        record: PushResult | None = None,
        filename: str = "model.pt",
    ) -> None:
        self.network = network
        self.directory = Path(directory)
        self.record = record
        self.filename = filename

    def attach(self, engine: Engine) -> None:
        """Register on COMPLETED."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the weights and the push record."""
        path = atomic_save(self.network.state_dict(), self.directory / self.filename)
        if self.record is not None and self.record.records:
            save_push(self.record, self.directory)
        logger.info("final weights written to %s", path)
