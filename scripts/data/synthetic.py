"""Synthetic BraTS 2020 cohort: brain-like 4-sequence volumes whose tumour's look depends on its grade.

Command: ``python -m scripts.data.synthetic --out DIR --cases N [--shape 64,64,48] [--seed 0]
[--hgg_fraction 0.8] [--ambiguous_fraction 0.1] [--extension nii.gz|nii] [--family quickstart|shifted]``.

``DIR`` becomes a BraTS 2020 training folder (what ``MICCAI_BraTS2020_TrainingData`` is):
``BraTS20_Training_NNN/BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}.nii.gz``, int16 images, uint8
label maps (1 necrosis / non-enhancing core, 2 oedema, 4 enhancing), ``name_mapping.csv`` with the
BraTS 2020 columns, and ``synthetic_info.csv`` (family, grade, ambiguity, appearance, foci and edge
placement of each case).

Geometry follows BraTS: 1 mm voxels, affine ``diag(-1, -1, 1)`` with origin ``(0, Y - 1, 0)`` (the
LPS-stored header BraTS 2018-2021 files carry), array axis 1 running anterior to posterior.

Everything outside the tumour (whole-tumour label) is drawn the same way for both grades, with the
same random numbers in the same order: one case index gives the same voxels outside its tumour
whichever grade it is given. Inside, HGG shows a necrotic core (dark T1/T1-CE) in an enhancing rim
(bright T1-CE); LGG a homogeneous non-enhancing core bright on T2/FLAIR; oedema (bright T2/FLAIR)
surrounds both. An appearance value ``a`` in [0, 1] blends the two looks (HGG ~U(0.75, 1), LGG
~U(0, 0.25)); ambiguous cases, of either grade, take ``a`` ~U(0.35, 0.65).

Two families share all of the above and differ in geometry (:data:`FAMILIES`): ``quickstart`` (what the
quick start trains on) and ``shifted``, kept for checking choices on data they were not tuned on: a
smaller brain, more elongated and finer-lobed tumours of more varied and smaller sizes, some tumours
centred on the brain's surface (clipped by it) and some cases with two foci.
"""

from __future__ import annotations

import csv
import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import fire
import nibabel as nib
import numpy as np
from monai.utils import look_up_option

__all__ = [
    "BRAIN_RADII",
    "CSF",
    "DEFAULT_SHAPE",
    "EXTENSIONS",
    "FAMILIES",
    "GENERATOR_VERSION",
    "GREY",
    "HGG_NECROSIS",
    "HGG_RIM",
    "LGG_CORE",
    "NAME_MAPPING_COLUMNS",
    "OEDEMA_GAIN",
    "SEQUENCES",
    "TUMOUR_SHARE",
    "WHITE",
    "PhantomFamily",
    "Plan",
    "brats_affine",
    "generate_case",
    "generate_dataset",
    "generate_pairs",
]

SEQUENCES = ("t1", "t1ce", "t2", "flair")
EXTENSIONS = ("nii.gz", "nii")
NAME_MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)
DEFAULT_SHAPE = (240, 240, 155)
GENERATOR_VERSION = 2
"""Bumped whenever the same seed would draw different cases (2: BraTS-sized tumours, larger brains)."""

# Relative intensities per sequence [T1, T1-CE, T2, FLAIR].
WHITE = np.array([1.00, 1.00, 0.50, 0.60], np.float32)
GREY = np.array([0.72, 0.74, 0.75, 0.80], np.float32)
CSF = np.array([0.25, 0.27, 1.40, 0.15], np.float32)
OEDEMA_GAIN = np.array([0.85, 0.85, 1.55, 1.65], np.float32)
"""Oedema multiplies the underlying tissue."""
LGG_CORE = np.array([0.55, 0.57, 1.35, 1.25], np.float32)
"""Non-enhancing core: dark-ish T1, no enhancement, bright T2/FLAIR."""
HGG_NECROSIS = np.array([0.35, 0.40, 1.50, 0.95], np.float32)
HGG_RIM = np.array([0.70, 1.70, 0.95, 1.05], np.float32)
"""Enhancing rim: bright on T1-CE only."""
BRAIN_RADII = np.array([0.44, 0.47, 0.45])
"""Brain ellipsoid radii as fractions of the grid (the brain fills about 40 % of the grid, as in a BraTS crop)."""
TUMOUR_SHARE = (0.02, 0.15)
"""Range of the whole tumour's (core + oedema) share of the brain volume, drawn uniformly (BraTS: a few % to ~15%)."""


@dataclass(frozen=True)
class PhantomFamily:
    """The geometry one family of phantoms draws; tissue, grade looks, ambiguity and acquisition are shared.

    Attributes:
        brain_radii: brain ellipsoid radii as fractions of the grid.
        tumour_share: range of a focus's whole-tumour share of the brain volume (halved for each of two foci).
        log_uniform_share: draw that share log-uniformly (many small tumours) instead of uniformly.
        core_stretch: range of the per-axis factor on the tumour core's radii (wider: more elongated).
        lobes: ``(terms, frequency, amplitude)`` of the plane waves that make the tumour's surface irregular.
        edge_fraction: expected share of cases whose (first) focus is centred on the brain's surface.
        two_foci_fraction: expected share of cases with a second focus on the far side of the brain.
    """

    brain_radii: tuple[float, float, float]
    tumour_share: tuple[float, float]
    log_uniform_share: bool
    core_stretch: tuple[float, float]
    lobes: tuple[int, float, float]
    edge_fraction: float
    two_foci_fraction: float


FAMILIES = {
    "quickstart": PhantomFamily(
        brain_radii=tuple(BRAIN_RADII.tolist()),
        tumour_share=TUMOUR_SHARE,
        log_uniform_share=False,
        core_stretch=(0.85, 1.15),
        lobes=(3, 2.5, 0.1),
        edge_fraction=0.0,
        two_foci_fraction=0.0,
    ),
    "shifted": PhantomFamily(
        brain_radii=(0.37, 0.41, 0.38),
        tumour_share=(0.004, 0.1),
        log_uniform_share=True,
        core_stretch=(0.7, 1.4),
        lobes=(4, 3.5, 0.09),
        edge_fraction=0.35,
        two_foci_fraction=0.3,
    ),
}
"""Phantom families by name. ``quickstart`` draws exactly what generator version 2 drew; ``shifted`` has a brain
filling about 24 % of the grid (quickstart: about 40 %), whole tumours drawn at 0.4-10 % of the brain (log-uniform;
quickstart 2-15 % uniform), more elongated and with finer lobes, 35 % of cases centred on the brain's surface
and 30 % with two foci."""


def brats_affine(shape: Sequence[int]) -> np.ndarray:
    """BraTS header affine for a 1 mm grid of ``shape``: ``diag(-1, -1, 1)``, origin ``(0, Y-1, 0)``."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine[1, 3] = shape[1] - 1
    return affine


def _axes(shape: Sequence[int], centre: np.ndarray, radii: np.ndarray) -> list[np.ndarray]:
    """Normalised coordinates ``(i - centre) / radius`` per axis (float32), shaped to broadcast."""
    axes = []
    for axis, (n, c, r) in enumerate(zip(shape, centre, radii)):
        view = [1, 1, 1]
        view[axis] = int(n)
        axes.append(((np.arange(n, dtype=np.float32) - np.float32(c)) / np.float32(r)).reshape(view))
    return axes


def _box(
    centre: np.ndarray, half: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...]]:
    """Integer box ``[lo, hi)`` around ``centre`` of half-size ``half``, clipped to ``shape``, and its slices."""
    lo = np.clip(np.floor(centre - half), 0, shape).astype(int)
    hi = np.clip(np.ceil(centre + half) + 1, 0, shape).astype(int)
    return lo, hi, tuple(slice(int(b), int(e)) for b, e in zip(lo, hi))


def _wobble(rng: np.random.Generator, axes: list[np.ndarray], terms: int, freq: float, amplitude: float) -> np.ndarray:
    """Smooth random field: sum of ``terms`` plane waves of spatial frequency ``freq`` (per unit radius)."""
    field = np.float32(0.0)
    for _ in range(terms):
        direction = rng.normal(size=3)
        direction *= freq / np.linalg.norm(direction)
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        field = field + np.float32(amplitude) * np.sin(sum(np.float32(d) * a for d, a in zip(direction, axes)) + phase)
    return field


def _ramp(distance: np.ndarray, edge: float) -> np.ndarray:
    """Soft inside-membership of ``distance < 0`` with a linear edge ``edge`` wide, in [0, 1]."""
    return np.clip(np.float32(0.5) - distance / np.float32(edge), 0.0, 1.0)


def _bias(rng: np.random.Generator, axes: list[np.ndarray]) -> np.ndarray:
    """Smooth multiplicative bias field: exp of a random quadratic in the normalised coordinates."""
    x, y, z = axes
    c = rng.normal(0, 0.08, 3).astype(np.float32)
    q = rng.normal(0, 0.05, 6).astype(np.float32)
    plane = c[0] * x + c[1] * y + q[0] * x * x + q[1] * x * y + q[2] * y * y  # (X, Y, 1)
    line = c[2] * z + q[3] * z * z  # (1, 1, Z)
    return np.exp(plane + line + q[4] * x * z + q[5] * y * z)


def _appearance(u: float, high_grade: bool, ambiguous: bool) -> float:
    """Map a uniform draw to the case's appearance ``a`` (0 = LGG look, 1 = HGG look)."""
    if ambiguous:
        return 0.35 + 0.3 * u
    return 0.75 + 0.25 * u if high_grade else 0.25 * u


def _focus_centre(
    rng: np.random.Generator, direction: np.ndarray, r_whole: float, edge: bool, paired: bool
) -> np.ndarray:
    """Offset of a focus's centre from the brain's centre, in units of the brain's radii `(3,)`.

    A lone focus sits at ``U(0, 0.6) (1 - r)`` of the way out, so that it stays mostly inside; an edge focus
    at ``1 - U(0.3, 0.8) r``, so that its outer part is cut off by the brain's surface; one of two foci at
    ``1 - U(1, 1.5) r``, near the surface, so that the two stay apart.
    """
    unit = direction / np.linalg.norm(direction)
    if edge:
        return unit * (1 - rng.uniform(0.3, 0.8) * r_whole)
    if paired:
        return unit * (1 - rng.uniform(1.0, 1.5) * r_whole)
    return unit * rng.uniform(0.0, 0.6) * (1 - r_whole)


def generate_case(
    rng: np.random.Generator,
    high_grade: bool,
    ambiguous: bool = False,
    shape: Sequence[int] = DEFAULT_SHAPE,
    family: str = "quickstart",
    edge: bool = False,
    foci: int = 1,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One synthetic case: images ``(4, X, Y, Z)`` int16 [T1, T1-CE, T2, FLAIR], labels ``(X, Y, Z)`` uint8, ``a``.

    The random draws do not depend on ``high_grade`` or ``ambiguous``: they only decide how the
    tumour core is labelled and what it looks like. Work is done in the brain's bounding box.

    Args:
        rng: the case's generator.
        high_grade, ambiguous: the grade and whether its look is blended (see :func:`_appearance`).
        shape: grid size.
        family: a key of :data:`FAMILIES` (brain size, tumour sizes and shapes).
        edge: centre the (first) focus on the brain's surface.
        foci: 1 or 2 tumour foci (the second on the far side of the brain, same grade and look).
    """
    spec = look_up_option(family, FAMILIES)
    if foci not in (1, 2):
        raise ValueError(f"foci must be 1 or 2, got {foci}")
    shape = tuple(int(n) for n in shape)
    size = np.array(shape, np.float64)
    # Brain: a wobbly ellipsoid, white matter inside a folded grey-matter shell, two ventricles.
    centre = size / 2 + rng.uniform(-0.02, 0.02, 3) * size
    radii = np.array(spec.brain_radii) * size * rng.uniform(0.95, 1.03, 3)
    lo, hi, brain_box = _box(centre, radii * 1.12 + 2, shape)
    centre, work = centre - lo, tuple(hi - lo)  # coordinates inside the brain box from here on
    edge_width = 1.5 / float(radii.mean())  # soft edges ~1.5 voxels wide
    axes = _axes(work, centre, radii)
    rho = np.sqrt(axes[0] ** 2 + axes[1] ** 2 + axes[2] ** 2) * (1.0 + _wobble(rng, axes, 3, 3.0, 0.03))
    brain = _ramp(rho - 1.0, edge_width)
    white = _ramp(rho - (0.78 + _wobble(rng, axes, 2, 14.0, 0.04)), edge_width)
    spread = rng.uniform(0.8, 1.2)
    ventricles = np.zeros(work, np.float32)
    for side in (-1.0, 1.0):
        v_centre = centre + np.array([side * 0.13, -0.05, 0.10]) * radii
        v_radii = np.array([0.09, 0.33, 0.18]) * radii * spread
        v_lo, v_hi, v_box = _box(v_centre, v_radii * 1.2 + 2, work)
        v_axes = _axes(v_hi - v_lo, v_centre - v_lo, v_radii)
        v_fill = _ramp(np.sqrt(sum(a**2 for a in v_axes)) - 1.0, edge_width / 0.15)
        np.maximum(ventricles[v_box], v_fill, out=ventricles[v_box])
    # Per-case tissue contrast jitter, shared by both grades.
    tissue = [t * rng.uniform(0.95, 1.05, 4).astype(np.float32) for t in (WHITE, GREY, CSF)]
    images = np.empty((4, *work), np.float32)
    for s in range(4):
        base = tissue[1][s] + white * (tissue[0][s] - tissue[1][s])
        images[s] = (base + ventricles * (tissue[2][s] - base)) * brain

    # Tumour foci: irregular blobs; oedema shell; core with inner part and rim. Each whole tumour
    # (oedema included) has a drawn share of the brain's volume; the core is its inner 1/oedema_extent.
    # The appearance is drawn once, after the first focus's geometry, and shared by both foci.
    labels = np.zeros(shape, np.uint8)
    a = direction = None
    for focus in range(foci):
        share = spec.tumour_share
        share = np.exp(rng.uniform(*np.log(share))) if spec.log_uniform_share else rng.uniform(*share)
        share = share / foci
        r_whole = share ** (1 / 3)  # in units of the brain's radii
        if direction is None:
            direction = rng.normal(size=3)
        else:  # the second focus on the far side of the brain
            direction = rng.normal(0.0, 0.3, 3) - direction / np.linalg.norm(direction)
        offset = _focus_centre(rng, direction, r_whole, edge and not focus, foci > 1)
        t_centre = centre + offset * radii
        oedema_extent, inner_extent = rng.uniform(1.2, 1.5), rng.uniform(0.4, 0.7)
        r_core = r_whole / oedema_extent * radii * rng.uniform(*spec.core_stretch, 3)
        if a is None:
            a = _appearance(rng.uniform(), high_grade, ambiguous)
        t_lo, t_hi, box = _box(t_centre, r_core * oedema_extent * 1.3 + 2, work)
        t_axes = _axes(t_hi - t_lo, t_centre - t_lo, r_core)
        t_rho = np.sqrt(sum(x**2 for x in t_axes)) * (1.0 + _wobble(rng, t_axes, *spec.lobes))
        in_brain = rho[box] < 1.0
        whole, core, inner = (in_brain & (t_rho < extent) for extent in (oedema_extent, 1.0, inner_extent))
        oedema = _ramp(t_rho - oedema_extent, 1.5 / float(r_core.mean())) * brain[box] * (1.0 - ventricles[box])
        inner_look = (1 - a) * LGG_CORE + a * HGG_NECROSIS
        rim_look = (1 - a) * LGG_CORE + a * HGG_RIM
        for s in range(4):
            region = images[s][box]
            region *= 1.0 + oedema * (OEDEMA_GAIN[s] - 1.0)
            region[core] = np.where(inner[core], inner_look[s], rim_look[s])
        tumour_labels = labels[brain_box][box]
        tumour_labels[whole & (tumour_labels == 0)] = 2  # another focus's core keeps its label
        tumour_labels[core] = np.where(inner[core], 1, 4) if high_grade else 1

    # Acquisition: smooth bias field, intensity scale, noise; zero outside the brain (skull-stripped).
    outside = rho >= 1.0
    out = np.zeros((4, *shape), np.int16)
    for s in range(4):
        volume = images[s] * _bias(rng, axes)
        volume += np.float32(rng.uniform(0.01, 0.04)) * rng.standard_normal(work, dtype=np.float32)
        volume *= np.float32(rng.uniform(400.0, 1200.0))
        np.clip(volume, 1.0, 32767.0, out=volume)
        volume[outside] = 0.0
        out[s][brain_box] = np.rint(volume)
    return out, labels, float(a)


def _shape(shape: str | Sequence[int]) -> tuple[int, int, int]:
    values = tuple(int(n) for n in (shape.split(",") if isinstance(shape, str) else shape))
    if len(values) != 3 or min(values) < 16:
        raise ValueError(f"shape must be three sizes of at least 16 voxels, got {shape!r}")
    return values


class Plan(NamedTuple):
    """What one written case is: its draw, grade, look and tumour layout."""

    draw: int
    high_grade: bool
    ambiguous: bool
    edge: bool = False
    foci: int = 1


def _layouts(rng: np.random.Generator, count: int, spec: PhantomFamily) -> list[tuple[bool, int]]:
    """``(edge, foci)`` of ``count`` cases, each drawn with the family's fractions."""
    edge = rng.random(count) < spec.edge_fraction
    two = rng.random(count) < spec.two_foci_fraction
    return [(bool(e), 2 if t else 1) for e, t in zip(edge, two)]


def _write_cohort(
    out: Path, plans: Sequence[Plan], shape: tuple[int, int, int], seed: int, extension: str, family: str
) -> list[dict]:
    """Write one case per plan (case n+1 from ``default_rng([seed, plan.draw])``)."""
    out.mkdir(parents=True, exist_ok=True)
    affine = brats_affine(shape)
    records = []
    for n, plan in enumerate(plans):
        case_id = f"BraTS20_Training_{n + 1:03d}"
        images, labels, a = generate_case(
            np.random.default_rng([seed, plan.draw]), plan.high_grade, plan.ambiguous, shape, family, plan.edge,
            plan.foci,
        )
        case_dir = out / case_id
        case_dir.mkdir(exist_ok=True)
        for name, volume in (*zip(SEQUENCES, images), ("seg", labels)):
            image = nib.Nifti1Image(volume, affine)
            image.header.set_xyzt_units("mm", "sec")
            nib.save(image, case_dir / f"{case_id}_{name}.{extension}")
        records.append({"case_id": case_id, "family": family, "grade": "HGG" if plan.high_grade else "LGG",
                        "ambiguous": plan.ambiguous, "appearance": round(a, 4), "draw": plan.draw,
                        "foci": plan.foci, "edge": plan.edge})
    with open(out / "synthetic_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]) if records else ["case_id"])
        writer.writeheader()
        writer.writerows(records)
    # name_mapping.csv last: its presence says the cohort is complete.
    with open(out / "name_mapping.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(NAME_MAPPING_COLUMNS)
        writer.writerows([r["grade"], "NA", "NA", "NA", "NA", r["case_id"]] for r in records)
    return records


def generate_dataset(
    out: str | Path,
    cases: int = 20,
    shape: str | Sequence[int] = DEFAULT_SHAPE,
    seed: int = 0,
    hgg_fraction: float = 0.8,
    ambiguous_fraction: float = 0.1,
    extension: str = "nii.gz",
    family: str = "quickstart",
) -> list[dict]:
    """Write ``cases`` synthetic cases in the BraTS 2020 layout under ``out``; return their records.

    Args:
        out: folder to create (plays ``MICCAI_BraTS2020_TrainingData``).
        cases: number of subjects, named ``BraTS20_Training_001`` on.
        shape: grid size at 1 mm, e.g. ``(240, 240, 155)`` (BraTS) or ``"64,64,48"``.
        seed: makes the whole cohort reproducible; case ``i`` uses ``default_rng([seed, i])``.
        hgg_fraction: expected share of HGG (BraTS 2020: 293/369, about 0.794).
        ambiguous_fraction: expected share of cases, of either grade, with a blended appearance.
        extension: ``nii.gz`` or ``nii``.
        family: a key of :data:`FAMILIES`; its edge and two-foci fractions are drawn per case after the
            grades, so that the grades of a seed are the same in every family.
    """
    extension = look_up_option(extension, EXTENSIONS)
    spec = look_up_option(family, FAMILIES)
    shape = _shape(shape)
    if not (0.0 <= hgg_fraction <= 1.0 and 0.0 <= ambiguous_fraction <= 1.0):
        raise ValueError(f"fractions must lie in [0, 1], got {hgg_fraction}, {ambiguous_fraction}")
    grade_rng = np.random.default_rng([seed, 2**31])
    high = grade_rng.random(cases) < hgg_fraction
    ambiguous = grade_rng.random(cases) < ambiguous_fraction
    layouts = _layouts(grade_rng, cases, spec)
    plans = [Plan(i, bool(high[i]), bool(ambiguous[i]), *layouts[i]) for i in range(cases)]
    return _write_cohort(Path(out), plans, shape, seed, extension, family)


def generate_pairs(
    out: str | Path,
    pairs: int = 8,
    shape: str | Sequence[int] = DEFAULT_SHAPE,
    seed: int = 1,
    extension: str = "nii.gz",
    family: str = "quickstart",
) -> list[dict]:
    """Counterfactual pairs: each drawn case written twice, as HGG then as LGG, identical outside the tumour.

    Cases ``2i + 1`` (HGG) and ``2i + 2`` (LGG) share the draw ``default_rng([seed, i])``: the same brain,
    the same tumour shape and the same noise; only the tumour's inside differs (clear looks, never
    ambiguous). The BraTS 2020 layout and ``synthetic_info.csv`` (its ``draw`` column names the pair)
    are those of :func:`generate_dataset`, ``family`` too. Use a ``seed`` other than the training cohort's.
    """
    extension = look_up_option(extension, EXTENSIONS)
    layouts = _layouts(np.random.default_rng([seed, 2**31]), pairs, look_up_option(family, FAMILIES))
    plans = [Plan(i, high, False, *layouts[i]) for i in range(pairs) for high in (True, False)]
    return _write_cohort(Path(out), plans, _shape(shape), seed, extension, family)


def main(*args: Any, **kwargs: Any) -> None:
    """Write the cohort (:func:`generate_dataset`'s arguments) and print the time per case."""
    out = inspect.signature(generate_dataset).bind(*args, **kwargs).arguments["out"]
    start = time.perf_counter()
    records = generate_dataset(*args, **kwargs)
    seconds = time.perf_counter() - start
    grades = [r["grade"] for r in records]
    family = records[0]["family"] if records else "no"
    print(f"{out}: {len(records)} cases of the {family} family ({grades.count('HGG')} HGG, {grades.count('LGG')} LGG), "
          f"{seconds / max(len(records), 1):.2f} s per case")


main.__signature__ = inspect.signature(generate_dataset)  # so that --help lists its flags and defaults

if __name__ == "__main__":
    fire.Fire(main)
