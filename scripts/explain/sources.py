"""Where each prototype came from: the push record checked against a model, and its source cases' images."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import numpy as np
from monai.transforms import Compose

from scripts.data import DataError, load_datalist
from scripts.explain.report import SourceView
from scripts.maps import resize_to_input
from scripts.networks import UMProtoShare
from scripts.push import PUSH_JSON, PushResult, load_push

__all__ = ["SourceImages", "load_push_for"]

logger = logging.getLogger(__name__)


class SourceImages:
    """Source cases of the push record, read through the training datalist and preprocessed on demand.

    Args:
        push: the push record (None: no source can be shown).
        preprocessing: the inference preprocessing (the training one, uncached).
        datalist_file: the training datalist (``runs/datalist.json``); missing → maps shown alone.
    """

    def __init__(self, push: PushResult | None, preprocessing: Compose, datalist_file: str | PathLike | None) -> None:
        self.push = push
        self.preprocessing = preprocessing
        self.items: dict[str, dict] = {}
        self.note = ""
        self._images: dict[str, np.ndarray] = {}
        if datalist_file is None or not Path(datalist_file).is_file():
            self.note = f"source image not shown: no datalist at {datalist_file}"
            return
        try:
            self.items = {item["case_id"]: item for item in load_datalist(datalist_file)["training"]}
        except DataError as error:
            logger.warning("source images not shown: %s", error)
            self.note = f"source image not shown: {error.reason}"

    def _image(self, case_id: str, grid: Sequence[int]) -> tuple[np.ndarray | None, str]:
        if case_id not in self.items:
            return None, self.note or f"source image not shown: {case_id} not in the datalist"
        if case_id not in self._images:
            item = {"case_id": case_id, "image": self.items[case_id]["image"]}
            self._images[case_id] = np.asarray(self.preprocessing(item)["image"].detach().cpu())
        image = self._images[case_id]
        if list(image.shape[1:]) != list(grid):
            return None, f"source image not shown: its grid {list(image.shape[1:])} is not the push grid {list(grid)}"
        return image, ""

    def view(self, column: int) -> SourceView | None:
        """The source of classifier column ``column``, or None without a push record."""
        if self.push is None:
            return None
        record = self.push.records[column]
        grid = record["input_shape"]
        attention = resize_to_input(self.push.maps[column][None, None], grid)[0, 0].numpy()
        image, note = self._image(record["case_id"], grid)
        return SourceView(record["case_id"], record["class_name"], attention, record["peak_voxel"], image, note)


def load_push_for(push_dir: str | PathLike | None, network: UMProtoShare) -> PushResult | None:
    """The push record in ``push_dir`` checked against ``network``'s prototypes; None when there is none."""
    if push_dir is None or not (Path(push_dir) / PUSH_JSON).is_file():
        logger.warning("no %s in %s: prototype sources are not shown", PUSH_JSON, push_dir)
        return None
    push = load_push(push_dir)
    if [(r["scale"], r["k"]) for r in push.records] != [tuple(c) for c in network.prototype_columns]:
        raise ValueError(
            f"{Path(push_dir) / PUSH_JSON} does not describe this model's prototypes {network.prototype_columns}."
        )
    return push
