"""Prototype gallery at the end of training: where every prototype came from, as NIfTI, PNG and JSON."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

from ignite.engine import Engine, Events
from monai.transforms import Compose

from scripts.explain.evidence import to_original_space, write_nifti
from scripts.explain.report import SourceView, prototype_strip
from scripts.maps import resize_to_input
from scripts.push import PushResult

__all__ = ["GALLERY_JSON", "PrototypeGallery", "write_gallery"]

logger = logging.getLogger(__name__)

GALLERY_JSON = "provenance.json"


def write_gallery(push: PushResult, items: Sequence[dict], preprocessing: Compose, directory: str | PathLike) -> Path:
    """Write each prototype's source-case map and strip, and the push provenance, into ``directory``.

    Per classifier column: ``s<s>_k<k>_map.nii.gz``, the pushed attention map upsampled to the network
    grid and brought back to the source case's own files (shape, affine; the preprocessing inverted),
    so it overlays ``image_files`` in 3D Slicer or ITK-SNAP; ``s<s>_k<k>.png``, the source case's four
    sequences at the map's peak slice. ``provenance.json``: the push records with those file names and
    the source's image files. Pruned prototypes (``"pruned": true`` in their record) are left out.

    Args:
        push: the fold's last push (records and maps).
        items: the cases push searched (``case_id``, ``image`` = four paths).
        preprocessing: the (uncached) preprocessing used in training.
        directory: e.g. ``<fold_dir>/gallery``.

    Raises:
        ValueError: a record names a case not in ``items``, or its grid is not the preprocessing's.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    by_id = {item["case_id"]: item for item in items}
    unknown = sorted({r["case_id"] for r in push.records} - set(by_id))
    if unknown:
        raise ValueError(f"push records name cases {unknown} that are not among the {len(by_id)} training items.")
    images = {}
    entries = []
    for record in push.records:
        if record.get("pruned"):
            continue
        case_id = record["case_id"]
        if case_id not in images:
            images[case_id] = preprocessing({"case_id": case_id, "image": by_id[case_id]["image"]})["image"]
        image = images[case_id]
        if list(image.shape[1:]) != list(record["input_shape"]):
            raise ValueError(
                f"case {case_id!r}: preprocessing gives the grid {list(image.shape[1:])}, the push record "
                f"{record['input_shape']} (column {record['column']})."
            )
        on_grid = resize_to_input(push.maps[record["column"]][None, None], record["input_shape"])[0]
        stem = f"s{record['scale']}_k{record['k']}"
        write_nifti(to_original_space(on_grid, image, preprocessing)[0], by_id[case_id]["image"][0],
                    directory / f"{stem}_map.nii.gz")
        view = SourceView(case_id, record["class_name"], on_grid[0].numpy(), record["peak_voxel"],
                          image.as_tensor().cpu().numpy())
        title = (f"scale {record['scale']}, k {record['k']} <- {case_id} ({record['class_name']}), "
                 f"S = {record['similarity']:.2f}")
        prototype_strip(directory / f"{stem}.png", view, title)
        entries.append({**record, "map_file": f"{stem}_map.nii.gz", "strip_file": f"{stem}.png",
                        "image_files": list(by_id[case_id]["image"])})
    path = directory / GALLERY_JSON
    path.write_text(json.dumps({"class_names": push.class_names, "records": entries}, indent=2) + "\n")
    return path


class PrototypeGallery:
    """Training handler: on COMPLETED, :func:`write_gallery` of the last push (rank 0 only, via ``_disabled_``).

    Args:
        record: the fold's push record (``@push_record``); empty when no push ran → nothing written.
        items: the cases push searched (``@train#items``).
        preprocessing: ``@preprocessing`` (applied uncached, to keep the geometry to invert).
        directory: ``<fold_dir>/gallery``.
    """

    def __init__(
        self, record: PushResult, items: Sequence[dict], preprocessing: Compose, directory: str | PathLike
    ) -> None:
        self.record = record
        self.items = items
        self.preprocessing = preprocessing
        self.directory = Path(directory)

    def attach(self, engine: Engine) -> None:
        """Register on COMPLETED."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Write the gallery of the last push."""
        if not self.record.records:
            logger.warning("no push has run: no prototype gallery written")
            return
        path = write_gallery(self.record, self.items, self.preprocessing, self.directory)
        logger.info("prototype gallery written to %s", path.parent)
