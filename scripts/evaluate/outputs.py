"""Files of a fold's evaluation: per-case CSV, JSON with NaN as null, deletion-curve PNG, NIfTI maps."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from torch import Tensor

__all__ = ["CASE_COLUMNS", "plot_deletion_curve", "read_case_table", "save_volume", "write_case_table", "write_json"]

CASE_COLUMNS = ("case_id", "label", "prediction", "ap")
"""Columns of the per-case CSV besides ``prob_<class name>`` (one per class, after ``label``) and the extra
per-case values a prototype model adds after ``ap``."""


def _plain(value: Any) -> Any:
    """JSON-ready: NaN/inf floats become None, tensors and numpy values plain Python."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (Tensor, np.ndarray)):
        return _plain(value.tolist())
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: str | PathLike, content: Mapping[str, Any]) -> Path:
    """``content`` as indented JSON (NaN written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(content), indent=2, allow_nan=False) + "\n")
    return path


def write_case_table(
    path: str | PathLike,
    case_ids: Sequence[str],
    labels: Tensor,
    probs: Tensor,
    ap: Tensor,
    class_names: Sequence[str],
    extra: Mapping[str, Tensor] | None = None,
) -> Path:
    """One row per case: ``case_id, label, prob_<class>..., prediction, ap, <extra>...`` (full float precision).

    Args:
        case_ids: N ids.
        labels: ground-truth class indices (N,).
        probs: class probabilities (N, C); the prediction is their argmax.
        ap: activation precision per case (N,), NaN (written empty) without a mask.
        class_names: the C names, in label order.
        extra: more per-case values, column name → (N,) (NaN written empty), in column order.
    """
    extra = dict(extra or {})
    counts = {"ap": ap.numel(), **{name: values.numel() for name, values in extra.items()}}
    if not len(case_ids) == labels.numel() == probs.shape[0] or set(counts.values()) != {len(case_ids)} or (
        probs.shape[1] != len(class_names)
    ):
        raise ValueError(
            f"{len(case_ids)} ids, {labels.numel()} labels, probs {tuple(probs.shape)}, values per column {counts} "
            f"for classes {list(class_names)}."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ["case_id", "label", *(f"prob_{name}" for name in class_names), "prediction", "ap", *extra]
    columns = [ap.tolist(), *(values.tolist() for values in extra.values())]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for case_id, label, row, *values in zip(case_ids, labels.tolist(), probs.tolist(), *columns):
            texts = ["" if math.isnan(value) else repr(value) for value in values]
            writer.writerow([case_id, label, *(repr(p) for p in row), int(np.argmax(row)), *texts])
    return path


def read_case_table(path: str | PathLike) -> list[dict[str, Any]]:
    """Rows of :func:`write_case_table` with numbers parsed (empty values as NaN)."""
    rows = []
    with Path(path).open(newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {"case_id": row.pop("case_id")}
            parsed["label"], parsed["prediction"] = int(row.pop("label")), int(row.pop("prediction"))
            parsed.update({name: float(value) if value else math.nan for name, value in row.items()})
            rows.append(parsed)
    return rows


def plot_deletion_curve(path: str | PathLike, curve: Tensor, ids: float, title: str = "") -> Path:
    """PNG of the fold-level BAC against the deleted fraction (k / steps), with the IDS in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = torch.as_tensor(curve).double().cpu().numpy()
    fractions = np.linspace(0.0, 1.0, values.size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(5, 4), dpi=100)
    axis.plot(fractions, values, marker=".", label=f"IDS = {ids:.4f}")
    axis.set(xlabel="fraction of voxels deleted (most attributed first)", ylabel="fold BAC", ylim=(-0.02, 1.02))
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def save_volume(path: str | PathLike, volume: Tensor, affine: Tensor | np.ndarray, dtype: type = np.float32) -> Path:
    """A (H, W, D) volume as NIfTI with ``affine`` (4, 4) (the preprocessed grid's, RAS)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = torch.as_tensor(volume).detach().cpu().numpy().astype(dtype)
    if array.ndim != 3:
        raise ValueError(f"{path.name}: a volume must be (H, W, D), got shape {array.shape}.")
    nib.save(nib.Nifti1Image(array, np.asarray(torch.as_tensor(affine).cpu(), dtype=np.float64)), path)
    return path
