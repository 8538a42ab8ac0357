"""Hand-computed checks of BAC (Eq. 24), AP (Eq. 25), class maps (Eq. 26–28) and IDS (SPEC §6)."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.data.foreground import brain_mask
from scripts.maps import class_attention_map, owned_prototype_map
from scripts.metrics import (
    activation_precision,
    activation_precision_per_case,
    balanced_accuracy,
    classification_metrics,
    deletion_curve,
    deletion_masks,
    deletion_thresholds,
    incremental_deletion_score,
    localisation_summary,
    share_in_support,
    similarity_spread,
)

# ---------------------------------------------------------------- BAC and classification metrics


@pytest.mark.parametrize(
    "y_true, y_pred, num_classes, expected",
    [
        # TNR = 2/3, TPR = 1/2 -> (2/3 + 1/2) / 2
        ([0, 0, 0, 1, 1], [0, 0, 1, 1, 0], 2, 7 / 12),
        # class recalls 1/2, 1, 0 -> 1/2
        ([0, 0, 1, 2], [0, 1, 1, 0], 3, 0.5),
        # class 2 absent from y_true: mean over classes 0 (1/2) and 1 (1) only
        ([0, 0, 1], [0, 2, 1], 3, 0.75),
        # single-class fold: that class's recall
        ([1, 1, 1, 1], [1, 0, 1, 1], 2, 0.75),
    ],
)
def test_eq24_balanced_accuracy(y_true, y_pred, num_classes, expected):
    assert balanced_accuracy(y_true, y_pred, num_classes) == pytest.approx(expected)


def test_eq24_balanced_accuracy_rejects_bad_indices():
    with pytest.raises(ValueError, match="outside"):
        balanced_accuracy([0, 1], [0, 2], 2)


def test_classification_metrics_binary_hand_values():
    # HGG probabilities 0.1, 0.6, 0.4, 0.8 for labels 0, 0, 1, 1: predictions 0, 1, 0, 1.
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.6, 0.4], [0.2, 0.8]])
    metrics = classification_metrics([0, 0, 1, 1], probs)
    # AUC: positive-negative pairs (0.4>0.1, 0.4<0.6, 0.8>0.1, 0.8>0.6) -> 3/4
    assert metrics == pytest.approx(
        {"bac": 0.5, "accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5, "roc_auc": 0.75}
    )


def test_classification_metrics_binary_sensitivity_is_hgg_recall():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.3, 0.7], [0.6, 0.4]])
    metrics = classification_metrics([0, 0, 1, 1, 1], probs)
    assert metrics["sensitivity"] == pytest.approx(1 / 3)
    assert metrics["specificity"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["roc_auc"] == pytest.approx(1.0)


def test_classification_metrics_single_class_fold_gives_nan_not_error():
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    metrics = classification_metrics([0, 0, 0], probs)
    assert math.isnan(metrics["roc_auc"])
    assert math.isnan(metrics["sensitivity"])
    assert metrics["specificity"] == pytest.approx(2 / 3)
    assert metrics["bac"] == pytest.approx(2 / 3)


def test_classification_metrics_multiclass_macro():
    y_true = [0, 0, 1, 1, 2, 2]
    probs = torch.tensor(
        [[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.6, 0.3], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]
    )
    metrics = classification_metrics(y_true, probs)
    # predictions 0, 1, 1, 1, 2, 0: recalls 1/2, 1, 1/2
    assert metrics["bac"] == pytest.approx(2 / 3)
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    # one-vs-rest TNR: class 0 3/4 (case 5 is a false positive), class 1 3/4, class 2 1
    assert metrics["specificity"] == pytest.approx((0.75 + 0.75 + 1.0) / 3)
    # one-vs-rest AUC: class 0 (0.7, 0.2 vs 0.1, 0.1, 0.1, 0.5) -> 7/8; class 1 (0.8, 0.6 vs 0.2, 0.7, 0.1, 0.2)
    # -> 7/8; class 2 (0.8, 0.3 vs 0.1, 0.1, 0.1, 0.3; the tie counts 1/2) -> 7.5/8
    assert metrics["roc_auc"] == pytest.approx((7 + 7 + 7.5) / 24)


# ---------------------------------------------------------------- AP


def _cube(size: int = 4) -> torch.Tensor:
    mask = torch.zeros(size, size, size, dtype=torch.bool)
    mask[1:3, 1:3, 1:3] = True
    return mask


def test_eq25_ap_map_equal_to_mask_is_one():
    mask = _cube()
    assert activation_precision(mask.float(), mask) == 1.0
    assert activation_precision(mask.float()[None], mask[None].long() * 4) == 1.0


def test_eq25_ap_map_zero_on_tumour_is_zero():
    mask = _cube()
    attribution = torch.rand(4, 4, 4) + 0.1
    attribution[mask] = 0.0
    assert activation_precision(attribution, mask) == 0.0


def test_eq25_ap_min_max_and_threshold_boundary():
    # values 2, 4, 6 normalise to 0, 0.5, 1; 3.99 to just under 0.5.
    attribution = torch.full((4, 4, 4), 2.0)
    attribution[0, 0, :2] = 6.0  # 2 voxels at 1.0, tumour
    attribution[0, 1, :] = 4.0  # 4 voxels at exactly 0.5: 1 tumour, 3 background
    attribution[3, 3, :] = 3.99  # below 0.5, tumour: not selected
    mask = torch.zeros(4, 4, 4, dtype=torch.bool)
    mask[0, 0, :2] = True
    mask[0, 1, 0] = True
    mask[3, 3, :] = True
    assert activation_precision(attribution, mask) == pytest.approx(3 / 6)
    # an affine change of the map leaves min-max normalisation, hence AP, unchanged
    assert activation_precision(10 * attribution - 7, mask) == pytest.approx(3 / 6)


def test_eq25_ap_constant_map_scores_zero_without_nan():
    mask = _cube()
    value = activation_precision(torch.full((2, 2, 2), 3.0), mask)
    assert value == 0.0


def test_eq25_ap_trilinear_upsampling_align_corners_false():
    # 2^3 map, 1 at the origin corner, upsampled to 4^3: per-axis weights of input index 0 are
    # (1, 0.75, 0.25, 0) with align_corners=False. Voxels >= 0.5: 1, 0.75 (x3), 0.5625 (x3) -> 7 voxels.
    # Tumour = plane i = 0 holds 4 of them -> AP 4/7 (align_corners=True would give 3/4).
    attribution = torch.zeros(2, 2, 2)
    attribution[0, 0, 0] = 1.0
    mask = torch.zeros(4, 4, 4, dtype=torch.bool)
    mask[0] = True
    assert activation_precision(attribution, mask) == pytest.approx(4 / 7)


def test_eq25_ap_per_case_and_fold_mean():
    mask = _cube()
    zero_on_tumour = (~mask).float()
    values = activation_precision_per_case(torch.stack([mask.float(), zero_on_tumour]), torch.stack([mask, mask]))
    assert values.tolist() == [1.0, 0.0]
    assert float(values.mean()) == 0.5


def test_eq25_ap_rejects_multichannel_map():
    with pytest.raises(ValueError, match="attribution"):
        activation_precision(torch.rand(4, 2, 2, 2), _cube())


def test_eq25_ap_per_case_errors_name_the_case():
    maps = torch.rand(2, 2, 2, 2)
    maps[1, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="case 1: attribution contains NaN"):
        activation_precision_per_case(maps, torch.stack([_cube(), _cube()]))


# ---------------------------------------------------------------- class attention maps


def test_eq27_eq28_class_attention_map_hand_values():
    # scale 1: K_1 = 2 maps on 2^3; scale 2: K_2 = 3 maps on 1^3 (constant after upsampling).
    scale1 = torch.stack([torch.full((2, 2, 2), 1.0), torch.full((2, 2, 2), 3.0)])[None].repeat(2, 1, 1, 1, 1)
    scale1[1, 0, 0, 0, 0] = 5.0
    scale2 = torch.tensor([2.0, 4.0, 9.0]).view(1, 3, 1, 1, 1).repeat(2, 1, 1, 1, 1)
    zeta = torch.tensor(
        [
            [0.0, 0.7, 0.2, 0.0, 0.0],  # class 0: scale 1 {k=1}, scale 2 {k=0}
            [1.0, 0.3, 0.0, 0.0, 0.0],  # class 1: scale 1 {k=0, k=1}, scale 2 none
        ]
    )
    out = class_attention_map([scale1, scale2], zeta, torch.tensor([0, 1]), (2, 2, 2), combination="sum")
    assert out.shape == (2, 2, 2, 2)
    # case 0, class 0: 3 (scale 1) + 2 (scale 2)
    assert torch.allclose(out[0], torch.full((2, 2, 2), 5.0))
    # case 1, class 1: mean(1 or 5, 3) + 0 (no supporting prototype at scale 2)
    expected = torch.full((2, 2, 2), 2.0)
    expected[0, 0, 0] = 4.0
    assert torch.allclose(out[1], expected)


def test_eq28_class_attention_map_upsamples_each_scale():
    fine = torch.zeros(1, 1, 4, 4, 4)
    coarse = torch.ones(1, 1, 2, 2, 2)
    out = class_attention_map([fine, coarse], torch.ones(2, 2), torch.tensor([1]), (4, 4, 4), combination="sum")
    assert torch.allclose(out, torch.ones(1, 4, 4, 4))


def test_eq28_class_attention_map_checks_zeta_width():
    with pytest.raises(ValueError, match="K_total"):
        class_attention_map([torch.zeros(1, 2, 2, 2, 2)], torch.ones(2, 3), torch.tensor([0]), (2, 2, 2))


def test_eq26_owned_prototype_map_hand_values():
    maps = torch.tensor([1.0, 2.0, 6.0, 10.0]).view(1, 4, 1, 1, 1).repeat(2, 1, 1, 1, 1)
    ownership = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 0]])  # (K, C)
    out = owned_prototype_map(maps, ownership, torch.tensor([0, 1]), (2, 2, 2))
    assert torch.allclose(out[0], torch.full((2, 2, 2), 13.0 / 3))
    assert torch.allclose(out[1], torch.full((2, 2, 2), 6.0))


# ---------------------------------------------------------------- IDS


def _distinct_map(seed: int, size: int = 10) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(size**3, generator=generator).float().view(size, size, size)


def test_deletion_masks_fractions_nesting_and_ends():
    # n = 1000 distinct values: step k deletes n - ceil(999 (1 - k/50)) = 1 + floor(19.98 k) voxels (0 < k < 50).
    attribution = torch.stack([_distinct_map(0), _distinct_map(1)])
    masks = deletion_masks(attribution)
    assert masks.shape == (2, 51, 10, 10, 10) and masks.dtype == torch.bool
    counts = masks.flatten(2).sum(2)
    expected = [0] + [1 + math.floor(19.98 * k) for k in range(1, 50)] + [1000]
    assert counts[0].tolist() == expected and counts[1].tolist() == expected
    assert counts[0, 1] == 20  # the top 2 %
    assert torch.all(masks[:, :-1] <= masks[:, 1:])  # nested
    # each step deletes exactly the highest-ranked voxels of its own case
    for case in range(2):
        order = attribution[case].flatten().argsort(descending=True)
        for k in (1, 25, 49):
            top = torch.zeros(1000, dtype=torch.bool)
            top[order[: expected[k]]] = True
            assert torch.equal(masks[case, k].flatten(), top)


def test_deletion_step_zero_keeps_the_maximum_voxel():
    attribution = torch.zeros(1, 3, 3, 3)
    attribution[0, 1, 1, 1] = 1.0
    masks = deletion_masks(attribution, steps=4)
    assert not masks[0, 0].any()
    assert masks[0, 4].all()
    assert deletion_thresholds(attribution, steps=4)[0, 0] == math.inf


def test_deletion_masks_average_channels():
    per_channel = torch.stack([_distinct_map(2), -_distinct_map(2)], dim=0)[None]  # channel mean = 0
    per_channel[0, 0, 0, 0, 0] += 10.0  # the only voxel above the others after averaging
    masks = deletion_masks(per_channel, steps=50)
    assert masks[0, 1, 0, 0, 0]
    assert masks[0, 1].sum() == 1000  # all other voxels tie at 0 and are deleted with it


def _marker_cases(labels: list[int], top_is_marker: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class evidence sits in one voxel per case; the attribution ranks it first or last."""
    images = torch.rand(len(labels), 2, 10, 10, 10) + 1.0
    attributions = torch.stack([_distinct_map(10 + i) for i in range(len(labels))])
    images[:, 0] = 0.0
    for case, label in enumerate(labels):
        flat = attributions[case].flatten()
        voxel = int(flat.argmax() if top_is_marker else flat.argmin())
        images[case, 0].view(-1)[voxel] = 1.0 if label == 1 else -1.0
    return images, attributions


def _marker_model(batch: torch.Tensor) -> torch.Tensor:
    """HGG if the evidence voxel is +1, LGG if -1; once deleted the model answers LGG."""
    evidence = batch[:, 0].flatten(1).sum(1)
    return torch.stack([torch.zeros_like(evidence), evidence], dim=1)


def test_ids_collapse_after_top_two_percent_is_near_zero():
    labels = [0, 1, 1, 0, 1, 0, 1]
    images, attributions = _marker_cases(labels, top_is_marker=True)
    curve = deletion_curve(_marker_model, images, attributions, torch.tensor(labels), batch_size=16)
    # C_0 = 1, then every case reads LGG: BAC 0.5 from step 1 on.
    assert curve.tolist() == [1.0] + [0.5] * 50
    # R = (1, 0, ..., 0): only the first trapezoid, 0.5, over 50 intervals
    assert incremental_deletion_score(curve) == pytest.approx(0.5 / 50)


def test_ids_evidence_deleted_last_scores_near_one():
    labels = [0, 1, 1, 0]
    images, attributions = _marker_cases(labels, top_is_marker=False)
    curve = deletion_curve(_marker_model, images, attributions, labels, batch_size=5)
    assert curve.tolist() == [1.0] * 50 + [0.5]
    assert incremental_deletion_score(curve) == pytest.approx((49 + 0.5) / 50)


def test_ids_model_ignoring_input_scores_zero_by_clipping():
    labels = [0, 1, 1, 0]
    images, attributions = _marker_cases(labels, top_is_marker=True)
    constant = lambda batch: torch.tensor([[0.0, 1.0]]).repeat(batch.shape[0], 1)  # noqa: E731
    curve = deletion_curve(constant, images, attributions, labels, batch_size=8)
    assert curve.tolist() == [0.5] * 51
    assert incremental_deletion_score(curve) == 0.0


@pytest.mark.parametrize(
    "curve, expected",
    [
        # lo = 0.5, hi = 1; C_1 = 0.75 -> R = (1, 0.5, 0): ((1 + 0.5) / 2 + (0.5 + 0) / 2) / 2
        ([1.0, 0.75, 0.5], 0.5),
        # values outside [lo, hi] are clipped: R = (0, 1, 0, 1) -> (0.5 + 0.5 + 0.5) / 3
        ([0.6, 1.0, 0.2, 0.9], 0.5),
        # rising curve (C_0 = lo): R = (0, 0, 1) -> 0.25
        ([0.5, 0.5, 0.9], 0.25),
    ],
)
def test_ids_hand_values(curve, expected):
    assert incremental_deletion_score(curve) == pytest.approx(expected)


def test_deletion_curve_streams_the_exact_quantile_copies():
    labels = [1, 0, 1]
    images, attributions = _marker_cases(labels, top_is_marker=True)
    seen: list[torch.Tensor] = []

    def recording_model(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return _marker_model(batch)

    curve = deletion_curve(recording_model, images, attributions, labels, batch_size=7)
    # 3 x 51 = 153 copies, never more than 7 at once; the last step's all-zero image runs once, not 3 times
    assert [len(b) for b in seen] == [7] * 21 + [4]
    copies = list(torch.cat(seen))
    masks = deletion_masks(attributions)
    expected = images[:, None] * (~masks)[:, :, None]
    zero_image = expected[0, -1]
    for case in range(3):
        steps = expected[case] if case == 0 else expected[case, :-1]
        assert torch.equal(torch.stack(copies[: len(steps)]), steps)
        copies = copies[len(steps) :]
    assert not zero_image.any() and not copies
    assert torch.equal(expected[:, 0], images)  # step 0 is the unmodified input
    # the batch size changes nothing
    assert torch.equal(curve, deletion_curve(_marker_model, images, attributions, labels, batch_size=1))


def test_deletion_curve_runs_each_distinct_copy_once():
    """Tied attributions (zeros outside a "brain") repeat copies; the curve equals running every copy."""
    labels = [1, 0, 1, 0]
    images, attributions = _marker_cases(labels, top_is_marker=True)
    attributions = attributions + 1.0  # distinct positive values, the same order
    attributions[:, :, :, 5:] = 0.0  # half of each volume outside the brain: ties at 0
    calls: list[int] = []

    def counting_model(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        return _marker_model(batch)

    curve = deletion_curve(counting_model, images, attributions, labels, batch_size=5)
    # by hand: each case's 500 zeros are the lower half of its 1000 values, so the quantile of level
    # 1 - k/50 is 0 for k >= 26 (position (1 - k/50)·999 <= 479.5 < 500) and interpolates above 0 at
    # k = 25 (499.5): steps 0..25 delete distinct sets (distinct positive values), 26 copies per case, and
    # steps 26..50 delete every voxel, one all-zero image run once for all four cases
    thresholds = deletion_thresholds(attributions)
    assert (thresholds[:, 26:] == 0).all() and (thresholds[:, 25] > 0).all()
    assert sum(calls) == 4 * 26 + 1
    masks = deletion_masks(attributions)
    copies = images[:, None] * (~masks)[:, :, None]
    every_copy = torch.stack([counting_model(case_copies).argmax(1) for case_copies in copies])
    expected = torch.tensor([balanced_accuracy(torch.tensor(labels), every_copy[:, k], 2) for k in range(51)])
    assert torch.equal(curve, expected.double())
    calls.clear()
    assert torch.equal(deletion_curve(counting_model, images, attributions, labels, 5, reuse_identical=False), curve)
    assert sum(calls) == 4 * 51


def test_deletion_curve_upsamples_coarse_attribution():
    labels = [1, 0]
    images = torch.rand(2, 1, 4, 4, 4) + 1.0
    coarse = torch.zeros(2, 2, 2, 2)
    coarse[:, 0, 0, 0] = 1.0  # upsampled (align_corners=False): 1 at the origin, 0.75 at its 3 axis neighbours
    seen: list[torch.Tensor] = []

    def recording_model(batch: torch.Tensor) -> torch.Tensor:
        seen.append(batch.clone())
        return torch.zeros(batch.shape[0], 2)

    deletion_curve(recording_model, images, coarse, labels, batch_size=102, steps=50)
    copies = torch.cat(seen)[:, 0]
    # step 1: the 0.98 quantile of 64 values lies between the 62nd and 63rd sorted values, both 0.75,
    # so the maximum and its three tied neighbours go (nearest-neighbour resampling would delete 8).
    expected = torch.zeros(4, 4, 4, dtype=torch.bool)
    expected[0, 0, 0] = expected[1, 0, 0] = expected[0, 1, 0] = expected[0, 0, 1] = True
    deleted = copies == 0  # the images are >= 1, so 0 is deleted
    fewest = [copy for copy in deleted if 0 < int(copy.sum()) <= 4]  # each case's step 1 and nothing else
    assert len(fewest) == 2 and all(torch.equal(copy, expected) for copy in fewest)


# ---------------------------------------------------------------- localisation read-outs


def _planted_cube_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 4-channel 10^3 image: background -1, a 6^3 'brain' (216 voxels) at 2..7, a 2^3 tumour (8) inside it."""
    image = torch.full((4, 10, 10, 10), -1.0)
    image[:, 2:8, 2:8, 2:8] = 0.5
    mask = torch.zeros(10, 10, 10)
    mask[3:5, 3:5, 3:5] = 1
    image[1][mask > 0] = 2.0
    return image, mask, brain_mask(image)


def test_planted_cube_map_on_the_cube_scores_ap_one_and_uniform_brain_map_the_tumour_share():
    image, mask, brain = _planted_cube_case()
    assert int(brain.sum()) == 216
    # a map that covers only the cube: every >= 0.5 voxel is tumour -> AP 1
    assert activation_precision(mask.clone(), mask) == 1.0
    # a map uniform inside the brain: its >= 0.5 region is the 216 brain voxels, 8 of them tumour
    uniform = brain.float()
    assert activation_precision(uniform, mask) == pytest.approx(8 / 216)
    summary = localisation_summary(uniform, mask, brain)
    assert summary["tumour_share_brain"] == pytest.approx(8 / 216)  # the random-map AP
    assert summary["tumour_share_volume"] == pytest.approx(8 / 1000)
    assert summary["region_share"] == pytest.approx(216 / 1000)
    # the first maximum voxel in C order is (2, 2, 2): brain, not tumour
    assert summary["peak_in_tumour"] == 0.0
    assert localisation_summary(mask + 0.5 * uniform, mask, brain)["peak_in_tumour"] == 1.0


def test_brain_mask_is_whatever_differs_from_the_background_in_any_sequence():
    image = torch.zeros(2, 3, 3, 3)
    image[1, 0, 0, 0] = 1.0  # one sequence alone shows this voxel
    image[0, 2, 2, 2] = 3.0
    assert sorted(map(tuple, brain_mask(image).nonzero().tolist())) == [(0, 0, 0), (2, 2, 2)]
    with pytest.raises(ValueError, match="C, H, W, D"):
        brain_mask(torch.zeros(3, 3, 3))


def test_similarity_spread_per_prototype_hand_values():
    # prototype 0: S = (0, 1) -> std 0.5; prototype 1: (0.2, 0.2) -> 0; prototype 2: (0.1, 0.5) -> 0.2
    s = torch.tensor([[0.0, 0.2, 0.1], [1.0, 0.2, 0.5]])
    assert similarity_spread(s) == pytest.approx({"min": 0.0, "mean": 0.7 / 3, "max": 0.5})
    with pytest.raises(ValueError, match="N >= 2"):
        similarity_spread(torch.ones(1, 3))


def test_share_in_support_hand_counted_on_two_grids():
    # 4^3 input; tumour [1:3, 0:2, 0:2] = 8 voxels. A 2^3 support with cell (0, 0, 0) only, resized
    # trilinearly (align_corners=False): each axis weighs it 1, 0.75, 0.25, 0, a voxel the product of its
    # three weights. Of the tumour, (1, 0, 0) reads 0.75, (1, 1, 0) and (1, 0, 1) 0.5625: in; (1, 1, 1)
    # 0.42 and every x = 2 voxel (<= 0.25): out. 3 of 8.
    tumour = torch.zeros(4, 4, 4)
    tumour[1:3, 0:2, 0:2] = 1
    coarse = torch.zeros(2, 2, 2)
    coarse[0, 0, 0] = 1
    assert share_in_support([coarse], tumour) == 3 / 8
    # a second scale on the input grid that leaves out voxel (1, 0, 0): 2 of 8
    fine = torch.ones(1, 4, 4, 4)
    fine[0, 1, 0, 0] = 0
    assert share_in_support([coarse, fine], tumour) == 2 / 8
    assert share_in_support([torch.ones(2, 2, 2)], tumour) == 1.0
    assert share_in_support([], tumour) == 1.0  # maps over the whole volume
    assert math.isnan(share_in_support([coarse], torch.zeros(4, 4, 4)))


def test_eq28_density_combination_weighs_each_scale_by_its_voxel_count():
    # l1-normalised maps: fine scale 2^3 uniform 1/8, coarse 1^3 = 1. "sum" is dominated by the coarse
    # scale (1 + 1/8); "density" scales the fine map by 8 and the coarse by 1: 1 + 1 = 2 everywhere.
    fine = torch.full((1, 1, 2, 2, 2), 1 / 8)
    coarse = torch.ones(1, 1, 1, 1, 1)
    zeta = torch.ones(2, 2)
    summed = class_attention_map([fine, coarse], zeta, torch.tensor([0]), (2, 2, 2), combination="sum")
    density = class_attention_map([fine, coarse], zeta, torch.tensor([0]), (2, 2, 2), combination="density")
    assert torch.allclose(summed, torch.full((1, 2, 2, 2), 1.125))
    assert torch.allclose(density, torch.full((1, 2, 2, 2), 2.0))
    with pytest.raises(ValueError, match="combination"):
        class_attention_map([fine, coarse], zeta, torch.tensor([0]), (2, 2, 2), combination="max")


def test_eq28_product_combination_multiplies_the_supporting_scales():
    # fine 2^3 = 1/8 everywhere except 1/2 at (0, 0, 0); coarse 1^3 = 2 -> product 1/4, and 1 at (0, 0, 0);
    # a case whose class has no coarse support keeps the fine map alone.
    fine = torch.full((2, 1, 2, 2, 2), 1 / 8)
    fine[:, 0, 0, 0, 0] = 0.5
    coarse = torch.full((2, 1, 1, 1, 1), 2.0)
    zeta = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # class 1: no supporting prototype at the coarse scale
    out = class_attention_map([fine, coarse], zeta, torch.tensor([0, 1]), (2, 2, 2), combination="product")
    expected = torch.full((2, 2, 2), 0.25)
    expected[0, 0, 0] = 1.0
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1], fine[1, 0])
    # each scale's normalisation is one factor: scaling the coarse maps by 10 scales the map, not its ranking
    scaled = class_attention_map([fine, 10 * coarse], zeta, torch.tensor([0, 1]), (2, 2, 2), combination="product")
    torch.testing.assert_close(scaled[0], expected * 10)
