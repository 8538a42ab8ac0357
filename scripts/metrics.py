"""Evaluation metrics (SPEC §6, Appendix D, F.2): BAC, AP and IDS, and what AP is read against.

Pure PyTorch: no ignite, no model classes. Class attention maps are made in :mod:`scripts.maps`
(which also resizes every map to the input grid). Binary problems: class index 1 (HGG) is the
positive class.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import compute_roc_auc

from scripts.maps import resize_to_input

__all__ = [
    "LOCALISATION_KEYS",
    "activation_precision",
    "activation_precision_per_case",
    "balanced_accuracy",
    "classification_metrics",
    "deletion_curve",
    "deletion_masks",
    "deletion_thresholds",
    "incremental_deletion_score",
    "localisation_summary",
    "min_max_normalize",
    "per_class_recall",
    "share_in_support",
    "similarity_spread",
    "support_reach",
]

logger = logging.getLogger(__name__)

ArrayLike = torch.Tensor | np.ndarray | Sequence[int] | Sequence[float]


def _as_long(values: ArrayLike, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values).detach().cpu()
    if tensor.ndim != 1 or tensor.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of class indices, got {tuple(tensor.shape)}.")
    return tensor.long()


def per_class_recall(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> torch.Tensor:
    """Recall of every class, NaN for a class absent from ``y_true``.

    Args:
        y_true: ground-truth class indices, (N,).
        y_pred: predicted class indices, (N,).
        num_classes: C.

    Returns:
        (C,) float64 tensor.
    """
    y_true, y_pred = _as_long(y_true, "y_true"), _as_long(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {tuple(y_true.shape)} and y_pred {tuple(y_pred.shape)} differ in length.")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.min() < 0 or values.max() >= num_classes:
            raise ValueError(f"{name} holds indices outside [0, {num_classes}): {values.unique().tolist()}.")
    support = torch.bincount(y_true, minlength=num_classes).double()
    hits = torch.bincount(y_true[y_true == y_pred], minlength=num_classes).double()
    return torch.where(support > 0, hits / support.clamp_min(1), torch.full_like(support, math.nan))


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> float:
    """Balanced accuracy, the mean of per-class recall (Eq. 24).

    Binary: (TPR + TNR) / 2. Classes absent from ``y_true`` have no recall and are left out of the
    mean (as scikit-learn's ``balanced_accuracy_score``), so a single-class fold scores that class's
    recall.

    Args:
        y_true: ground-truth class indices, (N,).
        y_pred: predicted class indices, (N,).
        num_classes: C.
    """
    return float(per_class_recall(y_true, y_pred, num_classes).nanmean())


def classification_metrics(y_true: ArrayLike, probs: torch.Tensor | np.ndarray) -> dict[str, float]:
    """BAC, accuracy, sensitivity, specificity and ROC AUC of one fold, all fractions.

    The prediction is ``argmax(probs)``. Binary (C = 2): sensitivity is the recall of class 1 (HGG),
    specificity that of class 0 (LGG), ROC AUC ranks ``probs[:, 1]``. C > 2: macro averages over
    classes, one-vs-rest (sensitivity = mean recall, specificity = mean true-negative rate, ROC AUC =
    mean one-vs-rest AUC). Undefined values are NaN, never an error: a rate whose denominator class is
    absent, and ROC AUC whenever ``y_true`` lacks any of the C classes (e.g. a single-class fold).

    Args:
        y_true: ground-truth class indices, (N,).
        probs: class probabilities (or any scores whose argmax is the prediction), (N, C).
    """
    y_true = _as_long(y_true, "y_true")
    probs = torch.as_tensor(probs).detach().cpu().double()
    if probs.ndim != 2 or probs.shape[0] != y_true.numel() or probs.shape[1] < 2:
        raise ValueError(f"probs must be (N, C) with N = {y_true.numel()} and C >= 2, got {tuple(probs.shape)}.")
    num_classes = probs.shape[1]
    y_pred = probs.argmax(dim=1)
    recall = per_class_recall(y_true, y_pred, num_classes)
    one_hot_true = F.one_hot(y_true, num_classes).bool()
    one_hot_pred = F.one_hot(y_pred, num_classes).bool()
    negatives = (~one_hot_true).sum(0).double()
    true_negatives = (~one_hot_true & ~one_hot_pred).sum(0).double()
    tnr = torch.where(negatives > 0, true_negatives / negatives.clamp_min(1), torch.full_like(negatives, math.nan))
    if bool(torch.all(one_hot_true.any(0))):
        scores, target = (probs[:, 1], y_true) if num_classes == 2 else (probs, one_hot_true.long())
        roc_auc = float(compute_roc_auc(scores, target, average="macro"))
    else:
        roc_auc = math.nan
    binary = num_classes == 2
    return {
        "bac": float(recall.nanmean()),
        "accuracy": float((y_pred == y_true).double().mean()),
        "sensitivity": float(recall[1] if binary else recall.mean()),
        "specificity": float(recall[0] if binary else tnr.mean()),
        "roc_auc": roc_auc,
    }


def min_max_normalize(volume: torch.Tensor) -> torch.Tensor:
    """Min-max normalise one case over the whole map to [0, 1]; a constant map becomes all zeros.

    Args:
        volume: any shape, one case.
    """
    span = volume.max() - volume.min()
    return (volume - volume.min()) / span if span > 0 else torch.zeros_like(volume)


def _single_map(attribution: torch.Tensor, name: str) -> torch.Tensor:
    """(H, W, D) or (1, H, W, D) -> (1, 1, H, W, D) float, finite."""
    attribution = torch.as_tensor(attribution)
    if attribution.ndim == 4 and attribution.shape[0] == 1:
        attribution = attribution[0]
    if attribution.ndim != 3:
        raise ValueError(f"{name} must be (H, W, D) or (1, H, W, D), got shape {tuple(attribution.shape)}.")
    if not torch.isfinite(attribution).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return attribution.float()[None, None]


def activation_precision(attribution: torch.Tensor, mask: torch.Tensor) -> float:
    """Activation precision of one case (Eq. 25).

    The map is upsampled to the mask's grid (trilinear, align_corners=False), min-max normalised over
    the whole map, binarised at >= 0.5, and AP = |binary ∩ tumour| / max(|binary|, 1). A constant map
    normalises to zeros, selects no voxel and scores 0 (it localises nothing).

    Args:
        attribution: class attention map M(x), any grid, (h, w, d) or (1, h, w, d).
        mask: whole-tumour mask on the input grid, (H, W, D) or (1, H, W, D); any label > 0 is tumour.
    """
    volume = _single_map(attribution, "attribution")
    tumour = _single_map(mask, "mask")[0, 0] > 0
    binary = min_max_normalize(resize_to_input(volume, tumour.shape)[0, 0]) >= 0.5
    return float((binary & tumour).sum()) / max(int(binary.sum()), 1)


LOCALISATION_KEYS = ("region_share", "tumour_share_volume", "tumour_share_brain", "peak_in_tumour")
"""Per-case read-outs of :func:`localisation_summary`, reported beside AP."""


def localisation_summary(attribution: torch.Tensor, mask: torch.Tensor, brain: torch.Tensor) -> dict[str, float]:
    """What AP should be read against, for one case (all fractions).

    ``region_share``: share of the volume in the map's >= 0.5 region (after AP's min-max). ``tumour_share_volume``
    and ``tumour_share_brain``: the tumour's share of the volume and of the brain; the latter is the AP of
    a map that is uniform inside the brain (the "random map" level). ``peak_in_tumour``: 1 when the map's
    maximum (first voxel in C order on ties) lies in the tumour.

    Args:
        attribution: class attention map, any grid, (h, w, d) or (1, h, w, d).
        mask: whole-tumour mask on the input grid, (H, W, D) or (1, H, W, D).
        brain: brain mask on the input grid, (H, W, D) (:func:`scripts.data.foreground.brain_mask`).
    """
    tumour = _single_map(mask, "mask")[0, 0] > 0
    volume = resize_to_input(_single_map(attribution, "attribution"), tumour.shape)[0, 0]
    brain = torch.as_tensor(brain).bool().reshape(tumour.shape)
    region = min_max_normalize(volume) >= 0.5
    return {
        "region_share": float(region.float().mean()),
        "tumour_share_volume": float(tumour.float().mean()),
        "tumour_share_brain": float((tumour & brain).sum()) / max(int(brain.sum()), 1),
        "peak_in_tumour": float(tumour.flatten()[volume.flatten().argmax()]),
    }


def support_reach(supports: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """Where every prototype scale's maps may lie, on the input grid: the voxels where each scale's map support
    (0/1 on its grid, :meth:`scripts.networks.UMProtoShare.map_supports`), brought to the input grid by
    :func:`scripts.maps.resize_to_input`, is at least 0.5, i.e. where a resized map is drawn mostly from
    supported cells. The product class map is 0 outside it by construction, whatever the model learnt.

    Args:
        supports: one per prototype scale, (h_s, w_s, d_s) or (1, h_s, w_s, d_s), values 0 or 1; none for maps
            over the whole volume (everywhere).
        shape: the input grid, (H, W, D).

    Returns:
        bool (H, W, D).
    """
    reach = torch.ones(tuple(int(n) for n in shape), dtype=torch.bool)
    for support in supports:
        reach &= resize_to_input(_single_map(support, "support"), reach.shape)[0, 0].cpu() >= 0.5
    return reach


def share_in_support(supports: Sequence[torch.Tensor], mask: torch.Tensor) -> float:
    """Share of a mask inside :func:`support_reach` (of the whole tumour: the evaluation's ``tumour_in_support``).

    Args:
        supports: as :func:`support_reach`.
        mask: bool or 0/1 mask on the input grid, (H, W, D) or (1, H, W, D).

    Returns:
        A fraction; NaN for an empty mask.
    """
    region = _single_map(mask, "mask")[0, 0].cpu() > 0
    if not bool(region.any()):
        return math.nan
    return float((support_reach(supports, region.shape) & region).sum()) / float(region.sum())


def similarity_spread(similarities: torch.Tensor) -> dict[str, float]:
    """Per-prototype spread of S across cases: min, mean and max over prototypes of the std over cases.

    A collapsed model, whose every case gives every prototype the same similarity, has spreads near 0.

    Args:
        similarities: (N, K) with N >= 2.
    """
    similarities = torch.as_tensor(similarities).detach().double()
    if similarities.ndim != 2 or similarities.shape[0] < 2:
        raise ValueError(f"similarities must be (N >= 2, K), got shape {tuple(similarities.shape)}.")
    spread = similarities.std(dim=0, unbiased=False)
    return {"min": float(spread.min()), "mean": float(spread.mean()), "max": float(spread.max())}


def activation_precision_per_case(
    attributions: torch.Tensor | Sequence[torch.Tensor], masks: torch.Tensor | Sequence[torch.Tensor]
) -> torch.Tensor:
    """Per-case AP of a fold (Eq. 25); the fold's AP is the mean over all cases, correct or not.

    Args:
        attributions: N maps, (N, h, w, d), (N, 1, h, w, d) or a sequence of single maps.
        masks: N whole-tumour masks, (N, H, W, D), (N, 1, H, W, D) or a sequence.

    Returns:
        (N,) float64.
    """
    if len(attributions) != len(masks):
        raise ValueError(f"{len(attributions)} attribution maps for {len(masks)} masks.")
    values = []
    for case, (attribution, mask) in enumerate(zip(attributions, masks)):
        try:
            values.append(activation_precision(attribution, mask))
        except ValueError as error:
            raise ValueError(f"case {case}: {error}") from error
    return torch.tensor(values, dtype=torch.float64)


def _channel_mean(attribution: torch.Tensor) -> torch.Tensor:
    """(B, H, W, D) as is, (B, C, H, W, D) averaged over channels -> (B, H, W, D) float, finite."""
    attribution = torch.as_tensor(attribution)
    if attribution.ndim == 5:
        attribution = attribution.float().mean(1)
    if attribution.ndim != 4:
        raise ValueError(f"attribution must be (B, H, W, D) or (B, C, H, W, D), got {tuple(attribution.shape)}.")
    if not torch.isfinite(attribution).all():
        raise ValueError("attribution contains NaN or infinite values.")
    return attribution if attribution.is_floating_point() else attribution.float()


def deletion_thresholds(attribution: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """Per-case deletion thresholds: at step k, voxels with attribution >= threshold[b, k] are deleted.

    threshold[b, k] is the (1 − k/steps) quantile of case b's map (``torch.quantile``, linear
    interpolation) for k >= 1, and +inf for k = 0, so that step 0 deletes nothing (the quantile at 1
    is the maximum, which ``>=`` would delete). Step ``steps`` (quantile 0, the minimum) deletes every
    voxel. With distinct values step k deletes n − ceil((n − 1)(1 − k/steps)) of n voxels; tied values
    at a threshold are deleted together.

    Args:
        attribution: (B, H, W, D), or (B, C, H, W, D) averaged over channels.
        steps: number of deletion steps (50: 2% each).

    Returns:
        (B, steps + 1), the attribution's dtype.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    volume = _channel_mean(attribution)
    levels = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[1:].to(volume.dtype)
    rows = [torch.quantile(case.flatten(), levels.to(case.device)) for case in volume]
    inf = torch.full((volume.shape[0], 1), math.inf, dtype=volume.dtype, device=volume.device)
    return torch.cat([inf, torch.stack(rows)], dim=1)


def deletion_masks(attribution: torch.Tensor, steps: int = 50) -> torch.Tensor:
    """All deletion masks of a batch (True = deleted); nested in k, step 0 empty, last step full.

    Materialises (B, steps + 1, H, W, D) booleans, so meant for inspection and small inputs;
    ``deletion_curve`` builds the same masks one step at a time.

    Args:
        attribution: (B, H, W, D), or (B, C, H, W, D) averaged over channels.
        steps: number of deletion steps.

    Returns:
        bool (B, steps + 1, H, W, D).
    """
    volume = _channel_mean(attribution)
    thresholds = deletion_thresholds(volume, steps)
    return volume[:, None] >= thresholds[:, :, None, None, None]


def _deletion_steps(
    images: torch.Tensor | Sequence[torch.Tensor],
    attributions: torch.Tensor | Sequence[torch.Tensor],
    steps: int,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, tuple]]:
    """Yield (case, step, image (C, H, W, D), deleted (H, W, D) bool, key), one case's map at a time.

    The attribution is channel-averaged, resized to the image grid and on the image's device; step k
    deletes the voxels where it is >= the threshold (``deletion_thresholds``). ``key`` names the copy's
    content: (case, number of deleted voxels) — the deleted sets of one case are nested, so an equal
    count is the same set — or, once every voxel is deleted, the all-zero image's (shape, dtype, device),
    the same for every case.
    """
    for case, (image, attribution) in enumerate(zip(images, attributions)):
        if image.ndim != 4:
            raise ValueError(f"case {case}: image must be (C, H, W, D), got {tuple(image.shape)}.")
        try:
            volume = _channel_mean(torch.as_tensor(attribution)[None])
        except ValueError as error:
            raise ValueError(f"case {case}: {error}") from error
        if volume.shape[1:] != image.shape[1:]:
            volume = resize_to_input(volume[:, None], image.shape[1:])[:, 0]
        volume = volume.to(image.device)[0]
        thresholds = deletion_thresholds(volume[None], steps)[0]
        for step, threshold in enumerate(thresholds):
            deleted = volume >= threshold
            count = int(deleted.sum())
            key = ("zero", tuple(image.shape), image.dtype, image.device) if count == deleted.numel() else (case, count)
            yield case, step, image, deleted, key


def deletion_curve(
    predict_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor | Sequence[torch.Tensor],
    attributions: torch.Tensor | Sequence[torch.Tensor],
    labels: ArrayLike,
    batch_size: int = 17,
    steps: int = 50,
    reuse_identical: bool = True,
) -> torch.Tensor:
    """Fold-level BAC after deleting the most attributed voxels, C_0..C_steps (SPEC §6 IDS).

    At step k every case's voxels with channel-averaged attribution >= its (1 − k/steps) quantile
    (``deletion_thresholds``) are set to 0 in all channels. The (case, step) copies are written in
    batches of ``batch_size`` (a batch may span cases) into one reused input tensor, so memory holds
    one batch of images and no copy is allocated per step; ``predict_fn`` must not keep its input
    beyond the call. A copy identical to one already run is not run again: a step that deletes no
    voxel more than the case's previous step (tied attributions, e.g. the zeros outside the brain of a
    brain-only map), and the all-zero image that deleting every voxel leaves, run once for all cases of
    that size. So the cost is at most N·(steps + 1) forward items, and the curve is the same as with
    every copy run. ``predict_fn`` runs under ``torch.no_grad``. A map on a coarser grid is first
    upsampled to the image's (trilinear, align_corners=False).

    Args:
        predict_fn: (b, C_in, H, W, D) -> logits (b, num_classes); the prediction is their argmax.
        images: (N, C_in, H, W, D) or a sequence of N (C_in, H, W, D) tensors.
        attributions: N maps, (N, h, w, d), (N, C, h, w, d) or a sequence of per-case maps.
        labels: ground-truth class indices, (N,).
        batch_size: forward batch size; 17 splits a case's 51 copies into 3 full batches.
        steps: number of deletion steps.
        reuse_identical: score a copy identical to one already run by that run's prediction (False runs
            every copy: the same curve, the benchmark's reference).

    Returns:
        (steps + 1,) float64 BAC per step.
    """
    labels = _as_long(labels, "labels")
    if not len(images) == len(attributions) == labels.numel():
        raise ValueError(f"{len(images)} images, {len(attributions)} attributions, {labels.numel()} labels.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    predictions = torch.empty(labels.numel(), steps + 1, dtype=torch.long)
    num_classes = int(labels.max()) + 1
    scored: dict[tuple, tuple[int, int]] = {}  # copy content -> the (case, step) that scores it
    repeats: list[tuple[int, int, tuple]] = []
    copies = (
        copy
        for copy in _deletion_steps(images, attributions, steps)
        if not (reuse_identical and _is_repeat(copy, scored, repeats))
    )
    inputs: torch.Tensor | None = None
    while batch := list(itertools.islice(copies, batch_size)):
        cases, indices, sources, masks, _ = zip(*batch)
        first = sources[0]
        layout = (first.shape, first.dtype, first.device)
        if inputs is None or len(inputs) < len(batch) or (inputs.shape[1:], inputs.dtype, inputs.device) != layout:
            inputs = torch.empty(len(batch), *first.shape, dtype=first.dtype, device=first.device)
        zero = torch.zeros((), dtype=inputs.dtype, device=inputs.device)
        for row, case, image, deleted in zip(inputs, cases, sources, masks):
            if image.shape != first.shape:
                raise ValueError(
                    f"case {case}: image {tuple(image.shape)} differs from case {cases[0]}'s {tuple(first.shape)}, "
                    "in the same deletion batch: the copies of one batch need images of one size."
                )
            torch.where(deleted, zero, image, out=row)
        with torch.no_grad():
            logits = predict_fn(inputs[: len(batch)])
        predictions[list(cases), list(indices)] = logits.argmax(dim=1).cpu()
        num_classes = max(num_classes, logits.shape[1])
    for case, step, key in repeats:
        predictions[case, step] = predictions[scored[key]]
    logger.info(
        "IDS: %d of %d deleted copies run (the others repeat one already run)",
        predictions.numel() - len(repeats),
        predictions.numel(),
    )
    return torch.tensor(
        [balanced_accuracy(labels, predictions[:, k], num_classes) for k in range(steps + 1)], dtype=torch.float64
    )


def _is_repeat(copy: tuple, scored: dict[tuple, tuple[int, int]], repeats: list[tuple[int, int, tuple]]) -> bool:
    """Whether ``copy`` (from ``_deletion_steps``) has the content of one already queued; if so, note it."""
    case, step, _, _, key = copy
    if key in scored:
        repeats.append((case, step, key))
        return True
    scored[key] = (case, step)
    return False


def incremental_deletion_score(curve: ArrayLike) -> float:
    """Incremental deletion score of a deletion curve (SPEC §6; lower is better).

    lo = min(C_0, C_last), hi = max(C_0, C_last); R_k = (clip(C_k, lo, hi) − lo) / max(hi − lo, 1e−12);
    IDS = trapezoid area of R over [0, 1] = mean over k of (R_k + R_{k+1}) / 2. A flat curve
    (hi == lo, e.g. a model that ignores its input) gives R ≡ 0 and IDS 0.0.

    Args:
        curve: (steps + 1,) metric per deletion step, steps >= 1.
    """
    values = torch.as_tensor(curve).detach().cpu().double()
    if values.ndim != 1 or values.numel() < 2 or not torch.isfinite(values).all():
        raise ValueError(f"curve must be a finite 1-D sequence of >= 2 values, got {values.tolist()}.")
    lo, hi = torch.minimum(values[0], values[-1]), torch.maximum(values[0], values[-1])
    ratios = (values.clamp(lo, hi) - lo) / (hi - lo).clamp_min(1e-12)
    return float(((ratios[:-1] + ratios[1:]) / 2).mean())
