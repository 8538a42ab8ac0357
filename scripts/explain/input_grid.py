"""A case on the grid of its input files, and its maps there: every peak and in-brain flag computed once.

``prediction.json``, ``maps.json``, ``report.png`` and ``report.html`` all read the :class:`InputMap`
objects built here, so that they cannot disagree about where a map peaks or whether that voxel lies in
the brain. :class:`InputCase` also turns input-grid volumes and voxels into the display orientation
(RAS: axial slices with the patient's right on the right and anterior at the top), by flipping and
permuting axes only, so a voxel maps exactly onto the voxel drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Any, NamedTuple

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from scripts.data.foreground import brain_mask

__all__ = ["DISPLAY_AXES", "InputCase", "InputMap", "MapPeak", "map_peak"]

DISPLAY_AXES = "RAS"
"""Orientation of every displayed volume: axis 0 towards the patient's right, 1 anterior, 2 superior."""


class MapPeak(NamedTuple):
    """Where a map is largest: its first maximum, whether the brain holds it, and where that is in mm."""

    voxel: list[int]
    in_brain: bool
    world_mm: list[float] | None


def map_peak(volume: np.ndarray, brain: np.ndarray | None = None, affine: np.ndarray | None = None) -> MapPeak:
    """The peak of a map (X, Y, Z): its first maximum; in the brain (True without a mask); world mm (with an affine)."""
    voxel = [int(i) for i in np.unravel_index(int(np.argmax(volume)), np.shape(volume))]
    inside = True if brain is None else bool(brain[tuple(voxel)])
    world = None if affine is None else [round(float(v), 2) for v in (affine @ np.array([*voxel, 1.0]))[:3]]
    return MapPeak(voxel, inside, world)


@dataclass
class InputCase:
    """One case's voxels on its input files' grid."""

    channels: np.ndarray
    """(C, X, Y, Z) float32, one channel per sequence."""
    affine: np.ndarray
    """(4, 4) voxel → world (mm) of the input files."""

    def __post_init__(self) -> None:
        self.channels = np.asarray(self.channels, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        self.brain = brain_mask(self.channels).numpy()
        """bool (X, Y, Z): :func:`scripts.data.foreground.brain_mask` of the input voxels."""
        self._to_display = ornt_transform(io_orientation(self.affine), axcodes2ornt(DISPLAY_AXES))
        self._from_display = inv_ornt_aff(self._to_display, self.channels.shape[1:])
        """(4, 4): display voxel → input voxel."""

    @classmethod
    def from_files(cls, files: Sequence[str | PathLike]) -> InputCase:
        """The input files' voxels as channels (one per 3-D file, the last axis of a 4-D one), the first's affine."""
        volumes = []
        for file in files:
            data = np.asarray(nib.load(str(file)).dataobj, dtype=np.float32)
            volumes += list(np.moveaxis(data, -1, 0)) if data.ndim == 4 else [data]
        return cls(np.stack(volumes), nib.load(str(files[0])).affine)

    def peak(self, volume: np.ndarray) -> MapPeak:
        """:func:`map_peak` of a map on this grid, against this case's brain and affine."""
        return map_peak(volume, self.brain, self.affine)

    def display(self, volume: np.ndarray) -> np.ndarray:
        """A volume (X, Y, Z) of this grid in :data:`DISPLAY_AXES` orientation (axes flipped/permuted only)."""
        return apply_orientation(np.asarray(volume), self._to_display)

    def display_index(self, voxel: Sequence[int]) -> list[int]:
        """Index in :meth:`display` of the input voxel ``voxel`` [i, j, k]."""
        index = np.linalg.solve(self._from_display, np.array([*voxel, 1.0]))[:3]
        return [int(round(float(v))) for v in index]

    def display_spacing(self) -> list[float]:
        """Voxel size (mm) along each display axis."""
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return [float(zooms[int(axis)]) for axis in self._to_display[:, 0].argsort()]


@dataclass
class InputMap:
    """A map on the input grid divided by its maximum, with that maximum and its :class:`MapPeak`."""

    file: str
    """Its NIfTI file name in the case folder."""
    volume: np.ndarray
    """(X, Y, Z) in [0, 1]."""
    raw_max: float
    peak: MapPeak

    def entry(self) -> dict[str, Any]:
        """The JSON fields of this map: file, raw maximum, peak voxel, world mm and in-brain flag."""
        return {"file": self.file, "raw_max": self.raw_max, "peak_voxel": self.peak.voxel,
                "peak_world_mm": self.peak.world_mm, "peak_in_brain": self.peak.in_brain}
