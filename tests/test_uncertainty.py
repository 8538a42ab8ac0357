"""The flip spread (scripts/uncertainty.py) and the caution it adds to the banner."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from scripts.calibration import Calibration
from scripts.explain.evidence import confidence_warnings
from scripts.uncertainty import (
    FLIP_SPREAD_CAUTION,
    CalibratedInferer,
    flip_axes,
    flip_probabilities,
    spread_of,
)


class _Sided(nn.Module):
    """Logits [0, g·(mean of the first half along H − mean of the second half) + b] of channel 0."""

    def __init__(self, gain: float, bias: float = 0.0) -> None:
        super().__init__()
        self.gain = gain
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[2] // 2
        side = x[:, 0, :half].flatten(1).mean(1) - x[:, 0, half:].flatten(1).mean(1)
        return torch.stack([torch.zeros_like(side), self.gain * side + self.bias], dim=1)


def test_flip_axes_are_every_subset_of_the_spatial_axes():
    assert flip_axes(3) == [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    assert len(flip_axes(2)) == 4


def test_flip_spread_hand_computed():
    image = torch.zeros(1, 1, 4, 2, 2)
    image[0, 0, :2] = 1.0  # first half bright: side = 1 unflipped, −1 when H is flipped (4 of the 8 flips)
    model = _Sided(gain=2.0)
    # unflipped: p(class 1) = σ(2) = 0.8808 → predicted 1; flips along H: σ(−2) = 0.1192. Population std of
    # four 0.8808 and four 0.1192 = (0.8808 − 0.1192) / 2 = σ(2) − 0.5
    expected = 1 / (1 + math.exp(-2.0)) - 0.5
    assert spread_of(flip_probabilities(model, image), torch.tensor([1])).item() == pytest.approx(expected, abs=1e-6)
    # calibrated with T = 2: σ(1) − 0.5
    calibration = Calibration(temperature=2.0, method="nll", cases=10)
    calibrated = spread_of(flip_probabilities(model, image, calibration), torch.tensor([1]))
    assert calibrated.item() == pytest.approx(1 / (1 + math.exp(-1.0)) - 0.5, abs=1e-6)
    symmetric = torch.ones(2, 1, 4, 2, 2)  # no side: every flip gives the same answer
    assert torch.equal(spread_of(flip_probabilities(model, symmetric), torch.tensor([0, 1])), torch.zeros(2))


def test_flip_average_hand_computed_can_change_the_predicted_class():
    image = torch.zeros(1, 1, 4, 2, 2)
    image[0, 0, :2] = 1.0
    model = _Sided(gain=2.0, bias=-0.5)
    # unflipped: p(1) = σ(2 − 0.5) = 0.8176, predicted 1; the 4 flips along H: σ(−2 − 0.5) = 0.0759
    mirrored = flip_probabilities(model, image)
    assert mirrored.shape == (1, 8, 2)
    high, low = 1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(2.5))
    expected = torch.tensor([high if 2 not in axes else low for axes in flip_axes(3)])
    torch.testing.assert_close(mirrored[0, :, 1], expected, rtol=0, atol=1e-6)
    mean = mirrored.mean(dim=1)[0]
    assert mean[1].item() == pytest.approx((high + low) / 2, abs=1e-6)  # 0.4467: the average predicts class 0
    assert int(mean.argmax()) == 0 and int(mirrored[0, 0].argmax()) == 1
    # the spread is the same for either class of a binary model: (0.8176 − 0.0759) / 2
    for predicted in (0, 1):
        assert spread_of(mirrored, torch.tensor([predicted])).item() == pytest.approx((high - low) / 2, abs=1e-6)
    calibration = Calibration(temperature=0.5, method="nll", cases=10)
    sharpened = flip_probabilities(model, image, calibration)[0, :, 1]  # each mirror's logits divided by T first
    assert sharpened[0].item() == pytest.approx(1 / (1 + math.exp(-3.0)), abs=1e-6)
    with pytest.raises(RuntimeError):  # a class index outside C
        spread_of(mirrored, torch.tensor([2]))


def test_calibrated_inferer_is_the_shown_probability_with_and_without_the_flip_average():
    image = torch.zeros(1, 1, 4, 2, 2)
    image[0, 0, :2] = 1.0
    model = _Sided(gain=2.0, bias=-0.5)
    calibration = Calibration(temperature=2.0, method="nll", cases=10)
    # T = 2: unflipped σ((2 − 0.5) / 2) = σ(0.75); the 4 flips along H σ(−1.25); the mean of the 8
    averaged = CalibratedInferer(calibration)(image, model)
    expected = (1 / (1 + math.exp(-0.75)) + 1 / (1 + math.exp(1.25))) / 2
    assert averaged.shape == (1, 2) and averaged[0, 1].item() == pytest.approx(expected, abs=1e-6)
    single = CalibratedInferer(calibration, flip_average=False)(image, model)
    assert single[0, 1].item() == pytest.approx(1 / (1 + math.exp(-0.75)), abs=1e-6)
    assert CalibratedInferer()(image, model)[0, 1].item() == pytest.approx(  # no calibration: the plain softmax
        (1 / (1 + math.exp(-1.5)) + 1 / (1 + math.exp(2.5))) / 2, abs=1e-6
    )


def test_the_banner_fires_on_an_unstable_answer_whose_probability_is_high():
    assert confidence_warnings({"LGG": 0.05, "HGG": 0.95}, [0.1, 0.9], FLIP_SPREAD_CAUTION / 2) == []
    warnings = confidence_warnings({"LGG": 0.05, "HGG": 0.95}, [0.1, 0.9], FLIP_SPREAD_CAUTION * 2)
    assert len(warnings) == 1 and "orientation" in warnings[0]
    assert confidence_warnings({"LGG": 0.05, "HGG": 0.95}, None) == []  # no prototypes: no similarity check
