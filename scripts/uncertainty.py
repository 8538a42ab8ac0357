"""A second uncertainty signal beside the calibrated probability: how much it moves when the image is flipped.

Training augments with random flips along every axis, so each of the 8 mirror images of a case is one the
model was taught to grade alike. The spread of the predicted class's calibrated probability over them is
small on clear phantoms and large on ambiguous ones (docs: "Confidence"), including ambiguous cases
whose probability alone clears the low-confidence threshold.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from scripts.calibration import Calibration

__all__ = ["FLIP_SPREAD_CAUTION", "flip_axes", "flip_spread"]

FLIP_SPREAD_CAUTION = 0.05
"""Above this flip spread the answer is flagged for caution (chosen on the evaluation-only ambiguous phantoms)."""


def flip_axes(spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """The 2^d subsets of the spatial axes of a (B, C, *spatial) tensor, the identity first."""
    axes = range(2, 2 + spatial_dims)
    return [subset for size in range(spatial_dims + 1) for subset in itertools.combinations(axes, size)]


def flip_spread(model: nn.Module, images: Tensor, calibration: Calibration | None = None) -> Tensor:
    """Population standard deviation, over the 2^d flips of each case, of its predicted class's calibrated probability.

    Runs ``model`` as it is (call ``eval()`` first) without gradient, one batch of 2^d copies per case.

    Args:
        model: logits (N, C) from images (N, C_in, *spatial).
        images: (B, C_in, *spatial).
        calibration: applied to the logits (None: the plain softmax).

    Returns:
        (B,) spreads in [0, 0.5]; the predicted class is the argmax of the unflipped image's logits.
    """
    calibration = Calibration() if calibration is None else calibration
    subsets = flip_axes(images.ndim - 2)
    spreads = []
    with torch.no_grad():
        for image in images:
            copies = torch.cat([image[None].flip(subset) if subset else image[None] for subset in subsets])
            probabilities = calibration.apply(model(copies).float().cpu())
            predicted = int(probabilities[0].argmax())
            spreads.append(probabilities[:, predicted].std(unbiased=False))
    return torch.stack(spreads)
