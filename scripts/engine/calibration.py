"""Fit a fold's calibration at the end of training, on its validation split (never the test fold).

:func:`calibrate_network` runs a trained network over the validation loader, fits
:func:`scripts.calibration.fit_calibration` to its logits and writes ``calibration.json`` beside the
weights, with the validation logits it was fitted on (so the fit can be audited and refitted).
:class:`FoldCalibration` does this for the fold's model when training completes (after
:class:`~scripts.engine.persistence.FinalModelWriter`); the quick start calls the function once more
for its CNN.
"""

from __future__ import annotations

import logging
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.networks import eval_mode
from torch import Tensor, nn

from scripts.calibration import CALIBRATION_JSON, Calibration, fit_calibration

from .iteration import plain_tensor

__all__ = ["FoldCalibration", "calibrate_network", "validation_logits"]

logger = logging.getLogger(__name__)


def validation_logits(network: nn.Module, loader: Any, device: str | torch.device) -> tuple[Tensor, Tensor, list[str]]:
    """Logits (N, C) float32, labels (N,) and case ids of every case of ``loader``, in eval mode, no gradient.

    The network's train/eval mode is restored afterwards (MONAI's ``eval_mode``).
    """
    logits, labels, case_ids = [], [], []
    with eval_mode(network):
        for batch in loader:
            logits.append(network(plain_tensor(batch["image"]).to(device)).float().cpu())
            labels.append(torch.as_tensor(batch["label"]).long().reshape(-1))
            case_ids.extend(str(c) for c in batch["case_id"])
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), []
    return torch.cat(logits), torch.cat(labels), case_ids


def calibrate_network(
    network: nn.Module,
    loader: Any,
    device: str | torch.device,
    method: str,
    directory: str | PathLike,
) -> Calibration:
    """Fit ``method`` on ``network``'s logits over ``loader`` and write ``<directory>/calibration.json``.

    An empty loader (``val_fraction`` 0) writes the identity (``method`` "none", 0 cases) and logs a
    warning: the probabilities are then the raw softmax, and every reader is told they are uncalibrated.

    Returns:
        The calibration written.
    """
    logits, labels, case_ids = validation_logits(network, loader, device)
    if not case_ids:
        logger.warning("no validation split (val_fraction 0): the probabilities stay uncalibrated.")
        calibration = Calibration()
    else:
        calibration = fit_calibration(logits, labels, method)
    validation = {"case_ids": case_ids, "labels": labels.tolist(), "logits": logits.tolist()}
    path = calibration.save(Path(directory) / CALIBRATION_JSON, {"validation": validation})
    logger.info(
        "calibration (%s) fitted on %d validation cases%s: temperature %.3f, written to %s",
        calibration.method, calibration.cases, " (perfectly separated)" if calibration.separated else "",
        calibration.temperature, path,
    )
    return calibration


class FoldCalibration:
    """On COMPLETED: :func:`calibrate_network` for the fold's model (attach after ``FinalModelWriter``).

    Args:
        network: the fold's model.
        loader: the validation split's loader (``@validate#dataloader``).
        device: where the forward passes run.
        method: one of :data:`scripts.calibration.CALIBRATION_METHODS`.
        directory: the fold's directory (``calibration.json`` lies beside ``model.pt``).
    """

    def __init__(
        self, network: nn.Module, loader: Any, device: str | torch.device, method: str, directory: str | PathLike
    ) -> None:
        self.network = network
        self.loader = loader
        self.device = device
        self.method = method
        self.directory = directory

    def attach(self, engine: Engine) -> None:
        """Register on COMPLETED."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Fit and write the fold's calibration."""
        calibrate_network(self.network, self.loader, self.device, self.method, self.directory)
