"""Prototype maps restricted to the input's brain (``map_support="brain"``) and the augmentation that keeps
the brain findable: a box-shaped foreground, hand-pooled grids, the paper's whole-volume maps beside."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scripts.data.foreground import brain_mask, erode, foreground_mask, foreground_on_grid
from scripts.data.transforms import FlattenBackgroundd, RecordForegroundd, augmentation_transforms
from scripts.maps import resize_to_input
from scripts.networks import UMProtoShare
from scripts.push import push_prototypes

TINY = {"encoder_layers": (1, 1), "encoder_width": 4, "embed_dim": 8, "mapping_dim": 8, "prototypes_per_scale": (3, 2, 2)}
BOX = (slice(6, 22), slice(9, 19), slice(5, 17))
"""The foreground of :func:`_box_input` on a 32 × 32 × 24 grid."""


def _box_input(batch: int = 2, seed: int = 0) -> torch.Tensor:
    """(B, 4, 32, 32, 24): a constant background per channel, random values (all above it) in ``BOX``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.tensor([-1.0, -0.5, -2.0, -0.7]).view(1, 4, 1, 1, 1).repeat(batch, 1, 32, 32, 24)
    x[(slice(None), slice(None), *BOX)] += 0.1 + torch.rand(batch, 4, 16, 10, 12, generator=generator)
    return x


def test_foreground_mask_is_the_box_of_a_constant_background_input():
    x = _box_input()
    expected = torch.zeros(32, 32, 24, dtype=torch.bool)
    expected[BOX] = True
    mask = foreground_mask(x)
    assert mask.shape == (2, 1, 32, 32, 24)
    assert torch.equal(mask[0, 0], expected) and torch.equal(mask[1, 0], expected)
    assert torch.equal(brain_mask(x[0]), expected)


def test_foreground_on_grid_keeps_every_cell_that_touches_the_brain():
    mask = torch.zeros(1, 1, 8, 8, 6, dtype=torch.bool)
    mask[0, 0, 3, 4, 5] = True  # one voxel: cell (1, 2, 2) of a stride-2 grid, (0, 1, 1) of a stride-4 grid
    fine = foreground_on_grid(mask, [4, 4, 3])
    assert fine.sum() == 1 and fine[0, 0, 1, 2, 2] == 1
    coarse = foreground_on_grid(mask, [2, 2, 2])  # 6 → 2 pools [0, 3) and [3, 6): voxel 5 lies in the second
    assert coarse.sum() == 1 and coarse[0, 0, 0, 1, 1] == 1


def test_foreground_on_grid_by_majority_keeps_the_cells_at_least_half_brain():
    mask = torch.zeros(1, 1, 4, 4, 2)
    mask[0, 0, 0:2, 0:2, 0] = 1  # cell (0, 0, 0) of the 2 × 2 × 1 grid: 4 of its 8 voxels, exactly half
    mask[0, 0, 2, 2, 0] = 1  # cell (1, 1, 0): 1 of 8
    mask[0, 0, 0:2, 2:4, :] = 1  # cell (0, 1, 0): all 8
    mask[0, 0, 2:4, 0:2, 0:1] = 1
    mask[0, 0, 2, 0, 1] = 1  # cell (1, 0, 0): 5 of 8
    majority = foreground_on_grid(mask, [2, 2, 1], "majority")[0, 0, :, :, 0]
    assert majority.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert foreground_on_grid(mask, [2, 2, 1])[0, 0, :, :, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]  # any
    flat = mask[:, :, :, :, 0]  # 2-D, depth 0 alone: the cells hold 4, 4, 4 and 1 of their 4 pixels
    assert foreground_on_grid(flat, [2, 2], "majority")[0, 0].tolist() == [[1.0, 1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="majority"):
        foreground_on_grid(mask, [2, 2, 1], "half")
    batch = torch.zeros(2, 1, 4, 4, 2)
    batch[0, 0, 3, 0, 1] = 1  # a brain of one voxel: no cell is half brain, so the cell touching it stays
    batch[1] = mask[0]
    cells = foreground_on_grid(batch, [2, 2, 1], "majority")[:, 0, :, :, 0]
    assert cells[0].tolist() == [[0.0, 0.0], [1.0, 0.0]] and cells[1].tolist() == [[1.0, 1.0], [1.0, 0.0]]


def test_majority_cells_keep_the_coarse_maps_off_cells_mostly_outside_the_brain():
    torch.manual_seed(0)
    model = UMProtoShare(**TINY, map_support="brain", map_support_cells="majority").eval()
    x = _box_input(batch=1)
    with torch.no_grad():
        explanation = model.explain(x)
    inside = torch.zeros(1, 1, 32, 32, 24)
    inside[(0, 0, *BOX)] = 1
    for entry in explanation.per_scale:
        size = list(entry.maps.shape[2:])
        share = F.adaptive_avg_pool3d(inside, size)  # each cell's share of brain voxels
        support = share >= 0.5
        assert (share[~support] > 0).any() or entry.scale == 1  # coarser grids have straddling cells left out
        maps = entry.maps
        assert torch.equal(maps.masked_select(~support.expand_as(maps)), torch.zeros(int((~support).sum()) * maps.shape[1]))
        assert (maps.masked_select(support.expand_as(maps)) > 0).all()
    with pytest.raises(ValueError, match="map_support_cells"):
        UMProtoShare(**TINY, map_support="brain", map_support_cells="most")


def test_brain_supported_maps_are_exactly_zero_outside_the_box_and_still_sum_to_one():
    torch.manual_seed(0)
    model = UMProtoShare(**TINY, map_support="brain").eval()
    x = _box_input()
    with torch.no_grad():
        explanation = model.explain(x)
        logits = model(x)
    inside = torch.zeros(1, 1, 32, 32, 24)
    inside[(0, 0, *BOX)] = 1
    for entry in explanation.per_scale:
        support = foreground_on_grid(inside, list(entry.maps.shape[2:])) > 0
        assert 0 < support.sum() < support.numel()  # the box covers part of every grid
        outside = entry.maps.masked_select(~support.expand_as(entry.maps))
        assert torch.equal(outside, torch.zeros_like(outside)), f"scale {entry.scale}"
        assert torch.allclose(entry.maps.sum(dim=(2, 3, 4)), torch.ones(2, entry.maps.shape[1]), atol=1e-4)
        # the soft maps (L_map's input) are not masked: the mapping module still sees the whole volume
        assert (entry.soft_maps.masked_select(~support.expand_as(entry.soft_maps)) > 0).all()
    assert torch.equal(logits, explanation.logits)
    assert torch.equal(model.similarities(x), explanation.similarities)


def test_volume_support_is_the_paper_network_with_maps_outside_the_brain():
    torch.manual_seed(0)
    brain = UMProtoShare(**TINY, map_support="brain").eval()
    volume = UMProtoShare(**TINY).eval()
    volume.load_state_dict(brain.state_dict())
    x = _box_input()
    with torch.no_grad():
        maps = volume.explain(x).per_scale[0].maps
        masked = brain.explain(x).per_scale[0].maps
    support = foreground_on_grid(foreground_mask(x), list(maps.shape[2:])) > 0
    assert (maps.masked_select(~support.expand_as(maps)) > 0).all()
    # inside the brain, the masked maps are the paper's maps renormalised over the brain
    renormalised = maps * support / (maps * support).sum(dim=(2, 3, 4), keepdim=True)
    assert torch.allclose(masked, renormalised, atol=1e-5)


def test_brain_support_needs_a_mapping_module():
    with pytest.raises(ValueError, match="voxel_topk"):
        UMProtoShare(**TINY, map_support="brain", similarity_kind="voxel_topk")
    with pytest.raises(ValueError, match="skull"):
        UMProtoShare(**TINY, map_support="skull")


def test_flatten_background_restores_a_constant_background_after_noise_and_blur():
    x = _box_input(batch=1)[0]
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    item = RecordForegroundd("image")({"image": x})
    item["image"] = noisy
    out = FlattenBackgroundd("image")(item)
    assert "foreground" not in out
    image = out["image"]
    outside = ~brain_mask(x)
    for c in range(4):
        floor = noisy[c].min()
        assert torch.equal(image[c][outside], floor.expand(int(outside.sum())))
        assert torch.equal(image[c][~outside], noisy[c][~outside])
    # the brain found in the flattened image is the recorded one (but for a voxel at the minimum)
    assert (brain_mask(image) ^ brain_mask(x)).sum() <= 4


def test_augmented_training_inputs_keep_the_brain_of_the_spatially_augmented_image():
    x = _box_input(batch=1)[0]
    transforms = augmentation_transforms(
        rotate_prob=0.0, scale_prob=0.0, noise_prob=1.0, blur_prob=1.0, low_resolution_prob=1.0, flip_prob=0.0
    )
    transforms.set_random_state(0)
    image = transforms({"image": x})["image"]
    assert not torch.equal(image[:, 0, 0, 0], x[:, 0, 0, 0])  # the intensities were augmented
    assert (brain_mask(image) ^ brain_mask(x)).sum() <= 4


@pytest.mark.parametrize("spatial", [2, 3])
def test_erode_equals_one_cubic_minimum_over_the_padded_mask(spatial):
    mask = torch.rand(2, 1, *[11, 9, 7][:spatial], generator=torch.Generator().manual_seed(0)) > 0.2
    for margin in (1, 2, 3):
        padded = F.pad(mask.float(), [margin] * (2 * spatial), value=1.0)
        pool = F.max_pool3d if spatial == 3 else F.max_pool2d
        expected = -pool(-padded, 2 * margin + 1, stride=1)
        assert torch.equal(erode(mask, margin), expected)


def test_erode_removes_the_border_band_but_not_the_volume_edge():
    mask = torch.zeros(1, 1, 9, 9, 9)
    mask[0, 0, 1:8, 1:8, 1:8] = 1  # a 7-cube
    assert erode(mask, 1).sum() == 5**3 and erode(mask, 2).sum() == 3**3 and erode(mask, 0).sum() == 7**3
    assert erode(mask, 1)[0, 0, 2:7, 2:7, 2:7].all()
    assert erode(torch.ones(1, 1, 4, 4, 4), 1).sum() == 64  # the volume's edge is not the brain's
    square = torch.zeros(1, 1, 6, 6)
    square[0, 0, 1:5, 1:5] = 1
    assert erode(square, 1).sum() == 4 and erode(square, 1)[0, 0, 2:4, 2:4].all()  # 2-D models too


def test_support_margin_keeps_the_maps_off_the_brains_border_band():
    torch.manual_seed(0)
    model = UMProtoShare(**TINY, map_support="brain", map_support_margin=3).eval()
    x = _box_input(batch=1)
    with torch.no_grad():
        maps = model.explain(x).per_scale[0].maps  # stride 2: 16 x 16 x 12
    inner = torch.zeros(1, 1, 32, 32, 24)
    inner[0, 0, 9:19, 12:16, 8:14] = 1  # BOX shrunk by 3 voxels on every side
    support = foreground_on_grid(inner, list(maps.shape[2:])) > 0
    assert torch.equal(maps.masked_select(~support.expand_as(maps)), torch.zeros(int((~support).sum()) * 3))
    assert (maps.masked_select(support.expand_as(maps)) > 0).all()
    with pytest.raises(ValueError, match="map_support_margin"):
        UMProtoShare(**TINY, map_support="brain", map_support_margin=-1)


def test_push_records_peaks_inside_the_source_cases_brain():
    """Coarse maps resized to the input grid spill over the brain's edge; a brain-supported model's push
    record reads its peaks inside the source case's brain, as inference reads the case's own maps."""
    torch.manual_seed(0)
    model = UMProtoShare(**TINY, map_support="brain").eval()
    x = _box_input(batch=4, seed=3)
    batch = {"image": x, "label": torch.tensor([0, 1, 0, 1]), "case_id": ["a", "b", "c", "d"]}
    inside = torch.zeros(32, 32, 24, dtype=torch.bool)
    inside[BOX] = True
    result = push_prototypes(model, [batch], ["LGG", "HGG"])
    assert len(result.records) == model.num_prototypes
    for record in result.records:
        assert inside[tuple(record["peak_voxel"])], record
        # the peak is the map's maximum on the input grid inside that brain
        resized = resize_to_input(result.maps[record["column"]][None, None], [32, 32, 24])[0, 0]
        assert resized[tuple(record["peak_voxel"])] == resized[inside].max()
