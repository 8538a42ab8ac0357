"""Held-in validation during training and the held-out (test-fold) report after it."""

from __future__ import annotations

import json
import logging
from os import PathLike
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines import Evaluator
from monai.handlers import ValidationHandler

from scripts.metrics import balanced_accuracy

from .events import StageEvents, attach_stage_events
from .stages import Schedule

__all__ = ["HeldOutReport", "StageValidationHandler", "balanced_accuracy_from_logits"]

logger = logging.getLogger(__name__)


def balanced_accuracy_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """BAC (Eq. 24) of ``argmax(logits)`` (N, C) against class indices ``labels`` (N,).

    The ``compute_fn`` of the ignite ``EpochMetric`` that the configs use for validation and the test fold.
    """
    logits = torch.as_tensor(logits)
    return balanced_accuracy(torch.as_tensor(labels).reshape(-1), logits.argmax(dim=1), logits.shape[1])


class StageValidationHandler(ValidationHandler):
    """MONAI's ValidationHandler, counted from the end of the warm-up.

    Runs the validator after every ``interval``-th stage-1 epoch (after that epoch's push and stage 3
    when it has them): the warm-up trains the CNN, not the model under validation. With ``interval``
    equal to ``push_every`` every validation sees a freshly pushed model with its trained classifier.
    """

    def __init__(self, interval: int, schedule: Schedule, validator: Evaluator | None = None) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True)
        if interval < 1:
            raise ValueError(f"validation interval must be at least 1 epoch, got {interval}.")
        self.schedule = schedule

    def attach(self, engine: Engine) -> None:
        """Register on STAGES_COMPLETED (after push and stage 3) of every ``interval``-th stage-1 epoch."""
        attach_stage_events(engine)
        engine.add_event_handler(StageEvents.STAGES_COMPLETED(self._due), self)

    def _due(self, engine: Engine, epoch: int) -> bool:
        done = epoch - self.schedule.warmup_epochs
        return done > 0 and done % self.interval == 0


class HeldOutReport:
    """Logs the test-fold BAC when an evaluator completes and writes it to a JSON file.

    The held-out evaluator gets its BAC from here, not as a key metric: MONAI's workflows track and log
    a key metric as the "best" one, which would read as model selection on the test fold.

    Args:
        metric_name: the evaluator's metric holding BAC.
        path: JSON file written (``{"fold", "bac", "cases"}``); None logs only.
        fold: fold index, for the log line and the file.
        write_files: write ``path`` (rank 0 only under DDP).
        metric: attached to the evaluator as ``metric_name`` (into ``engine.state.metrics``); None when
            the evaluator computes it already.
    """

    def __init__(
        self,
        metric_name: str,
        path: str | PathLike | None,
        fold: int,
        write_files: bool = True,
        metric: Metric | None = None,
    ) -> None:
        self.metric_name = metric_name
        self.path = None if path is None else Path(path)
        self.fold = int(fold)
        self.write_files = write_files
        self.metric = metric

    def attach(self, engine: Engine) -> None:
        """Attach ``metric`` (if given); register on COMPLETED."""
        if self.metric is not None:
            self.metric.attach(engine, self.metric_name)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Log and write the BAC."""
        if self.metric_name not in engine.state.metrics:
            raise KeyError(f"evaluator has no metric {self.metric_name!r}; it has {sorted(engine.state.metrics)}.")
        bac = float(engine.state.metrics[self.metric_name])
        cases = len(engine.data_loader.dataset) if hasattr(engine.data_loader, "dataset") else None
        logger.info("fold %d, held-out test fold (never used for selection): bac=%.4f (%s cases)", self.fold, bac, cases)
        if self.write_files and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"fold": self.fold, "bac": bac, "cases": cases}, indent=2) + "\n")
