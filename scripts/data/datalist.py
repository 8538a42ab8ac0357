"""Build, write, read and reuse the datalist JSON that holds every case and its fold.

Command: ``python -m scripts.data.datalist --dataset_dir DIR --out FILE [--class_names LGG,HGG]
[--layout auto|brats2020|grade_folders|csv] [--seed 0] [--num_folds 5] [--skip_bad_cases]
[--check_voxels True]``.

The file (MONAI datalist style)::

    {"class_names": ["LGG", "HGG"], "seed": 0, "num_folds": 5,
     "dataset": "/abs/dataset/dir", "layout": "brats2020", "voxels_checked": true,
     "skipped": [{"case_id": ..., "file": ..., "reason": ...}],
     "training": [{"case_id": "BraTS20_Training_001", "patient_id": ..., "image": [t1, t1ce, t2, flair],
                   "mask": path or null, "label": 1, "label_name": "HGG", "fold": 3}, ...]}

Paths are written absolute. A datalist edited by hand may use relative paths: ``load_datalist``
resolves them against the datalist file's own folder.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire

from .errors import DataError, raise_or_skip
from .folds import assign_folds
from .layouts import FINDERS, detect_layout
from .validate import case_problems

__all__ = [
    "DEFAULT_CLASS_NAMES",
    "build_datalist",
    "ensure_datalist",
    "load_datalist",
    "parse_class_names",
    "write_datalist",
]

logger = logging.getLogger(__name__)

DEFAULT_CLASS_NAMES = ("LGG", "HGG")


def parse_class_names(class_names: str | Sequence[str]) -> list[str]:
    """Class names in label order, from a list or a comma-separated string; at least two, unique."""
    names = class_names.split(",") if isinstance(class_names, str) else class_names
    names = [str(n).strip() for n in names]
    if len(names) < 2 or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"class_names must be at least two distinct non-empty names, got {class_names!r}")
    return names


def build_datalist(
    dataset_dir: str | Path,
    class_names: str | Sequence[str] = DEFAULT_CLASS_NAMES,
    layout: str = "auto",
    seed: int = 0,
    num_folds: int = 5,
    skip_bad_cases: bool = False,
    check_voxels: bool = True,
    num_workers: int | None = None,
) -> dict:
    """Find, check and fold every case of a cohort; return the datalist dict (see the module doc).

    Args:
        dataset_dir: BraTS 2020 or 2018/2019 folder, or a cohort ``.csv`` file.
        class_names: class names in label order (label = index); C may exceed 2.
        layout: ``auto``, ``brats2020``, ``grade_folders`` or ``csv`` (see ``detect_layout``).
        seed: fold shuffling seed.
        num_folds: number of cross-validation folds.
        skip_bad_cases: list bad cases (log + ``"skipped"``) and go on, instead of raising.
        check_voxels: read every voxel to catch truncated files and NaN/inf (slow; see ``check_case``).
        num_workers: threads for the file checks.

    Raises:
        DataError: a bad case (unless skipped), an empty dataset, or a class with fewer patients than folds.
    """
    names = parse_class_names(class_names)
    layout, path = detect_layout(dataset_dir, names, layout)
    found, errors = FINDERS[layout](path, names)
    problems = case_problems(found, check_voxels, num_workers)
    skipped = raise_or_skip(errors + [p for p in problems if p is not None], skip_bad_cases)
    cases = [case for case, problem in zip(found, problems) if problem is None]
    folds = assign_folds(cases, names, num_folds, seed, source=str(path))
    training = [
        {
            "case_id": case["case_id"],
            "patient_id": case["patient_id"],
            "image": case["image"],
            "mask": case["mask"],
            "label": names.index(case["label_name"]),
            "label_name": case["label_name"],
            "fold": fold,
        }
        for case, fold in zip(cases, folds)
    ]
    return {
        "class_names": names,
        "seed": int(seed),
        "num_folds": int(num_folds),
        "dataset": str(path),
        "layout": layout,
        "voxels_checked": bool(check_voxels),
        "skipped": sorted((e.as_record() for e in skipped), key=lambda r: (r["case_id"] or "", r["file"])),
        "training": training,
    }


def write_datalist(datalist: dict, path: str | Path) -> None:
    """Write atomically (temporary file + rename); same content gives the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(datalist, indent=2) + "\n")
    os.replace(temporary, path)


def load_datalist(path: str | Path) -> dict:
    """Read a datalist; relative image/mask paths are resolved against the datalist's folder."""
    path = Path(path)
    with open(path) as f:
        datalist = json.load(f)
    for key in ("class_names", "num_folds", "training"):
        if key not in datalist:
            raise DataError(None, str(path), f"not a datalist: key {key!r} missing")

    def absolute(p: str) -> str:
        return p if os.path.isabs(p) else os.path.abspath(path.parent / p)

    for item in datalist["training"]:
        item["image"] = [absolute(p) for p in item["image"]]
        item["mask"] = absolute(item["mask"]) if item.get("mask") else None
    return datalist


def ensure_datalist(
    dataset_dir: str | Path,
    path: str | Path,
    class_names: str | Sequence[str] = DEFAULT_CLASS_NAMES,
    seed: int = 0,
    num_folds: int = 5,
    **build_options: Any,
) -> dict:
    """Return the datalist at ``path``, building and writing it first if it does not exist.

    ``build_options``: the other options of :func:`build_datalist` (``layout``, ``skip_bad_cases``, ...).
    An existing file is reused without re-reading images (its cases were checked when it was built);
    it must agree with ``class_names``, ``seed`` and ``num_folds``, else ``ValueError``. Under
    multi-process training call it on one rank first, then on the others after a barrier.
    """
    names = parse_class_names(class_names)
    if not Path(path).is_file():
        datalist = build_datalist(dataset_dir, names, seed=seed, num_folds=num_folds, **build_options)
        write_datalist(datalist, path)
    datalist = load_datalist(path)
    wanted = {"class_names": names, "seed": int(seed), "num_folds": int(num_folds)}
    found = {key: datalist.get(key) for key in wanted}
    if found != wanted:
        raise ValueError(f"datalist {path} was built with {found}, not {wanted}: delete it or give another path")
    return datalist


def _with_out(signature: inspect.Signature) -> inspect.Signature:
    """``signature`` with a second parameter ``out: str`` (the command line of :func:`main`)."""
    first, *rest = signature.parameters.values()
    out = inspect.Parameter("out", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str")
    return signature.replace(parameters=[first, out, *rest], return_annotation=None)


def main(*args: Any, **kwargs: Any) -> None:
    """Build the datalist of ``dataset_dir`` (:func:`build_datalist`'s arguments) and write it to ``out``
    (overwriting it); print a summary."""
    arguments = main.__signature__.bind(*args, **kwargs).arguments
    out = arguments.pop("out")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    datalist = build_datalist(**arguments)
    write_datalist(datalist, out)
    counts = Counter((item["fold"], item["label_name"]) for item in datalist["training"])
    logger.info(
        "%s: %d cases (%s layout), %d skipped",
        out, len(datalist["training"]), datalist["layout"], len(datalist["skipped"]),
    )
    for fold in range(datalist["num_folds"]):
        logger.info("fold %d: %s", fold, {name: counts[(fold, name)] for name in datalist["class_names"]})


main.__signature__ = _with_out(inspect.signature(build_datalist))  # --help lists its flags and defaults

if __name__ == "__main__":
    fire.Fire(main)
