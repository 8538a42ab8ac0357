"""Prototype-level read-outs of a fold: where a case's top prototypes peak, whose class each prototype came from.

- The top prototypes of a case are the ``top_k`` columns with the largest contribution to the predicted
  class (Δy = S·w, Eq. 31: :func:`scripts.explain.evidence.prototype_contributions`); each one's map M_s^k
  peaks where :func:`scripts.push.peak_voxel` says (the argmax on the input grid, after the one resize);
  :func:`peak_shares` gives the share of those peaks inside the brain and inside the whole tumour, and their
  mean distance to the tumour (0 inside it), which tells a peak at the tumour's margin from one far away.
- A prototype's source agrees with its weights when the class of the case it was pushed from (the push
  record) is the class whose classifier weight on its column is largest.
- A prototype separates the classes when its mean S over the push set's cases of the class it favours exceeds
  that of every other class by :data:`~scripts.prototypes.SEPARATION_FLOOR`
  (:func:`~scripts.prototypes.class_separation`); one that does not votes with a match every class shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from scripts.prototypes import SEPARATION_FLOOR, class_separation, ranked_columns
from scripts.push import peak_voxel

__all__ = [
    "PEAK_KEYS",
    "READOUT_KEYS",
    "TOP_PROTOTYPES",
    "fold_readouts",
    "peak_shares",
    "prototype_peaks",
    "separating_share",
    "source_agreement",
    "support_warning",
    "top_prototype_columns",
]

TOP_PROTOTYPES = 6
"""Prototypes per case whose peaks are read: as many as a report shows, but the largest over all scales (a report
takes the 2 largest of each of the 3 scales)."""
PEAK_KEYS = ("topk_peak_in_brain", "topk_peak_in_tumour", "topk_peak_tumour_distance")
"""Per-case read-outs of :func:`peak_shares`: two shares and a mean distance in voxels of the input grid."""
READOUT_KEYS = (
    "ap_eq28",
    "top_prototypes",
    *PEAK_KEYS,
    *(f"{key}_correct" for key in PEAK_KEYS),
    "prototype_source_agrees",
    "prototype_separates",
    "topk_separating",
    "topk_separating_correct",
    "prototype_sources",
    "tumour_in_support",
)
"""The keys :func:`fold_readouts` adds to a fold's ``metrics.json`` (all null for a CNN)."""
SUPPORT_WARNING = 0.9
"""A fold whose held-out tumours lie less than this inside the maps' support (``tumour_in_support``) is warned of:
on the quick start they lie 0.97 inside it, on the shifted family (edge tumours) 0.48."""


def top_prototype_columns(
    contributions: Tensor, top_k: int = TOP_PROTOTYPES, active: Tensor | None = None, first: Tensor | None = None
) -> list[int]:
    """Classifier columns of the ``top_k`` first by :func:`~scripts.prototypes.ranked_columns`.

    Args:
        contributions: one case's ranking score of each prototype for one class, (K_total,).
        top_k: how many (all active columns when there are fewer).
        active: (K_total,) bool, the prototypes not pruned (``model.active_columns``); None: all.
        first: (K_total,) bool, the prototypes ranked ahead of the others; None: none.
    """
    if contributions.ndim != 1 or top_k < 1:
        raise ValueError(f"need contributions (K_total,) and top_k >= 1, got {tuple(contributions.shape)}, {top_k}.")
    return ranked_columns(contributions, active, first)[:top_k]


def prototype_peaks(
    maps_per_scale: Sequence[Tensor],
    columns: Sequence[tuple[int, int]],
    chosen: Sequence[int],
    size: Sequence[int],
    within: Tensor | None = None,
) -> list[list[int]]:
    """Peak voxel on the input grid of each chosen column's map M_s^k (:func:`scripts.push.peak_voxel`).

    Args:
        maps_per_scale: one case's maps per prototype scale, ascending scale, (K_s, h_s, w_s, d_s) each.
        columns: (scale, k) of every classifier column (``model.prototype_columns``).
        chosen: the columns to read.
        size: the input grid, (H, W, D).
        within: read the maps inside this bool (H, W, D) mask only (the brain of a brain-supported model,
            as inference writes its maps); None: everywhere.

    Returns:
        [i, j, l] per chosen column, in its order.
    """
    scales = sorted({scale for scale, _ in columns})
    if len(scales) != len(maps_per_scale):
        raise ValueError(f"{len(maps_per_scale)} map tensors for the prototype scales {scales}.")
    peaks = []
    for column in chosen:
        scale, k = columns[column]
        peaks.append(peak_voxel(maps_per_scale[scales.index(scale)][k], list(size), within))
    return peaks


def peak_shares(peaks: Sequence[Sequence[int]], brain: Tensor, tumour: Tensor | None = None) -> dict[str, float]:
    """Share of ``peaks`` inside the brain and inside the tumour, and their mean distance to the tumour.

    The distance of a peak is the Euclidean distance, in voxels of the input grid, from its voxel centre to the
    nearest tumour voxel's centre (0 inside the tumour); NaN without a tumour mask or with an empty one.

    Args:
        peaks: voxel indices [i, j, l] on the input grid (at least one).
        brain: bool (H, W, D), :func:`scripts.data.foreground.brain_mask` of the input.
        tumour: bool (H, W, D), the whole-tumour mask, or None.

    Returns:
        :data:`PEAK_KEYS` → fraction, fraction, voxels.
    """
    if not peaks:
        raise ValueError("peak_shares needs at least one peak.")

    def as_mask(mask: Tensor) -> Tensor:
        mask = torch.as_tensor(mask).bool()
        if mask.ndim != 3:
            raise ValueError(f"masks must be (H, W, D), got shape {tuple(mask.shape)}.")
        return mask

    def share(mask: Tensor) -> float:
        mask = as_mask(mask)
        return sum(bool(mask[tuple(peak)]) for peak in peaks) / len(peaks)

    def distance(mask: Tensor) -> float:
        voxels = as_mask(mask).nonzero().double()
        if not len(voxels):
            return math.nan
        return float(torch.cdist(torch.tensor(peaks, dtype=torch.float64), voxels).min(dim=1).values.mean())

    return {
        "topk_peak_in_brain": share(brain),
        "topk_peak_in_tumour": math.nan if tumour is None else share(tumour),
        "topk_peak_tumour_distance": math.nan if tumour is None else distance(tumour),
    }


def source_agreement(
    records: Sequence[Mapping[str, Any]],
    classifier_weight: Tensor,
    class_names: Sequence[str],
    active: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per prototype: the class of its push source, the class its weights favour, and whether they agree.

    Args:
        records: the push record (``push.json``), one per classifier column, in column order.
        classifier_weight: w_cls, (C, K_total); the favoured class is the argmax of a column (first on ties).
        class_names: the C names, in label order.
        active: (K_total,) bool, the prototypes not pruned; None: all.

    Returns:
        One dict per active column: ``column``, ``scale``, ``k``, ``source_case``, ``source_class``,
        ``favoured_class`` (names), ``agrees``, ``class_similarity`` (the record's, or None), ``separation``
        (:func:`~scripts.prototypes.class_separation`, or None) and ``separates`` (separation ≥
        :data:`~scripts.prototypes.SEPARATION_FLOOR`, or None).
    """
    if classifier_weight.ndim != 2 or classifier_weight.shape[1] != len(records):
        shape = tuple(classifier_weight.shape)
        raise ValueError(f"{len(records)} push records for a classifier weight of shape {shape}.")
    favoured = classifier_weight.detach().argmax(dim=0).tolist()
    rows = []
    for column, (record, cls) in enumerate(zip(records, favoured)):
        if record["column"] != column:
            raise ValueError(f"push record {column} is for column {record['column']}: records out of column order.")
        if active is not None and not bool(active[column]):
            continue
        class_similarity = record.get("class_similarity")
        separation = class_separation(class_similarity, class_names[cls])
        rows.append(
            {
                "column": column,
                "scale": record["scale"],
                "k": record["k"],
                "source_case": record["case_id"],
                "source_class": class_names[int(record["label"])],
                "favoured_class": class_names[cls],
                "agrees": int(record["label"]) == cls,
                "class_similarity": class_similarity,
                "separation": separation,
                "separates": None if separation is None else separation >= SEPARATION_FLOOR,
            }
        )
    return rows


def separating_share(top_columns: Sequence[Sequence[int]], sources: Sequence[Mapping[str, Any]] | None) -> Tensor | None:
    """Per case, the share of its top prototypes that separate the classes (:func:`source_agreement`'s ``separates``).

    Args:
        top_columns: per case, the classifier columns of its top prototypes (each active, at least one).
        sources: :func:`source_agreement` rows (active columns), or None without a push record.

    Returns:
        (N,) float64, or None without a push record or where a top prototype's separation is unknown.
    """
    if sources is None:
        return None
    separates = {row["column"]: row["separates"] for row in sources}
    if any(separates.get(column) is None for columns in top_columns for column in columns):
        return None
    return torch.tensor([sum(separates[c] for c in columns) / len(columns) for columns in top_columns], dtype=torch.float64)


def fold_readouts(
    ap_eq28: Tensor,
    peaks: Mapping[str, Tensor],
    correct: Tensor,
    top_k: int,
    sources: Sequence[Mapping[str, Any]] | None,
    separating: Tensor | None = None,
    reach: Tensor | None = None,
) -> dict[str, Any]:
    """A fold's prototype read-outs (:data:`READOUT_KEYS`): means over cases, and over correct cases (``_correct``).

    Args:
        ap_eq28: per-case AP of the Eq. 28 map, (N,).
        peaks: :data:`PEAK_KEYS` → per-case value, (N,) each.
        correct: bool (N,), the cases classified correctly (a ``_correct`` mean is NaN when there is none).
        top_k: prototypes read per case.
        sources: :func:`source_agreement` of the fold's push record, or None without one.
        separating: :func:`separating_share` per case, (N,), or None (its read-outs are then null).
        reach: per case (N,), :func:`~scripts.metrics.share_in_support` (NaN without mask), or None (null).
    """
    readouts: dict[str, Any] = {"ap_eq28": float(ap_eq28.mean()), "top_prototypes": int(top_k)}
    for key in PEAK_KEYS:
        readouts[key] = float(peaks[key].mean())
        readouts[f"{key}_correct"] = float(peaks[key][correct].mean()) if correct.any() else math.nan
    readouts["prototype_source_agrees"] = None if sources is None else sum(r["agrees"] for r in sources) / len(sources)
    separates = None if sources is None else [r["separates"] for r in sources]
    known = separates is not None and bool(separates) and None not in separates
    readouts["prototype_separates"] = sum(separates) / len(separates) if known else None
    readouts["topk_separating"] = None if separating is None else float(separating.mean())
    readouts["topk_separating_correct"] = (
        None if separating is None else float(separating[correct].mean()) if correct.any() else math.nan
    )
    readouts["prototype_sources"] = None if sources is None else list(sources)
    readouts["tumour_in_support"] = None if reach is None else float(reach.mean())
    return readouts


def support_warning(tumour_in_support: float | None, margin: int) -> str | None:
    """The evaluation's warning when the held-out tumours lie less than :data:`SUPPORT_WARNING` inside the maps'
    support (mean of :func:`~scripts.metrics.share_in_support`), naming the band to narrow; None otherwise.

    Args:
        tumour_in_support: the fold's mean share (None or NaN: no masks, or maps over the whole volume).
        margin: the network's ``map_support_margin``.
    """
    if tumour_in_support is None or math.isnan(tumour_in_support) or tumour_in_support >= SUPPORT_WARNING:
        return None
    return (f"only {100 * tumour_in_support:.0f} % of the held-out tumours lie where the prototype maps may lie "
            f"(the brain less a {margin}-voxel band along its border, coarse cells mostly outside it): a tumour at the "
            "brain's edge cannot show evidence; --map_support_margin 1 or 0 (trained and read alike) reaches more of it")
