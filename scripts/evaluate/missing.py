"""Missing-sequence robustness (beyond the paper): BAC when some MRI sequences are absent.

Each absent channel is replaced by the voxel-wise mean of the present channels, as MProtoNet does for
missing modalities; every non-empty proper subset of the sequences is tried in turn.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from scripts.metrics import balanced_accuracy

__all__ = ["missing_sequence_bac", "missing_subsets", "replace_missing"]


def missing_subsets(num_channels: int) -> list[tuple[int, ...]]:
    """Every non-empty proper subset of ``range(num_channels)``, by size, then lexicographically."""
    if num_channels < 2:
        raise ValueError(f"missing sequences need at least 2 input channels, got {num_channels}.")
    return [combo for size in range(1, num_channels) for combo in itertools.combinations(range(num_channels), size)]


def replace_missing(images: Tensor, missing: Sequence[int]) -> Tensor:
    """Images with the ``missing`` channels replaced by the mean of the remaining channels.

    Args:
        images: (B, C, H, W, D).
        missing: channel indices, a non-empty proper subset of ``range(C)``.

    Returns:
        A new tensor (B, C, H, W, D); present channels unchanged.
    """
    channels = images.shape[1]
    missing = sorted(set(int(c) for c in missing))
    present = [c for c in range(channels) if c not in missing]
    if not missing or not present or missing[0] < 0 or missing[-1] >= channels:
        raise ValueError(
            f"missing must be a non-empty proper subset of the {channels} channels, got {missing}."
        )
    filled = images.clone()
    filled[:, missing] = images[:, present].mean(dim=1, keepdim=True)
    return filled


def missing_sequence_bac(
    predict_fn: Callable[[Tensor], Tensor],
    images: Sequence[Tensor],
    labels: Tensor,
    sequence_names: Sequence[str],
    batch_size: int = 14,
) -> list[dict]:
    """Fold BAC with each non-empty proper subset of the sequences missing.

    One case at a time: its variants (one per subset) go through ``predict_fn`` in batches of
    ``batch_size`` under ``torch.no_grad``.

    Args:
        predict_fn: (b, C, H, W, D) -> logits (b, num_classes).
        images: N images (C, H, W, D) (any sequence, e.g. lazily loaded).
        labels: class indices (N,).
        sequence_names: the C channel names, in channel order.
        batch_size: variants per forward pass.

    Returns:
        One entry per subset: ``{"missing": [names], "bac": float}``, in :func:`missing_subsets` order.
    """
    labels = torch.as_tensor(labels).long().reshape(-1)
    if len(images) != labels.numel():
        raise ValueError(f"{len(images)} images for {labels.numel()} labels.")
    subsets = missing_subsets(len(sequence_names))
    predictions = torch.empty(labels.numel(), len(subsets), dtype=torch.long)
    num_classes = int(labels.max()) + 1
    for case, image in enumerate(images):
        if image.ndim != 4 or image.shape[0] != len(sequence_names):
            raise ValueError(
                f"case {case}: image must be ({len(sequence_names)}, H, W, D) for sequences {list(sequence_names)}, "
                f"got {tuple(image.shape)}."
            )
        for start in range(0, len(subsets), batch_size):
            chunk = subsets[start : start + batch_size]
            variants = torch.cat([replace_missing(image[None], missing) for missing in chunk])
            with torch.no_grad():
                logits = predict_fn(variants)
            predictions[case, start : start + len(chunk)] = logits.argmax(dim=1).cpu()
            num_classes = max(num_classes, logits.shape[1])
    bac = [balanced_accuracy(labels, predictions[:, j], num_classes) for j in range(len(subsets))]
    return [{"missing": [sequence_names[c] for c in missing], "bac": value} for missing, value in zip(subsets, bac)]
