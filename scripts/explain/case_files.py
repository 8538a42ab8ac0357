"""One inference case folder: the maps on the input files' grid, ``maps.json``, ``prediction.json``, the reports.

:class:`CaseFiles` writes them from a case's :class:`~scripts.explain.evidence.CaseEvidence`;
:class:`~scripts.inference.EvidenceWriter` runs the network and hands each case here. The NIfTI maps lie
on the input files' grid, each divided by its maximum (header window 0–1): ``evidence_<class>.nii.gz``
(the predicted class's map, :func:`~scripts.explain.attribution.class_map_from_maps` as evaluation
computes it: scales combined by ``scale_combination``, or Eq. 26 for a class-specific model),
``evidence_<class>_brain.nii.gz`` (the same, zero outside the brain), ``evidence_<class>_scale<s>.nii.gz``
(its per-scale terms, Eq. 27 or 26) and ``prototype_s<s>_k<k>.nii.gz`` for the ``top_per_scale``
prototypes of each scale that rank first for the predicted class
(:meth:`~scripts.explain.evidence.CaseEvidence.ranked`). ``maps.json`` says what each map shows, its raw
maximum and peak (one :class:`~scripts.explain.input_grid.InputMap` per map, which both reports read too).
A brain-supported network also gets ``map_support.nii.gz``: 1 where its maps may lie at all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from scripts.data.layouts import SEQUENCES
from scripts.explain.attribution import class_map_from_maps, scale_class_maps
from scripts.explain.evidence import (
    CaseEvidence,
    prediction_record,
    to_original_space,
    top_columns,
    unit_scaled,
    write_nifti,
)
from scripts.explain.input_grid import InputCase, InputMap
from scripts.explain.report import case_report
from scripts.explain.report_html import case_html
from scripts.explain.sources import SourceImages
from scripts.maps import DEFAULT_SCALE_COMBINATION
from scripts.networks import UMProtoShare, unwrap
from scripts.push import PUSH_JSON, PushResult

__all__ = ["CLASS_MAP_KEY", "MAPS_JSON", "PREDICTION_JSON", "REPORT_HTML", "REPORT_PNG", "CaseFiles"]

CLASS_MAP_KEY = "class"
MAPS_JSON = "maps.json"
"""Sidecar of the NIfTI maps in a case folder: what each shows, its raw maximum and its peak."""
PREDICTION_JSON = "prediction.json"
REPORT_PNG = "report.png"
REPORT_HTML = "report.html"
SUPPORT_FILE = "map_support.nii.gz"
"""Where every scale's maps may lie, on the input files' grid (1 inside; :meth:`CaseFiles.write_support`)."""


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


@dataclass(frozen=True)
class CaseFiles:
    """Writes a case folder: the NIfTI maps and ``maps.json`` (see the module doc), ``prediction.json``
    (:meth:`record`), ``report.png`` (:func:`~scripts.explain.report.case_report`) and ``report.html``
    (:func:`~scripts.explain.report_html.case_html`).

    Args:
        network: the UM-ProtoShare that explained the cases (its maps, columns and prototype names).
        preprocessing: the transforms that produced its input (inverted for the maps).
        class_names: C names in label order.
        top_per_scale: prototypes per scale given maps and report rows.
        scale_combination: how the class map combines the scales (:data:`scripts.maps.SCALE_COMBINATIONS`).
        write_report: write ``report.png`` and ``report.html``.
    """

    network: UMProtoShare
    preprocessing: Compose
    class_names: list[str]
    top_per_scale: int = 2
    scale_combination: str = DEFAULT_SCALE_COMBINATION
    write_report: bool = True

    def _prototype_key(self, column: int) -> str:
        """Key of a prototype's map: ``prototype_s<s>_k<k>``."""
        return f"prototype_{self.network.prototype_name(column)}"

    def network_maps(self, evidence: CaseEvidence, grid: Sequence[int]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """The maps to write, each (H, W, D) on the network's input ``grid``: the predicted class's map
        (``"class"``), its per-scale terms (``"scale<s>"``) and the top prototypes' (``"prototype_s<s>_k<k>"``);
        and those prototypes' classifier columns."""
        device = next(self.network.parameters()).device
        per_scale = {s: m[None].to(device) for s, m in zip(evidence.scales, evidence.maps_per_scale)}
        with torch.no_grad():
            scale_maps = scale_class_maps(self.network, per_scale, [evidence.predicted], grid)
            class_map = class_map_from_maps(self.network, per_scale, [evidence.predicted], grid, self.scale_combination)
        columns = self.network.prototype_columns
        chosen = top_columns(evidence.ranked(evidence.predicted), columns, self.top_per_scale)
        maps = {CLASS_MAP_KEY: class_map[0].cpu()}
        maps |= {f"scale{s}": volume[0].cpu() for s, volume in zip(evidence.scales, scale_maps)}
        maps |= {self._prototype_key(c): evidence.prototype_map(*columns[c], grid) for c in chosen}
        return maps, chosen

    def write_maps(
        self, folder: Path, case: InputCase, reference: str, image: MetaTensor, maps: dict[str, torch.Tensor],
        predicted: str,
    ) -> dict[str, InputMap]:
        """Write ``maps`` (key → map on the network's input grid; :func:`_map_file` names the files) on the
        input files' grid, each divided by its maximum (so it displays on [0, 1]), and :data:`MAPS_JSON`;
        the class map (``"class"``) also inside the brain only (``"class_brain"``). A network whose maps are
        restricted to the brain (``map_support="brain"``) gets every map restricted to the input files' brain too.

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
        sidecar = _maps_sidecar(written, predicted, self.scale_combination)
        (folder / MAPS_JSON).write_text(json.dumps(sidecar, indent=2) + "\n")
        return written

    def write_support(
        self, folder: Path, case: InputCase, reference: str, image: MetaTensor, evidence: CaseEvidence
    ) -> tuple[str | None, float | None]:
        """Write :data:`SUPPORT_FILE`: 1 where every scale's maps may lie (``evidence.support_reach``), brought to the
        input files' grid by inverting the preprocessing (≥ 0.5 after its interpolation) and kept inside their
        brain, 0 elsewhere.

        Returns:
            Its name and its share of the input files' brain (``prediction.json``'s ``map_support_file`` and
            ``brain_in_support``, which both reports state); None, None for maps over the whole volume (no file).
        """
        if evidence.support_reach is None:
            return None, None
        brain = np.asarray(case.brain, dtype=bool)
        volume = to_original_space(evidence.support_reach[None].float(), image, self.preprocessing)[0] >= 0.5
        volume = volume.cpu().numpy() & brain
        description = "where the prototype maps may lie (1): the brain less its border band"
        write_nifti(volume.astype(np.float32), reference, folder / SUPPORT_FILE, description, (0.0, 1.0))
        return SUPPORT_FILE, float(volume.sum()) / max(int(brain.sum()), 1)

    def record(
        self, case: Mapping[str, Any], evidence: CaseEvidence, written: dict[str, InputMap],
        prototype_maps: dict[int, InputMap], push: PushResult | None, push_dir: str | PathLike | None,
    ) -> dict[str, Any]:
        """``prediction.json``: :func:`~scripts.explain.evidence.prediction_record` plus the files, the true
        grade ``true_class`` (the case's ``label_name``) and ``prediction_agrees``, both None when the grade
        is unknown, the map files, and each top prototype's map file and peak voxel in the input image."""
        predicted = self.class_names[evidence.predicted]
        details = {c: {"map_file": m.file, **{k: v for k, v in m.entry().items() if k.startswith("peak_")}}
                   for c, m in prototype_maps.items()}
        records = None if push is None else push.records
        true_class = case.get("label_name")
        return {
            "case_id": case["case_id"],
            "files": dict(zip(SEQUENCES, case["image"])),
            **prediction_record(evidence, self.network.prototype_columns, self.class_names, records, details),
            "true_class": true_class,
            "prediction_agrees": None if true_class is None else true_class == predicted,
            "evidence_maps": {key: written[key].file for key in written if not key.startswith("prototype_")},
            "scale_combination": self.scale_combination,
            "push_record": None if push is None else str(Path(push_dir) / PUSH_JSON),
        }

    def write(
        self, folder: Path, case: Mapping[str, Any], image: MetaTensor, evidence: CaseEvidence,
        sources: SourceImages, push_dir: str | PathLike | None,
    ) -> dict[str, Any]:
        """Write the folder of ``case`` (an item of :func:`scripts.data.find_cases`) from its preprocessed
        ``image`` (C_in, H, W, D) and ``evidence``; returns ``prediction.json``'s content."""
        predicted = self.class_names[evidence.predicted]
        maps, chosen = self.network_maps(evidence, list(image.shape[1:]))
        on_input = InputCase.from_files(case["image"])
        written = self.write_maps(folder, on_input, case["image"][0], image, maps, predicted)
        prototype_maps = {c: written[self._prototype_key(c)] for c in chosen}
        record = self.record(case, evidence, written, prototype_maps, sources.push, push_dir)
        record["map_support_file"], record["brain_in_support"] = self.write_support(
            folder, on_input, case["image"][0], image, evidence
        )
        (folder / PREDICTION_JSON).write_text(json.dumps(record, indent=2) + "\n")
        if self.write_report:
            views = {c: sources.view(c) for c in chosen}
            class_map = written[CLASS_MAP_KEY]
            case_report(folder / REPORT_PNG, case["case_id"], on_input, record, class_map, prototype_maps, views)
            case_html(folder / REPORT_HTML, case["case_id"], on_input, record, class_map, prototype_maps)
        return record
