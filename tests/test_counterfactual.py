"""The counterfactual check's read-out on constructed maps with a hand-computed answer."""

from __future__ import annotations

import pytest
import torch

from scripts.counterfactual import change_in_tumour


def test_change_in_tumour_is_the_tumour_share_of_the_absolute_change():
    tumour = torch.zeros(4, 4, 4, dtype=torch.bool)
    tumour[1:3, 1:3, 1:3] = True  # 8 voxels
    first = torch.zeros(4, 4, 4)
    second = torch.zeros(4, 4, 4)
    second[1, 1, 1], second[2, 2, 2] = 3.0, -1.0  # |change| 4 inside the tumour
    second[0, 0, 0] = 4.0  # |change| 4 outside
    first[3, 3, 3], second[3, 3, 3] = 5.0, 3.0  # |change| 2 outside: 6 outside in all
    assert change_in_tumour(first, second, tumour) == pytest.approx(4 / 10)
    assert change_in_tumour(second, first, tumour) == pytest.approx(4 / 10)
    assert change_in_tumour(first, first, tumour) == 0.0
    with pytest.raises(ValueError, match="differ"):
        change_in_tumour(first, second, tumour[:3])
