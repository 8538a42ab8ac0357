"""Per-epoch logging: loss terms, learning rate, stage and time into ``engine.state``; progress bar; TensorBoard."""

from __future__ import annotations

import numbers
import time
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar

from .events import StageEvents, attach_stage_events

__all__ = ["EpochLog", "LossProgressBar", "write_epoch_tensorboard"]


class EpochLog:
    """Per-epoch means of the iteration outputs, written to ``engine.state.metrics`` for the stats handlers.

    EPOCH_STARTED clears ``engine.state.metrics`` (every entry is recomputed each epoch). Per iteration
    it accumulates the ``terms`` and ``diagnostics`` of :class:`~scripts.engine.iteration.StagedIteration`'s
    output, weighted by batch size, and times the data loading and the step.
    :attr:`~scripts.engine.events.StageEvents.EPOCH_TRAINED` (before push, which reads them) writes
    ``<stage>/<term>`` (e.g. ``stage1/clst``), ``<stage>/loss``, ``lr``, ``time/data`` and
    ``time/<stage>`` (seconds).
    """

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._count = 0
        self._times = {"data": 0.0, "step": 0.0}
        self._marks = {"data": 0.0, "step": 0.0}
        self._lr = float("nan")

    def attach(self, engine: Engine) -> None:
        """Register on the epoch, batch and iteration events."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._start, "data")
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._stop, "data")
        engine.add_event_handler(Events.ITERATION_STARTED, self._start, "step")
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.accumulate)
        attach_stage_events(engine)
        engine.add_event_handler(StageEvents.EPOCH_TRAINED, self.write)

    def reset(self, engine: Engine) -> None:
        """Start a new epoch's sums; clear last epoch's metrics."""
        engine.state.metrics.clear()
        self._sums, self._count, self._lr = {}, 0, float("nan")
        self._times = {"data": 0.0, "step": 0.0}

    def _start(self, engine: Engine, what: str) -> None:
        self._marks[what] = time.perf_counter()

    def _stop(self, engine: Engine, what: str) -> None:
        self._times[what] += time.perf_counter() - self._marks[what]

    def accumulate(self, engine: Engine) -> None:
        """Add one iteration's loss and terms."""
        self._stop(engine, "step")
        output: dict[str, Any] = engine.state.output
        size = int(output["batch_size"])
        for name, value in {"loss": output["loss"], **output["terms"], **output.get("diagnostics", {})}.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value) * size
        self._count += size
        self._lr = float(output["lr"])

    def write(self, engine: Engine) -> None:
        """Epoch means into ``engine.state.metrics``."""
        stage = getattr(engine.state, "stage", "train")
        metrics = engine.state.metrics
        metrics.update({f"{stage}/{name}": total / max(self._count, 1) for name, total in self._sums.items()})
        metrics["lr"] = self._lr
        metrics["time/data"] = self._times["data"]
        metrics[f"time/{stage}"] = self._times["step"]


class LossProgressBar(ProgressBar):
    """ignite's tqdm progress bar showing the iteration's loss (``attach(engine)`` needs no arguments)."""

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Attach with an output transform picking ``loss`` and ``stage`` from the iteration output."""
        kwargs.setdefault("output_transform", lambda output: {"loss": output["loss"]})
        kwargs.setdefault("state_attributes", ["stage"])
        super().attach(engine, *args, **kwargs)


def write_epoch_tensorboard(engine: Engine, writer: Any) -> None:
    """TensorBoard epoch writer: every numeric ``engine.state.metrics`` entry as a scalar, the stage as text."""
    epoch = engine.state.epoch
    for name, value in engine.state.metrics.items():
        if isinstance(value, numbers.Number):
            writer.add_scalar(name, float(value), epoch)
    stage = getattr(engine.state, "stage", None)
    if stage is not None:
        writer.add_text("stage", str(stage), epoch)
    writer.flush()
