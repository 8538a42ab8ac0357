"""Inference with prototype evidence (configs/inference.json): find the cases, write each one's answer.

Command::

    python -m monai.bundle run --config_file configs/inference.json --input_dir X --output_dir Y --ckpt_path Z

``X`` is one case folder (four NIfTI files named ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair``), a folder of
case folders (BraTS 2020 / 2018-2019 layouts included), or a CSV with columns ``case_id,t1,t1ce,t2,flair``
(``label`` optional); ``--input_files "['t1.nii.gz','t1ce.nii.gz','t2.nii.gz','flair.nii.gz']"`` names one
case's files explicitly (:func:`scripts.data.find_cases` finds them). Per case, :class:`EvidenceWriter` writes
``Y/<case_id>/`` (:class:`~scripts.explain.case_files.CaseFiles`); cases that cannot be read are listed in
``Y/errors.json`` and the others still get their outputs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.networks import eval_mode
from monai.transforms import Compose
from torch import Tensor

from scripts.calibration import Calibration
from scripts.cli import ERRORS_JSON
from scripts.data import InferenceCases
from scripts.explain.case_files import CaseFiles
from scripts.explain.evidence import calibration_note, explain_case, probability_text, ranking_reference
from scripts.explain.sources import SourceImages, load_push_for
from scripts.maps import DEFAULT_SCALE_COMBINATION
from scripts.networks import UMProtoShare
from scripts.prototypes import checked_ranking

__all__ = ["ERRORS_JSON", "EvidenceWriter"]

logger = logging.getLogger(__name__)


class EvidenceWriter:
    """Evaluator handler writing each case's answer into ``<output_dir>/<case_id>/``.

    ``prediction.json`` (:meth:`~scripts.explain.case_files.CaseFiles.record`: the prediction, the true
    grade from :func:`scripts.data.known_grades` and whether they agree), NIfTI maps on the input files'
    grid with ``maps.json`` (:mod:`scripts.explain.case_files`), ``report.png`` and ``report.html``. A case
    that fails is logged and listed by :meth:`write_summary`; the others go on.

    Args:
        network: the UM-ProtoShare the evaluator runs (weights loaded by then).
        preprocessing: the transforms that produced the batch (inverted for the maps).
        cases: from :func:`scripts.data.find_cases`; its errors are reported too.
        output_dir: where the case folders and ``errors.json`` go.
        class_names: C names in label order.
        push_dir: folder of ``push.json``/``push_maps.pt`` (beside the checkpoint); None or missing → no sources.
        datalist_file: training datalist, to show the source cases' images.
        top_per_scale: prototypes per scale given maps and report rows.
        write_report: write ``report.png`` and ``report.html``.
        scale_combination: how the class map combines the scales (:data:`scripts.maps.SCALE_COMBINATIONS`;
            ``evaluate.json`` uses the same).
        calibration: the model's calibration (``Calibration.load`` of the checkpoint: ``calibration.json``
            beside it); None: uncalibrated, and every output says so.
        uncertainty_flips: measure each case's flip spread (:func:`scripts.uncertainty.spread_of`, 8 more
            forward passes) for ``prediction.json`` and the caution banner.
        flip_average: the probabilities shown are the mean over the case's 8 mirror images of the calibrated
            probabilities (the same 8 passes; :func:`scripts.explain.evidence.explain_case`).
        evidence_ranking: what the prototypes are ranked by (:data:`scripts.prototypes.EVIDENCE_RANKINGS`;
            ``relative`` needs the push record's class means, else falls back to ``contribution`` and says so).
    """

    def __init__(
        self,
        network: UMProtoShare,
        preprocessing: Compose,
        cases: InferenceCases,
        output_dir: str | PathLike,
        class_names: Sequence[str],
        push_dir: str | PathLike | None = None,
        datalist_file: str | PathLike | None = None,
        top_per_scale: int = 2,
        write_report: bool = True,
        scale_combination: str = DEFAULT_SCALE_COMBINATION,
        calibration: Calibration | None = None,
        uncertainty_flips: bool = True,
        flip_average: bool = True,
        evidence_ranking: str = "relative",
    ) -> None:
        if top_per_scale < 1:
            raise ValueError(f"top_per_scale must be at least 1, got {top_per_scale}.")
        self.network = network
        self.preprocessing = preprocessing
        self.cases = {item["case_id"]: item for item in cases.items}
        self.failures = [error.as_record() for error in cases.errors]
        self.done: list[dict[str, Any]] = []
        self.output_dir = Path(output_dir)
        self.push_dir = push_dir
        self.datalist_file = datalist_file
        self.calibration = Calibration() if calibration is None else calibration
        self.uncertainty_flips = bool(uncertainty_flips)
        self.flip_average = bool(flip_average)
        self.evidence_ranking = checked_ranking(evidence_ranking)
        self._reference: Tensor | None = None
        self.files = CaseFiles(network, preprocessing, [str(n) for n in class_names], int(top_per_scale),
                               scale_combination, write_report)
        self._sources: SourceImages | None = None

    def attach(self, engine: Engine) -> None:
        """Register on ITERATION_COMPLETED (the config's ``run`` loads the weights before the evaluator starts)."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write every case of the engine's batch (decollated or not)."""
        batch = engine.state.batch
        for item in batch if isinstance(batch, list) else decollate_batch(batch):
            case_id = str(item["case_id"])
            try:
                self.write_case(case_id, item["image"])
            except Exception as error:  # one bad case must not stop the others; it is reported
                logger.exception("case %r failed", case_id)
                self.failures.append({"case_id": case_id, "file": None, "reason": f"{type(error).__name__}: {error}"})

    def sources(self) -> SourceImages:
        """Source lookup, built on first use (after the weights are loaded)."""
        if self._sources is None:
            push = load_push_for(self.push_dir, self.network)
            self._sources = SourceImages(push, self.preprocessing, self.datalist_file)
            self._reference = ranking_reference(None if push is None else push.records, self.evidence_ranking)
        return self._sources

    def write_case(self, case_id: str, image: MetaTensor) -> dict[str, Any]:
        """Explain one preprocessed case (C_in, H, W, D) and write its folder; returns ``prediction.json``'s content."""
        sources = self.sources()
        device = next(self.network.parameters()).device
        with eval_mode(self.network):  # the evaluator restores train mode after its own forward
            evidence = explain_case(self.network, image.as_tensor().to(device), self.calibration,
                                    self.uncertainty_flips, self.flip_average, self._reference)
        folder = self.output_dir / case_id
        record = self.files.write(folder, self.cases[case_id], image, evidence, sources, self.push_dir)
        self._report(record, folder)
        return record

    def _report(self, record: dict[str, Any], folder: Path) -> None:
        """Log a written case (its grade, probability and warnings) and list it for :meth:`write_summary`."""
        case_id, predicted, true_class = record["case_id"], record["predicted_class"], record["true_class"]
        probability = record["probabilities"][predicted]
        self.done.append({"case_id": case_id, "predicted_class": predicted, "probability": probability,
                          "warnings": record["warnings"]})
        logger.info("%s: %s (%s, %s%s) -> %s", case_id, predicted, probability_text(predicted, probability),
                    calibration_note(record["calibration"], record.get("flip_average", False)), "" if true_class is None else f", true {true_class}",
                    folder)
        for warning in record["warnings"]:
            logger.warning("%s: %s", case_id, warning)

    def write_summary(self) -> Path:
        """``<output_dir>/errors.json``: the cases done and those that failed (case, file, reason)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / ERRORS_JSON
        path.write_text(json.dumps({"done": self.done, "failed": self.failures}, indent=2) + "\n")
        if self.failures:
            logger.error("%d case(s) failed, listed in %s", len(self.failures), path)
        return path
