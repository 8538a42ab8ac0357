"""Stratified, seeded, patient-disjoint folds, and the splits training reads from a datalist."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import DataError

__all__ = ["assign_folds", "split_fold", "split_validation"]


def _patients_by_class(cases: Sequence[dict], key: str, source: str) -> dict[Any, list[str]]:
    """Sorted patient ids per class value ``case[key]``; a patient must have one class only."""
    class_of: dict[str, Any] = {}
    for case in cases:
        patient = case.get("patient_id") or case["case_id"]
        if class_of.setdefault(patient, case[key]) != case[key]:
            raise DataError(case["case_id"], source, f"patient {patient!r} has cases of different classes")
    grouped: dict[Any, list[str]] = defaultdict(list)
    for patient in sorted(class_of):
        grouped[class_of[patient]].append(patient)
    return grouped


def assign_folds(
    cases: Sequence[dict], class_names: Sequence[str], num_folds: int = 5, seed: int = 0, source: str = "dataset"
) -> list[int]:
    """Fold index of each case: stratified by ``label_name``, shuffled with ``seed``, patient-disjoint.

    Patients (``patient_id``, default the case id) of each class, in sorted order, are permuted with
    one ``numpy.random.default_rng(seed)`` drawn class by class in ``class_names`` order and dealt to
    the folds in turn, the deal continuing across classes so that fold sizes differ by at most one
    and each class's count per fold by at most one. The result depends only on the case list, the
    classes, ``num_folds`` and ``seed``, not on the order cases were found in.

    Raises:
        DataError: no cases, or a class with fewer patients than folds (named, with ``source``).
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}")
    if not cases:
        raise DataError(None, source, "empty dataset: no usable cases")
    grouped = _patients_by_class(cases, "label_name", source)
    for name in class_names:
        if len(grouped.get(name, [])) < num_folds:
            raise DataError(
                None, source, f"class {name!r} has {len(grouped.get(name, []))} patients, fewer than {num_folds} folds"
            )
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    dealt = 0
    for name in class_names:
        patients = grouped[name]
        for i, index in enumerate(rng.permutation(len(patients))):
            fold_of[patients[index]] = (dealt + i) % num_folds
        dealt += len(patients)
    return [fold_of[case.get("patient_id") or case["case_id"]] for case in cases]


def split_fold(datalist: dict, fold: int) -> tuple[list[dict], list[dict]]:
    """``(train_items, test_items)`` for cross-validation fold ``fold`` of a datalist.

    The test items are those with ``item["fold"] == fold``; the train items are all others.
    """
    num_folds = int(datalist["num_folds"])
    if not 0 <= int(fold) < num_folds:
        raise ValueError(f"fold must be in [0, {num_folds}), got {fold}")
    items = datalist["training"]
    return [i for i in items if i["fold"] != fold], [i for i in items if i["fold"] == fold]


def split_validation(items: Sequence[dict], val_fraction: float = 0.0, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train_items, val_items)``: a held-in validation share carved from training items.

    Stratified by ``label`` and patient-disjoint: per class, ``round(val_fraction * patients)``
    patients (at least one, at most all but one) drawn with ``default_rng(seed)``. ``val_fraction``
    0 returns ``(items, [])``. Use it for held-in checks, never the test fold.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    items = list(items)
    if val_fraction == 0.0:
        return items, []
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    grouped = _patients_by_class(items, "label", "training items")
    for label in sorted(grouped):
        patients = grouped[label]
        count = min(len(patients) - 1, max(1, round(val_fraction * len(patients))))
        held.update(patients[i] for i in rng.permutation(len(patients))[:count])
    in_val = [(i.get("patient_id") or i["case_id"]) in held for i in items]
    return [i for i, v in zip(items, in_val) if not v], [i for i, v in zip(items, in_val) if v]
