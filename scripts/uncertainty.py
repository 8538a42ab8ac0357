"""A second uncertainty signal beside the calibrated probability: how much it moves when the image is flipped.

Training augments with random flips along every axis, so each of the 8 mirror images of a case is one the
model was taught to grade alike. The spread of the predicted class's calibrated probability over them is
small on clear phantoms and large on ambiguous ones (docs: "Confidence"), including ambiguous cases
whose probability alone clears the low-confidence threshold. Their mean is the flip-averaged probability
(``flip_average``, on by default): it keeps a clear case's probability and lowers an ambiguous one's where
the mirror images disagree (docs: "Confidence", measured on the held-out folds and the evaluation-only
phantoms).
"""

from __future__ import annotations

import itertools

import torch
from monai.inferers import Inferer
from torch import Tensor, nn

from scripts.calibration import Calibration

__all__ = ["FLIP_SPREAD_CAUTION", "CalibratedInferer", "flip_axes", "flip_probabilities", "spread_of"]

FLIP_SPREAD_CAUTION = 0.05
"""Above this flip spread the answer is flagged for caution (chosen on the evaluation-only ambiguous phantoms)."""


def flip_axes(spatial_dims: int = 3) -> list[tuple[int, ...]]:
    """The 2^d subsets of the spatial axes of a (B, C, *spatial) tensor, the identity first."""
    axes = range(2, 2 + spatial_dims)
    return [subset for size in range(spatial_dims + 1) for subset in itertools.combinations(axes, size)]


def flip_probabilities(model: nn.Module, images: Tensor, calibration: Calibration | None = None) -> Tensor:
    """Calibrated class probabilities of each case's 2^d mirror images (the identity first).

    Runs ``model`` as it is (call ``eval()`` first) without gradient, one batch of 2^d copies per case. Their
    mean over the mirror images is the flip-averaged probability (``flip_average``), their spread
    (:func:`spread_of`) the flip spread.

    Args:
        model: logits (N, C) from images (N, C_in, *spatial).
        images: (B, C_in, *spatial).
        calibration: applied to each mirror image's logits (None: the plain softmax).

    Returns:
        (B, 2^d, C).
    """
    calibration = Calibration() if calibration is None else calibration
    subsets = flip_axes(images.ndim - 2)
    per_case = []
    with torch.no_grad():
        for image in images:
            copies = torch.cat([image[None].flip(subset) if subset else image[None] for subset in subsets])
            per_case.append(calibration.apply(model(copies).float().cpu()))
    return torch.stack(per_case)


def spread_of(probabilities: Tensor, predicted: Tensor) -> Tensor:
    """Population standard deviation over the mirror images of the predicted class's probability.

    Args:
        probabilities: (B, F, C) from :func:`flip_probabilities`.
        predicted: (B,) class indices.

    Returns:
        (B,) spreads in [0, 0.5].
    """
    chosen = probabilities.gather(2, predicted.view(-1, 1, 1).expand(-1, probabilities.shape[1], 1))[..., 0]
    return chosen.std(dim=1, unbiased=False)


class CalibratedInferer(Inferer):
    """The probabilities a reader is shown, as a MONAI inferer (``inferer`` of ``configs/inference.json``, the
    MONAI Label app's class scores): softmax(logits / T) of the image as given, or with ``flip_average`` the
    mean over its 2^d mirror images of that (:func:`flip_probabilities`). The bundle's own inference gets the
    same probabilities from :func:`scripts.explain.evidence.explain_case`, whose 8 passes also give the flip
    spread, so its evaluator runs a plain forward instead of 8 more passes.

    Args:
        calibration: the served model's calibration (None: the plain softmax).
        flip_average: average over the mirror images (2^d forward passes per case) or not (one).
    """

    def __init__(self, calibration: Calibration | None = None, flip_average: bool = True) -> None:
        super().__init__()
        self.calibration = Calibration() if calibration is None else calibration
        self.flip_average = bool(flip_average)

    def __call__(self, inputs: Tensor, network: nn.Module, *args, **kwargs) -> Tensor:
        """(B, C) probabilities of images (B, C_in, *spatial), on the inputs' device."""
        if self.flip_average:
            return flip_probabilities(network, inputs, self.calibration).mean(dim=1).to(inputs.device)
        with torch.no_grad():
            return self.calibration.apply(network(inputs, *args, **kwargs).float())
