"""Inference with prototype evidence (configs/inference.json): find the cases, write each one's answer.

Command::

    python -m monai.bundle run --config_file configs/inference.json --input_dir X --output_dir Y --ckpt_path Z

``X`` is one case folder (four NIfTI files named ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair``), a folder of
case folders (BraTS 2020 / 2018-2019 layouts included), or a CSV with columns ``case_id,t1,t1ce,t2,flair``
(``label`` optional); ``--input_files "['t1.nii.gz','t1ce.nii.gz','t2.nii.gz','flair.nii.gz']"`` names one
case's files explicitly. Per case, :class:`EvidenceWriter` writes ``Y/<case_id>/`` (see its doc); cases
that cannot be read are listed in ``Y/errors.json`` and the others still get their outputs.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.networks import eval_mode
from monai.transforms import Compose

from scripts.calibration import Calibration
from scripts.cli import ERRORS_JSON
from scripts.data import DataError, detect_layout, find_case_files
from scripts.data.datalist import load_datalist
from scripts.data.layouts import FINDERS, NAME_MAPPING, SEQUENCES, _nifti_stem, _read_csv, find_csv
from scripts.data.validate import case_problems
from scripts.explain.attribution import class_map_from_maps, scale_class_maps
from scripts.explain.evidence import (
    calibration_note,
    explain_case,
    prediction_record,
    probability_text,
    to_original_space,
    top_columns,
    unit_scaled,
    write_nifti,
)
from scripts.explain.input_grid import InputCase, InputMap
from scripts.explain.report import case_report
from scripts.explain.report_html import case_html
from scripts.explain.sources import SourceImages, load_push_for
from scripts.networks import UMProtoShare, unwrap
from scripts.push import PUSH_JSON

__all__ = ["ERRORS_JSON", "EvidenceWriter", "InferenceCases", "find_cases", "known_grades"]

logger = logging.getLogger(__name__)

CSV_IMAGE_COLUMNS = ("case_id", "t1", "t1ce", "t2", "flair")


class InferenceCases(NamedTuple):
    """Cases to grade (``case_id``, ``image`` = four paths [T1, T1-CE, T2, FLAIR], ``label_name`` or None)
    and the cases that cannot be used, each a :class:`~scripts.data.DataError` naming case and file."""

    items: list[dict]
    errors: list[DataError]


def _case_id_of(file: str | PathLike) -> str:
    """A case id from a sequence's file name: ``x/BraTS20_Training_002_t2.nii.gz`` → ``BraTS20_Training_002``."""
    stem = _nifti_stem(Path(file)) or Path(file).name
    suffix = next((f"_{s}" for s in SEQUENCES if stem.lower().endswith(f"_{s}")), "")
    return stem[: len(stem) - len(suffix)]


def _case_from_files(files: str | PathLike | Sequence[str | PathLike], case_id: str | None) -> dict:
    files = [files] if isinstance(files, (str, PathLike)) else list(files)
    name = case_id or (_case_id_of(files[0]) if files else None)
    if len(files) != 4:
        raise DataError(name, ", ".join(map(str, files)),
                        f"names {len(files)} file(s); give four, [T1, T1-CE, T2, FLAIR], as \"['t1.nii.gz', ...]\"")
    paths = [os.path.abspath(Path(f).expanduser()) for f in files]
    return {"case_id": name, "image": paths, "label_name": None}


def _csv_cases(path: Path, class_names: Sequence[str]) -> tuple[list[dict], list[DataError]]:
    """A cohort CSV; with a ``label`` column through the training finder, else labels unknown."""
    if _nifti_stem(path) is not None:
        raise DataError(_case_id_of(path), str(path), "is one NIfTI file; give its case folder, or the case's four "
                        "files with --input_files")
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(None, str(path), f"is neither a case folder nor a readable CSV ({error})") from None
    if "label" in header:
        return find_csv(path, class_names)
    missing = [c for c in CSV_IMAGE_COLUMNS if c not in header]
    if missing:
        raise DataError(None, str(path), f"columns {missing} missing (found {header})")
    cases, errors = [], []
    for row in rows:
        case_id = row["case_id"].strip()
        cells = [row[s].strip() for s in CSV_IMAGE_COLUMNS[1:]]
        if not all(cells):
            errors.append(DataError(case_id, str(path), "a sequence cell is empty"))
            continue
        files = [c if Path(c).is_absolute() else str(path.parent / c) for c in cells]
        cases.append(_case_from_files(files, case_id))
    return cases, errors


def _folder_cases(path: Path, class_names: Sequence[str]) -> tuple[list[dict], list[DataError]]:
    """One case folder, a known training layout (labels kept), or any folder of case folders."""
    if any(_nifti_stem(p) is not None for p in path.iterdir() if p.is_file()):
        images, _ = find_case_files(path, path.name)
        return [{"case_id": path.name, "image": images, "label_name": None}], []
    try:
        layout, root = detect_layout(path, class_names)
        return FINDERS[layout](root, class_names)
    except DataError:
        pass
    cases, errors = [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        try:
            images, _ = find_case_files(folder, folder.name)
        except DataError as error:
            errors.append(error)
            continue
        cases.append({"case_id": folder.name, "image": images, "label_name": None})
    return cases, errors


def _mapping_grades(folder: Path) -> dict[str, str]:
    """Case id → grade from ``folder/name_mapping.csv`` (BraTS 2020); empty when there is none."""
    mapping = folder / NAME_MAPPING
    if not mapping.is_file():
        return {}
    rows, columns = _read_csv(mapping)
    if not {"BraTS_2020_subject_ID", "Grade"} <= set(columns):
        raise DataError(None, str(mapping), f"columns BraTS_2020_subject_ID and Grade needed (found {columns})")
    return {row["BraTS_2020_subject_ID"].strip(): row["Grade"].strip() for row in rows}


def known_grades(
    cases: Sequence[dict],
    input_dir: str | PathLike | None = None,
    grades_from: str | PathLike | None = None,
    datalist_file: str | PathLike | None = None,
    class_names: Sequence[str] = ("LGG", "HGG"),
) -> dict[str, str]:
    """The true grade of each case where one is known, by case id.

    In this order (the first that knows a case wins): the case's own ``label_name`` (a cohort layout or
    CSV given as ``input_dir``); ``name_mapping.csv`` beside a single case folder given as ``input_dir``
    (BraTS 2020); the cohort at ``grades_from`` (any layout of :func:`scripts.data.detect_layout`);
    the datalist entry with the very same four image files. A source that cannot be read is logged
    and skipped; grades outside ``class_names`` are ignored.
    """
    by_id: dict[str, str] = {}
    if grades_from is not None and Path(grades_from).exists():
        try:
            layout, root = detect_layout(grades_from, class_names)
            by_id = (_mapping_grades(root) if layout == "brats2020" else
                     {c["case_id"]: c["label_name"] for c in FINDERS[layout](root, class_names)[0]})
        except DataError as error:
            logger.warning("no grades from --grades_from: %s", error)
    if input_dir is not None:
        path = Path(os.path.abspath(Path(input_dir).expanduser()))
        if path.is_dir() and any(_nifti_stem(p) is not None for p in path.iterdir() if p.is_file()):
            try:
                by_id = {**by_id, **_mapping_grades(path.parent)}
            except DataError as error:
                logger.warning("no grades: %s", error)
    by_files: dict[tuple[str, ...], str] = {}
    if datalist_file is not None and Path(datalist_file).is_file():
        try:
            datalist = load_datalist(datalist_file)
        except (ValueError, KeyError, OSError) as error:
            logger.warning("no grades from the datalist %s: %s", datalist_file, error)
        else:
            names = datalist["class_names"]
            by_files = {tuple(e["image"]): names[int(e["label"])] for e in datalist["training"] if "label" in e}
    grades = {}
    for case in cases:
        grade = case.get("label_name") or by_id.get(case["case_id"]) or by_files.get(tuple(case["image"]))
        if grade in class_names:
            grades[case["case_id"]] = grade
    return grades


def find_cases(
    input_dir: str | PathLike | None = None,
    input_files: Sequence[str | PathLike] | None = None,
    class_names: Sequence[str] = ("LGG", "HGG"),
    case_id: str | None = None,
    check_voxels: bool = True,
    grades_from: str | PathLike | None = None,
    datalist_file: str | PathLike | None = None,
) -> InferenceCases:
    """Find the cases to grade, check their files (readable, 3-D, one grid, finite voxels) and look up
    their true grades (:func:`known_grades`; ``label_name``, None where unknown).

    Args:
        input_dir: a case folder, a folder of case folders, or a CSV file.
        input_files: four files [T1, T1-CE, T2, FLAIR] of one case (instead of ``input_dir``).
        class_names: class names, to read the grades of a training layout.
        case_id: name of the ``input_files`` case (default: the T1 file name without ``_t1``).
        check_voxels: read every voxel (truncated files, NaN/inf).
        grades_from: a cohort (any training layout) whose grades apply to cases of the same id.
        datalist_file: a datalist whose grades apply to cases with the same image files.

    Raises:
        ValueError: neither or both inputs given.
        DataError: no case found at all, ``input_files`` not four files, ``input_dir`` a file that is no CSV.
    """
    if (input_dir is None) == (input_files is None):
        raise ValueError("give exactly one of input_dir (case folder, folder of cases, CSV) and input_files.")
    if input_files is not None:
        found, errors = [_case_from_files(input_files, case_id)], []
    else:
        path = Path(os.path.abspath(Path(input_dir).expanduser()))
        if not path.exists():
            raise DataError(None, str(path), "input_dir does not exist")
        found, errors = _csv_cases(path, class_names) if path.is_file() else _folder_cases(path, class_names)
    for case in found:
        case_id_ = case["case_id"]
        if not case_id_ or case_id_ in (".", "..") or os.sep in case_id_:
            raise DataError(case_id_, case["image"][0], "case id cannot name an output folder")
    problems = case_problems(found, check_voxels)
    errors = errors + [p for p in problems if p is not None]
    good = [c for c, problem in zip(found, problems) if problem is None]
    grades = known_grades(good, input_dir, grades_from, datalist_file, class_names)
    items = [{"case_id": c["case_id"], "image": list(c["image"]), "label_name": grades.get(c["case_id"])} for c in good]
    if not items and not errors:
        raise DataError(None, str(input_dir), "no case found (expected NIfTI files *_t1, *_t1ce, *_t2, *_flair)")
    for error in errors:
        logger.error("skipping bad case: %s", error)
    return InferenceCases(items, errors)


CLASS_MAP_KEY = "class"
MAPS_JSON = "maps.json"
"""Sidecar of the NIfTI maps in a case folder: what each shows, its raw maximum and its peak."""
REPORT_PNG = "report.png"
REPORT_HTML = "report.html"


def _map_file(key: str, predicted: str) -> str:
    """File name of a map: ``evidence_<class>[_brain|_scale<s>].nii.gz`` for the class map and its
    variants, ``prototype_s<s>_k<k>.nii.gz`` for a prototype's."""
    if key.startswith("prototype_"):
        return f"{key}.nii.gz"
    suffix = key[len(CLASS_MAP_KEY):] if key.startswith(CLASS_MAP_KEY) else f"_{key}"
    return f"evidence_{predicted}{suffix}.nii.gz"


def _maps_sidecar(written: dict[str, InputMap], predicted: str, combination: str) -> dict[str, Any]:
    """Content of :data:`MAPS_JSON`: how to read the values, then one entry per file."""
    meaning = {
        CLASS_MAP_KEY: f"class evidence map of {predicted}: its scales' maps combined by {combination!r}",
        f"{CLASS_MAP_KEY}_brain": f"the class evidence map of {predicted}, zero outside the brain",
    }
    maps = {}
    for key, entry in written.items():
        if key.startswith("scale"):
            what = f"class evidence map of {predicted} at prototype {key} only (Eq. 27)"
        elif key.startswith("prototype_"):
            what = f"attention map of {key.removeprefix('prototype_')} (Eq. 13)"
        else:
            what = meaning[key]
        maps[entry.file] = {"shows": what, **{k: v for k, v in entry.entry().items() if k != "file"}}
    return {
        "values": "each map divided by its own maximum: 1 at its peak, 0 where it does not attend; "
        "raw_max is that maximum (multiply to get the network's values). Header cal_min/cal_max = 0/1.",
        "display": "over FLAIR or T1-CE, colour map 'jet' or 'hot', window 0-1, hide values below 0.3",
        "maps": maps,
    }


class EvidenceWriter:
    """Evaluator handler writing each case's answer into ``<output_dir>/<case_id>/``.

    ``prediction.json`` (:func:`~scripts.explain.evidence.prediction_record` plus the files, the true grade
    ``true_class`` from :func:`known_grades` and ``prediction_agrees``, both None when the grade is unknown,
    and each top prototype's map file and peak voxel in the input image); NIfTI maps on the input files'
    grid, each divided by its maximum (header window 0–1): ``evidence_<class>.nii.gz`` (the predicted
    class's map, :func:`~scripts.explain.attribution.class_map_from_maps` as evaluation computes it:
    scales combined by ``scale_combination``, or Eq. 26 for a class-specific model),
    ``evidence_<class>_brain.nii.gz`` (the same, zero outside the brain),
    ``evidence_<class>_scale<s>.nii.gz`` (its per-scale terms, Eq. 27 or 26) and
    ``prototype_s<s>_k<k>.nii.gz`` for the ``top_per_scale`` prototypes of each scale with the largest
    contribution to the predicted class; ``maps.json`` (what each map shows, its raw maximum and peak: one
    :class:`~scripts.explain.input_grid.InputMap` per map, which both reports read too);
    ``report.png`` (:func:`~scripts.explain.report.case_report`) and ``report.html``
    (:func:`~scripts.explain.report_html.case_html`). A case that fails is logged and listed by
    :meth:`write_summary`; the others go on.

    Args:
        network: the UM-ProtoShare the evaluator runs (weights loaded by then).
        preprocessing: the transforms that produced the batch (inverted for the maps).
        cases: from :func:`find_cases`; its errors are reported too.
        output_dir: where the case folders and ``errors.json`` go.
        class_names: C names in label order.
        push_dir: folder of ``push.json``/``push_maps.pt`` (beside the checkpoint); None or missing → no sources.
        datalist_file: training datalist, to show the source cases' images.
        top_per_scale: prototypes per scale given maps and report rows.
        write_report: write ``report.png`` and ``report.html``.
        scale_combination: how the class map combines the scales (:data:`scripts.explain.maps.SCALE_COMBINATIONS`;
            ``evaluate.json`` uses the same).
        calibration: the model's calibration (``Calibration.load`` of the checkpoint: ``calibration.json``
            beside it); None: uncalibrated, and every output says so.
        uncertainty_flips: measure each case's flip spread (:func:`scripts.uncertainty.flip_spread`, 8 more
            forward passes) for ``prediction.json`` and the caution banner.
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
        scale_combination: str = "product",
        calibration: Calibration | None = None,
        uncertainty_flips: bool = True,
    ) -> None:
        if top_per_scale < 1:
            raise ValueError(f"top_per_scale must be at least 1, got {top_per_scale}.")
        self.network = network
        self.preprocessing = preprocessing
        self.cases = {item["case_id"]: item for item in cases.items}
        self.failures = [error.as_record() for error in cases.errors]
        self.done: list[dict[str, Any]] = []
        self.output_dir = Path(output_dir)
        self.class_names = [str(n) for n in class_names]
        self.push_dir = push_dir
        self.datalist_file = datalist_file
        self.top_per_scale = int(top_per_scale)
        self.write_report = write_report
        self.scale_combination = scale_combination
        self.calibration = Calibration() if calibration is None else calibration
        self.uncertainty_flips = bool(uncertainty_flips)
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
        return self._sources

    def _write_maps(
        self, folder: Path, case: InputCase, reference: str, image: MetaTensor, maps: dict[str, torch.Tensor],
        predicted: str,
    ) -> dict[str, InputMap]:
        """Write ``maps`` (key → map on the network's input grid; :func:`_map_file` names the files) on the
        input files' grid, each divided by its maximum (so it displays on [0, 1]); the class map
        (``"class"``) also inside the brain only (``"class_brain"``). A network whose maps are restricted
        to the brain (``map_support="brain"``) gets every map restricted to the input files' brain too.

        Returns:
            Per key: the map as written, with its raw maximum and its peak (the one computation of it).
        """
        original = to_original_space(torch.stack(list(maps.values())), image, self.preprocessing)
        brain_supported = getattr(unwrap(self.network), "map_support", "volume") == "brain"
        written: dict[str, InputMap] = {}
        for stem, volume in zip(maps, original):
            if brain_supported:  # the maps lie in the brain on the network's grid; resampling spills over its edge
                volume = volume * torch.as_tensor(case.brain, dtype=volume.dtype, device=volume.device)
            volumes = {stem: unit_scaled(volume)}
            if stem == CLASS_MAP_KEY:
                scaled, peak_value = volumes[stem]
                inside, share = unit_scaled(scaled * case.brain)
                volumes[f"{stem}_brain"] = inside, share * peak_value
            for name, (scaled, peak_value) in volumes.items():
                file = _map_file(name, predicted)
                description = f"{file.split('.')[0]}: map / its max (raw max {peak_value:.3g})"
                write_nifti(scaled, reference, folder / file, description, (0.0, 1.0))
                written[name] = InputMap(file, scaled, peak_value, case.peak(scaled))
        return written

    def write_case(self, case_id: str, image: MetaTensor) -> dict[str, Any]:
        """Explain one preprocessed case (C_in, H, W, D) and write its folder; returns ``prediction.json``'s content."""
        case = self.cases[case_id]
        sources = self.sources()
        device = next(self.network.parameters()).device
        with eval_mode(self.network):  # the evaluator restores train mode after its own forward
            evidence = explain_case(self.network, image.as_tensor().to(device), self.calibration,
                                    self.uncertainty_flips)
        columns = self.network.prototype_columns
        predicted = self.class_names[evidence.predicted]
        grid = list(image.shape[1:])
        per_scale = {s: m[None].to(device) for s, m in zip(evidence.scales, evidence.maps_per_scale)}
        with torch.no_grad():
            scale_maps = scale_class_maps(self.network, per_scale, [evidence.predicted], grid)
            class_map = class_map_from_maps(self.network, per_scale, [evidence.predicted], grid, self.scale_combination)
        chosen = {
            c: evidence.prototype_map(*columns[c], grid)
            for c in top_columns(
                evidence.contributions[evidence.predicted], columns, self.top_per_scale, evidence.active
            )
        }
        stems = {CLASS_MAP_KEY: class_map[0].cpu()}
        stems |= {f"scale{s}": volume[0].cpu() for s, volume in zip(evidence.scales, scale_maps)}
        stems |= {f"prototype_{self.network.prototype_name(c)}": volume for c, volume in chosen.items()}
        folder = self.output_dir / case_id
        on_input = InputCase.from_files(case["image"])
        written = self._write_maps(folder, on_input, case["image"][0], image, stems, predicted)
        sidecar = _maps_sidecar(written, predicted, self.scale_combination)
        (folder / MAPS_JSON).write_text(json.dumps(sidecar, indent=2) + "\n")
        prototype_maps = {c: written[f"prototype_{self.network.prototype_name(c)}"] for c in chosen}
        details = {c: {"map_file": m.file, **{k: v for k, v in m.entry().items() if k.startswith("peak_")}}
                   for c, m in prototype_maps.items()}
        push = sources.push
        true_class = case.get("label_name")
        record = {
            "case_id": case_id,
            "files": dict(zip(("t1", "t1ce", "t2", "flair"), case["image"])),
            **prediction_record(evidence, columns, self.class_names, None if push is None else push.records, details),
            "true_class": true_class,
            "prediction_agrees": None if true_class is None else true_class == predicted,
            "evidence_maps": {key: written[key].file for key in written if not key.startswith("prototype_")},
            "scale_combination": self.scale_combination,
            "push_record": None if push is None else str(Path(self.push_dir) / PUSH_JSON),
        }
        (folder / "prediction.json").write_text(json.dumps(record, indent=2) + "\n")
        if self.write_report:
            views = {c: sources.view(c) for c in chosen}
            case_report(folder / REPORT_PNG, case_id, on_input, record, written[CLASS_MAP_KEY], prototype_maps, views)
            case_html(folder / REPORT_HTML, case_id, on_input, record, written[CLASS_MAP_KEY], prototype_maps)
        probability = record["probabilities"][predicted]
        self.done.append({"case_id": case_id, "predicted_class": predicted, "probability": probability,
                          "warnings": record["warnings"]})
        logger.info("%s: %s (%s, %s%s) -> %s", case_id, predicted, probability_text(predicted, probability),
                    calibration_note(record["calibration"]), "" if true_class is None else f", true {true_class}",
                    folder)
        for warning in record["warnings"]:
            logger.warning("%s: %s", case_id, warning)
        return record

    def write_summary(self) -> Path:
        """``<output_dir>/errors.json``: the cases done and those that failed (case, file, reason)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / ERRORS_JSON
        path.write_text(json.dumps({"done": self.done, "failed": self.failures}, indent=2) + "\n")
        if self.failures:
            logger.error("%d case(s) failed, listed in %s", len(self.failures), path)
        return path

