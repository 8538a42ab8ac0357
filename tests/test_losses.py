"""Tests of the training objectives: every expected value is worked out by hand in a comment."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.losses import (
    LastLayerLoss,
    Stage1Loss,
    classification_loss,
    clustering_loss_class_specific,
    clustering_loss_shared,
    clustering_loss_shared_max,
    clustering_loss_shared_mean,
    diversity_loss,
    inverse_frequency_weights,
    l1_regularisation,
    lse_pool,
    mapping_loss,
    online_cam_logits,
    resize_spatial,
    scale_agreement_loss,
    separation_loss_class_specific,
    separation_loss_shared,
    separation_loss_shared_max,
    separation_loss_shared_mean,
)
from scripts.prototypes import ScaleTerms, soft_class_coefficients, soft_ownership

LN3 = math.log(3.0)


def test_eq7_soft_coefficients_hand_value_and_detached():
    # ReLU(w) = [[1, 0, 0], [3, 2, 0]]; column sums 4, 2, 0.
    # zeta = [[1/4, 0, 0], [3/4, 2/2, 0]] (up to the 1e-6 in the denominators); the all-negative
    # column gives zeros.
    w = torch.tensor([[1.0, -1.0, 0.0], [3.0, 2.0, -5.0]], requires_grad=True)
    zeta = soft_class_coefficients(w)
    expected = torch.tensor([[1 / (4 + 1e-6), 0.0, 0.0], [3 / (4 + 1e-6), 2 / (2 + 1e-6), 0.0]])
    torch.testing.assert_close(zeta, expected)
    # property: columns sum to 1 where any weight is positive, else 0
    torch.testing.assert_close(zeta.sum(0), torch.tensor([1.0, 1.0, 0.0]), atol=1e-5, rtol=0)
    assert not zeta.requires_grad


def test_eq8_eq9_shared_clustering_separation_two_classes():
    # zeta ~ [[0.25, 0, 0], [0.75, 1, 0]] from w below.
    # sample 0 (y=0): clst = -(0.25*0.5) = -0.125; sep = 0.75*0.5 + 1*(-0.2) + 0*0.9 = 0.175
    # sample 1 (y=1): clst = -(0.75*0.1 + 1*0.4) = -0.475; sep = 0.25*0.1 = 0.025
    # batch means: clst = -0.3, sep = 0.1
    zeta = soft_class_coefficients(torch.tensor([[1.0, -1.0, 0.0], [3.0, 2.0, -5.0]]))
    s = torch.tensor([[0.5, -0.2, 0.9], [0.1, 0.4, -0.3]])
    y = torch.tensor([0, 1])
    assert clustering_loss_shared(s, y, zeta).item() == pytest.approx(-0.3, abs=1e-5)
    assert separation_loss_shared(s, y, zeta).item() == pytest.approx(0.1, abs=1e-5)


def test_eq9_shared_separation_sums_all_other_classes():
    # three classes, one prototype with w = (1, 1, 2): zeta = (0.25, 0.25, 0.5); S = 0.8, y = 2.
    # clst = -0.5*0.8 = -0.4; sep = (0.25 + 0.25)*0.8 = 0.4
    zeta = soft_class_coefficients(torch.tensor([[1.0], [1.0], [2.0]]))
    s, y = torch.tensor([[0.8]]), torch.tensor([2])
    assert clustering_loss_shared(s, y, zeta).item() == pytest.approx(-0.4, abs=1e-5)
    assert separation_loss_shared(s, y, zeta).item() == pytest.approx(0.4, abs=1e-5)


OWNERSHIP = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])  # prototypes 0,1 -> class 0; 2,3 -> class 1


def test_eq22_eq23_class_specific_clustering_separation():
    # sample 0 (y=0): own {0.2, 0.7} -> clst -0.7; other {-0.1, 0.4} -> sep 0.4
    # sample 1 (y=1): own {-0.6, -0.2} -> clst 0.2; other {-0.5, -0.3} -> sep -0.3
    # means: clst = (-0.7 + 0.2)/2 = -0.25; sep = (0.4 - 0.3)/2 = 0.05
    s = torch.tensor([[0.2, 0.7, -0.1, 0.4], [-0.5, -0.3, -0.6, -0.2]])
    y = torch.tensor([0, 1])
    assert clustering_loss_class_specific(s, y, OWNERSHIP).item() == pytest.approx(-0.25)
    assert separation_loss_class_specific(s, y, OWNERSHIP).item() == pytest.approx(0.05)


def test_eq22_rejects_ownership_with_two_owners():
    bad = torch.tensor([[1, 1], [1, 0], [0, 1], [0, 1]])
    with pytest.raises(ValueError, match="ownership"):
        clustering_loss_class_specific(torch.zeros(1, 4), torch.tensor([0]), bad)


def test_eq10_diversity_hand_value_skips_single_prototype_scales():
    # scale a: [1,0],[0,1],[1,1]: cosines 0, 1/sqrt2, 1/sqrt2 -> mean sqrt2/3
    # scale b: [1,0],[-2,0]: cosine -1
    # scale c: one prototype, no pair -> skipped; L_div = (sqrt2/3 - 1)/2
    banks = [
        torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        torch.tensor([[1.0, 0.0], [-2.0, 0.0]]),
        torch.tensor([[3.0, 4.0]]),
    ]
    assert diversity_loss(banks).item() == pytest.approx((math.sqrt(2) / 3 - 1) / 2)


def test_eq10_diversity_properties():
    # orthogonal prototypes -> 0; parallel ones -> 1
    assert diversity_loss([torch.eye(4)]).item() == pytest.approx(0.0)
    assert diversity_loss([torch.tensor([[1.0, 2.0], [2.0, 4.0], [0.5, 1.0]])]).item() == pytest.approx(1.0)


def test_eq1_classification_cross_entropy_hand_value():
    # logits (0, ln3): p = (1/4, 3/4); y = 1 -> -ln(3/4) = ln(4/3)
    loss = classification_loss(torch.tensor([[0.0, LN3]]), torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(4 / 3))


def test_eq1_classification_focal_class_weighted_hand_value():
    # sample 0: logits (0, ln3), y=1: p_y = 3/4 -> (1/4)^2 * ln(4/3) = ln(4/3)/16
    # sample 1: logits (0, 0),   y=0: p_y = 1/2 -> (1/2)^2 * ln 2   = ln(2)/4
    # weights 1/n_class from counts (1, 3): w = (1, 1/3); weighted mean over samples:
    # (1 * ln2/4 + 1/3 * ln(4/3)/16) / (1 + 1/3)
    logits = torch.tensor([[0.0, LN3], [0.0, 0.0]])
    y = torch.tensor([1, 0])
    weights = inverse_frequency_weights(torch.tensor([0, 1, 1, 1]), num_classes=2)
    torch.testing.assert_close(weights, torch.tensor([1.0, 1 / 3]))
    expected = (math.log(2) / 4 + math.log(4 / 3) / 48) / (4 / 3)
    assert classification_loss(logits, y, "focal", weights).item() == pytest.approx(expected)


def test_classification_label_smoothing_hand_value():
    # logits (0, ln3): p = (1/4, 3/4); y = 1, eps = 0.2, C = 2 -> target (0.1, 0.9):
    # 0.1 * ln 4 + 0.9 * ln(4/3)
    loss = classification_loss(torch.tensor([[0.0, LN3]]), torch.tensor([1]), label_smoothing=0.2)
    assert loss.item() == pytest.approx(0.1 * math.log(4) + 0.9 * math.log(4 / 3))
    # the stage losses carry the setting into L_cls
    assert LastLayerLoss(label_smoothing=0.2).classify(torch.tensor([[0.0, LN3]]), torch.tensor([1])).item() == (
        pytest.approx(loss.item())
    )
    with pytest.raises(ValueError, match="focal"):
        classification_loss(torch.zeros(1, 2), torch.tensor([0]), "focal", label_smoothing=0.1)


def test_classification_rejects_unknown_kind():
    with pytest.raises(ValueError):
        classification_loss(torch.zeros(1, 2), torch.tensor([0]), "hinge")


def test_inverse_frequency_weights_rejects_missing_class():
    with pytest.raises(ValueError, match="classes"):
        inverse_frequency_weights(torch.tensor([0, 0]), num_classes=2)


def test_eq1_map_resize_sizes_and_corners():
    # floor(16*0.875) = 14, floor(12*0.875) = 10; align_corners keeps the end values
    x = torch.arange(16.0).reshape(1, 1, 16, 1, 1).expand(1, 1, 16, 12, 12)
    out = resize_spatial(x, 0.875)
    assert out.shape == (1, 1, 14, 10, 10)
    assert out[0, 0, 0, 0, 0].item() == 0.0 and out[0, 0, -1, 0, 0].item() == pytest.approx(15.0)
    with pytest.raises(ValueError, match="empty axis"):
        resize_spatial(torch.zeros(1, 1, 4, 1, 1), 0.75)


def test_eq1_map_loss_hand_value():
    # F along H = (0, 1, 2, 3), constant along W and D (size 2 -> floor(1.5) = 1); map M1(x) = x^2.
    # r = 0.75: H 4 -> 3, align_corners samples at h = 0, 1.5, 3.
    #   A(M1(F)) = A(0, 1, 4, 9) = (0, 2.5, 9);  M1(A(F)) = (0, 1.5, 3)^2 = (0, 2.25, 9)
    #   consistency = mean(0, 0.25, 0) = 1/12;  size term = mean(0, 1, 4, 9) = 3.5
    f = torch.arange(4.0).reshape(1, 1, 4, 1, 1).expand(1, 1, 4, 2, 2)
    loss = mapping_loss(f, f**2, lambda x: x**2, 0.75)
    assert loss.item() == pytest.approx(3.5 + 1 / 12)


def test_eq1_map_loss_consistency_vanishes_for_linear_map():
    # trilinear resize commutes with a per-voxel linear map, so only mean|M1| is left
    g = torch.Generator().manual_seed(0)
    f = torch.rand(2, 3, 8, 8, 6, generator=g)
    mix = torch.rand(4, 3, generator=g)

    def map_fn(x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kc,bchwd->bkhwd", mix, x)

    maps = map_fn(f)
    assert mapping_loss(f, maps, map_fn, 0.875).item() == pytest.approx(maps.abs().mean().item(), rel=1e-5)


def test_eq1_oc_lse_pool_hand_value_and_limits():
    # r = 10, voxels (0, 0.1 ln3): r*h = (0, ln3) -> logsumexp = ln 4; (ln4 - ln2)/10 = ln2/10
    h = torch.tensor([0.0, 0.1 * LN3]).reshape(1, 1, 2, 1, 1)
    assert lse_pool(h).item() == pytest.approx(math.log(2) / 10)
    # limits in float64 (dividing by a tiny r amplifies float32 rounding):
    # large r -> max (bias <= log(64)/r), small r -> mean (bias ~ r * var / 2)
    x = torch.rand(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    flat = x.flatten(2)
    torch.testing.assert_close(lse_pool(x, 1e4), flat.amax(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(lse_pool(x, 1e-4), flat.mean(2), atol=1e-4, rtol=0)


def test_eq1_oc_logits_and_loss_hand_value():
    # hidden channel 0 = (0, 0.1 ln3) -> g0 = ln2/10; channel 1 constant 0.5 -> g1 = 0.5
    # W2 = [[1, 0], [0, 2]] -> q = (ln2/10, 1); classifier columns (1, 2) of w = identity -> logits = q
    # y = 1: CE = ln(1 + exp(q0 - q1))
    hidden = torch.tensor([[0.0, 0.1 * LN3], [0.5, 0.5]]).reshape(1, 2, 2, 1, 1)
    w2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).reshape(2, 2, 1, 1, 1)
    w_cls = torch.tensor([[9.0, 1.0, 0.0], [9.0, 0.0, 1.0]])
    logits = online_cam_logits(hidden, w2, w_cls[:, [1, 2]])
    torch.testing.assert_close(logits, torch.tensor([[math.log(2) / 10, 1.0]]))
    expected = math.log(1 + math.exp(math.log(2) / 10 - 1))
    assert classification_loss(logits, torch.tensor([1])).item() == pytest.approx(expected)


def test_eq3_l1_shared_and_class_specific():
    # all: 1 + 2 + 0.5 + 3 + 4 + 0 = 10.5
    # ownership: p0 -> c0, p1 -> c1, p2 -> c0; other-class entries w[0,1], w[1,0], w[1,2]: 2 + 3 + 0 = 5
    w = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 4.0, 0.0]])
    ownership = torch.tensor([[1, 0], [0, 1], [1, 0]])
    assert l1_regularisation(w).item() == pytest.approx(10.5)
    assert l1_regularisation(w, ownership).item() == pytest.approx(5.0)


def test_eq3_last_layer_loss_hand_value():
    # CE = ln(4/3); L1 = 10.5; total = ln(4/3) + 0.01*10.5
    w = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 4.0, 0.0]])
    total, parts = LastLayerLoss()(torch.tensor([[0.0, LN3]]), torch.tensor([1]), w)
    assert total.item() == pytest.approx(math.log(4 / 3) + 0.105)
    assert set(parts) == {"cls", "l1"} and parts["l1"].item() == pytest.approx(10.5)


def _constant(shape: tuple[int, ...], values: list[float]) -> torch.Tensor:
    """A (1, N, *spatial) tensor whose channel n is the constant values[n]."""
    return torch.tensor(values).reshape(1, -1, 1, 1, 1).expand(1, len(values), *shape).clone()


def _two_scales(calls: list[tuple[int, ...]] | None = None) -> tuple[list[ScaleTerms], torch.Tensor]:
    """Two scales with hand-checkable terms (see test_eq1_stage1_total_hand_value)."""

    def identity(x: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(tuple(x.shape[2:]))
        return x

    f1, f2 = _constant((4, 4, 4), [0.5]), _constant((4, 4, 4), [0.25, 0.25])
    scale1 = ScaleTerms(
        features=f1,
        hidden=_constant((4, 4, 4), [1.0, 0.0]),
        w2=torch.tensor([[2.0, 3.0]]).reshape(1, 2, 1, 1, 1),
        soft_maps=f1,
        similarities=torch.tensor([[0.2]], requires_grad=True),
        prototypes=torch.tensor([[1.0, 0.0]]),
        map_fn=identity,
        columns=slice(0, 1),
    )
    scale2 = ScaleTerms(
        features=f2,
        hidden=_constant((4, 4, 4), [1.0, 1.0]),
        w2=torch.tensor([[1.0, 0.0], [0.0, -1.0]]).reshape(2, 2, 1, 1, 1),
        soft_maps=f2,
        similarities=torch.tensor([[0.6, -0.4]], requires_grad=True),
        prototypes=torch.tensor([[1.0, 0.0], [1.0, 1.0]]),
        map_fn=identity,
        columns=[1, 2],
    )
    w_cls = torch.tensor([[0.0, 1.0, 2.0], [LN3, 0.0, 1.0]], requires_grad=True)
    return [scale1, scale2], w_cls


def test_eq1_stage1_total_hand_value():
    # y = 1, logits (0, ln3): cls = ln(4/3)
    # zeta columns: (0, 1), (1, 0), (2/3, 1/3); S = (0.2 | 0.6, -0.4)
    #   clst = -(1*0.2 + 0*0.6 + 1/3*(-0.4)) = -1/15;  sep = 0*0.2 + 1*0.6 + 2/3*(-0.4) = 1/3
    # map: identity map on constant features -> consistency 0; mean|M1| = 0.5 and 0.25 -> mean 0.375
    # oc scale 1: g = (1, 0), q = 2, logits = 2*(0, ln3) = (0, 2 ln3) -> CE = ln(1 + 1/9)
    # oc scale 2: g = (1, 1), q = (1, -1), columns 1, 2 of w = [[1, 2], [0, 1]]:
    #   logits = (1*1 - 1*2, 1*0 - 1*1) = (-1, -1) -> CE = ln 2;  oc = mean of the two
    # div: scale 1 has one prototype (skipped); scale 2 cos = 1/sqrt2
    scales, w_cls = _two_scales()
    cls, clst, sep, mp = math.log(4 / 3), -1 / 15, 1 / 3, 0.375
    oc = (math.log(10 / 9) + math.log(2)) / 2
    div = 1 / math.sqrt(2)
    total, parts = Stage1Loss(seed=0)(scales, torch.tensor([[0.0, LN3]]), torch.tensor([1]), w_cls)
    expected = 1 * cls + 0.8 * clst + 0.08 * sep + 0.5 * mp + 0.05 * oc + 0.001 * div
    assert total.item() == pytest.approx(expected, abs=1e-5)
    for name, value in {"cls": cls, "clst": clst, "sep": sep, "map": mp, "oc": oc, "div": div}.items():
        assert parts[name].item() == pytest.approx(value, abs=1e-5), name
        assert not parts[name].requires_grad


def test_eq1_stage1_switches_and_single_map_call_per_scale():
    calls: list[tuple[int, ...]] = []
    scales, w_cls = _two_scales(calls)
    args = (scales, torch.tensor([[0.0, LN3]]), torch.tensor([1]), w_cls)
    total_off, parts_off = Stage1Loss(use_map=False, use_oc=False)(*args)
    assert calls == [] and set(parts_off) == {"cls", "clst", "sep", "div"}
    _, parts_on = Stage1Loss(map_ratios=(0.75,))(*args)
    assert calls == [(3, 3, 3), (3, 3, 3)]  # one re-run of the mapping module per scale, at floor(4*0.75)
    expected_off = sum(w * parts_on[k].item() for k, w in {"cls": 1, "clst": 0.8, "sep": 0.08, "div": 0.001}.items())
    assert total_off.item() == pytest.approx(expected_off)


def test_eq1_stage1_ratio_draw_is_seeded():
    # on 8 voxels per axis r = 0.75 resizes to 6 and r = 0.875 to 7
    def drawn(seed: int) -> list[int]:
        calls: list[int] = []

        def identity(x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[2])
            return x

        f = torch.rand(1, 1, 8, 8, 8)
        scale = ScaleTerms(f, f, torch.ones(1, 1, 1, 1, 1), f, torch.zeros(1, 1), torch.ones(1, 2), identity, [0])
        loss = Stage1Loss(seed=seed, use_oc=False)
        for _ in range(16):
            loss([scale], torch.zeros(1, 2), torch.tensor([0]), torch.ones(2, 1))
        return calls

    first = drawn(3)
    assert first == drawn(3)
    assert set(first) == {6, 7}


def test_eq7_stage1_zeta_detached_no_grad_to_classifier():
    # only clst and sep on: the classifier weight enters through zeta alone, which is detached
    scales, w_cls = _two_scales()
    loss = Stage1Loss(cls_weight=0.0, div_weight=0.0, use_map=False, use_oc=False)
    total, _ = loss(scales, torch.tensor([[0.0, LN3]]), torch.tensor([1]), w_cls)
    total.backward()
    assert w_cls.grad is None
    # d total / d S = 0.8*(-zeta_y) + 0.08*zeta_other; for S_2,1 (zeta = (1, 0)): 0.08
    assert scales[1].similarities.grad[0, 0].item() == pytest.approx(0.08, abs=1e-6)


def test_eq22_stage1_class_specific_uses_ownership():
    scales, w_cls = _two_scales()
    ownership = torch.tensor([[1, 0], [0, 1], [1, 0]])
    args = (scales, torch.tensor([[0.0, LN3]]), torch.tensor([1]), w_cls)
    loss = Stage1Loss(prototype_sharing="class_specific", use_map=False, use_oc=False)
    # y = 1 owns only prototype 1 (S = 0.6): clst = -0.6; others (0.2, -0.4): sep = 0.2
    _, parts = loss(*args, ownership=ownership)
    assert parts["clst"].item() == pytest.approx(-0.6) and parts["sep"].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="ownership"):
        loss(*args)


def test_stage1_rejects_bad_options_and_columns():
    with pytest.raises(ValueError):
        Stage1Loss(prototype_sharing="partly")
    with pytest.raises(ValueError, match="map_ratios"):
        Stage1Loss(map_ratios=(1.5,))
    scales, w_cls = _two_scales()
    swapped = [scales[0]._replace(columns=[2]), scales[1]._replace(columns=[0, 1])]
    with pytest.raises(ValueError, match="columns"):
        Stage1Loss()(swapped, torch.tensor([[0.0, LN3]]), torch.tensor([1]), w_cls)


def test_mean_form_divides_eq8_eq9_by_their_weights():
    # zeta ~ [[0.25, 0, 0], [0.75, 1, 0]] (w below); S and y as in the Eq. 8-9 test.
    # sample 0 (y=0): own weights (0.25, 0, 0) -> clst = -(0.25*0.5)/0.25 = -0.5
    #                 other weights (0.75, 1, 0) -> sep = (0.75*0.5 + 1*(-0.2))/1.75 = 0.1
    # sample 1 (y=1): own (0.75, 1, 0) -> clst = -(0.75*0.1 + 1*0.4)/1.75 = -0.475/1.75
    #                 other (0.25, 0, 0) -> sep = 0.25*0.1/0.25 = 0.1
    zeta = soft_class_coefficients(torch.tensor([[1.0, -1.0, 0.0], [3.0, 2.0, -5.0]]))
    s = torch.tensor([[0.5, -0.2, 0.9], [0.1, 0.4, -0.3]])
    y = torch.tensor([0, 1])
    assert clustering_loss_shared_mean(s, y, zeta).item() == pytest.approx((-0.5 - 0.475 / 1.75) / 2, abs=1e-5)
    assert separation_loss_shared_mean(s, y, zeta).item() == pytest.approx(0.1, abs=1e-5)


def test_max_form_uses_the_prototypes_zeta_assigns():
    # zeta ~ [[0.25, 0, 0], [0.75, 1, 0]]: class 1 owns prototypes 0 and 1 (zeta > 0.5), class 0 owns none,
    # prototype 2 (all weights negative) belongs to nobody.
    # sample 0 (y=0): no own prototype -> clst 0; others {0.5, -0.2} -> sep 0.5
    # sample 1 (y=1): own {0.1, 0.4} -> clst -0.4; no prototype owned by class 0 -> sep 0
    zeta = soft_class_coefficients(torch.tensor([[1.0, -1.0, 0.0], [3.0, 2.0, -5.0]]))
    assert soft_ownership(zeta).tolist() == [[False, False, False], [True, True, False]]
    s = torch.tensor([[0.5, -0.2, 0.9], [0.1, 0.4, -0.3]])
    y = torch.tensor([0, 1])
    assert clustering_loss_shared_max(s, y, zeta).item() == pytest.approx(-0.2)
    assert separation_loss_shared_max(s, y, zeta).item() == pytest.approx(0.25)


def test_stage1_loss_picks_the_clustering_form():
    zeta_w = torch.tensor([[1.0, -1.0, 0.0], [3.0, 2.0, -5.0]])
    scale = ScaleTerms(
        features=torch.zeros(2, 1, 2, 2, 2), hidden=None, w2=None, soft_maps=None,
        similarities=torch.tensor([[0.5, -0.2, 0.9], [0.1, 0.4, -0.3]]), prototypes=torch.eye(3),
        map_fn=None, columns=slice(0, 3),
    )
    logits, y = torch.zeros(2, 2), torch.tensor([0, 1])
    for form, (clst, sep) in {"sum": (-0.3, 0.1), "max": (-0.2, 0.25)}.items():
        _, parts = Stage1Loss(clustering=form, use_map=False, use_oc=False)([scale], logits, y, zeta_w)
        assert parts["clst"].item() == pytest.approx(clst, abs=1e-5)
        assert parts["sep"].item() == pytest.approx(sep, abs=1e-5)
    with pytest.raises(ValueError):
        Stage1Loss(clustering="median")


def _objective_weights(name: str) -> tuple[str, float, float]:
    """(clustering form, clst weight, sep weight) of a config: configs/objectives/<name>.json, or train.json."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    config = json.loads((root / "train.json").read_text())
    if name != "train":
        config.update(json.loads((root / "objectives" / f"{name}.json").read_text()))
    return config["clustering"], float(config["clst_weight"]), float(config["sep_weight"])


def _pulled_up_by_every_class(form: str, clst_weight: float, sep_weight: float, zeta: torch.Tensor) -> torch.Tensor:
    """Bool (K,): prototypes whose similarity every class's cases pull up, at S = 1 everywhere.

    A balanced batch (two cases per class) at S = 1: the gradient of the weighted pair with respect to
    each S, summed over the cases of each class, is negative (pulls S up) for every class exactly when
    raising that prototype's similarity on every case lowers the loss, the collapse direction.
    """
    from scripts.losses import CLUSTERING_FORMS

    clustering, separation = CLUSTERING_FORMS[form]
    classes = zeta.shape[0]
    labels = torch.arange(classes).repeat(2)
    s = torch.ones(labels.numel(), zeta.shape[1], requires_grad=True)
    (clst_weight * clustering(s, labels, zeta) + sep_weight * separation(s, labels, zeta)).backward()
    per_class = torch.stack([s.grad[labels == c].sum(0) for c in range(classes)])
    return (per_class < 0).all(dim=0)


@pytest.mark.parametrize("name", ["train", "mean", "max", "no_clustering"])
def test_no_objective_variant_pulls_a_prototype_up_for_every_class(name):
    # Random classifier weights (C = 2 and 3) give soft zeta; under the variant's configured weights no
    # prototype may be pulled up by the cases of every class (its minimum would be S = 1 everywhere).
    form, clst_weight, sep_weight = _objective_weights(name)
    generator = torch.Generator().manual_seed(0)
    for classes in (2, 3):
        for _ in range(50):
            zeta = soft_class_coefficients(torch.randn(classes, 30, generator=generator))
            assert not _pulled_up_by_every_class(form, clst_weight, sep_weight, zeta).any(), (name, classes)


def test_paper_literal_sum_pulls_shared_prototypes_up_for_every_class():
    # Eq. 8-9 as printed with lambda 0.8 / 0.08: a prototype with zeta_y > 0.09 for both classes is pulled
    # up by both (gradient -0.8 zeta_y + 0.08 (1 - zeta_y) < 0): the collapse seen on the quick start.
    form, clst_weight, sep_weight = _objective_weights("paper_sum")
    generator = torch.Generator().manual_seed(0)
    draws = [
        bool(_pulled_up_by_every_class(form, clst_weight, sep_weight, soft_class_coefficients(
            torch.randn(2, 30, generator=generator))).any())
        for _ in range(50)
    ]
    assert sum(draws) >= 45
    # the hand case: zeta = (0.5, 0.5) for one prototype -> both classes' gradient -0.8*0.5 + 0.08*0.5 = -0.36
    assert _pulled_up_by_every_class(form, clst_weight, sep_weight, torch.tensor([[0.5], [0.5]])).item()


def test_scale_agreement_hand_value():
    # fine map (1, 3) on a 2 x 1 x 1 grid -> (1/4, 3/4); coarse 1 x 1 x 1 map -> 1, resized to the fine grid: (1, 1)
    # teacher = geometric mean (sqrt(1/4), sqrt(3/4)) normalised: q = (0.5, sqrt .75) / (0.5 + sqrt .75)
    # fine: KL(q || (1/4, 3/4)); coarse: the teacher pooled onto one cell is 1 = its map -> 0; mean of the two
    fine = torch.tensor([1.0, 3.0]).reshape(1, 2, 1, 1).requires_grad_()
    coarse = torch.tensor([5.0]).reshape(1, 1, 1, 1).requires_grad_()
    q1 = 0.5 / (0.5 + math.sqrt(0.75))
    expected = (q1 * math.log(q1 / 0.25) + (1 - q1) * math.log((1 - q1) / 0.75)) / 2
    loss = scale_agreement_loss([fine, coarse])
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    # the teacher is detached: the fine map is pulled from (1/4, 3/4) towards q (its first voxel up)
    assert fine.grad[0, 0, 0, 0] < 0 < fine.grad[0, 1, 0, 0]
    assert coarse.grad.abs().max() < 1e-6
    # sharpness 2 = the number of scales: the teacher is the product (1/4, 3/4) * (1, 1), the fine map itself -> 0
    assert scale_agreement_loss([fine, coarse], sharpness=2.0).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="sharpness"):
        scale_agreement_loss([fine, coarse], sharpness=0.0)


def test_scale_agreement_is_zero_for_maps_that_agree_and_skips_empty_cases():
    # equal maps on one grid (any scale factor) and uniform maps on two grids: the teacher is each map itself
    m = torch.rand(2, 4, 4, 2) + 0.1
    assert scale_agreement_loss([m, 3.0 * m]).item() == pytest.approx(0.0, abs=1e-6)
    assert scale_agreement_loss([torch.ones(2, 4, 4, 2), torch.ones(2, 2, 2, 1)]).item() == pytest.approx(0.0, abs=1e-6)
    # a case whose map at one scale is empty (its class supports no prototype there) is left out of the mean
    other, coarse = torch.rand(1, 4, 4, 2) + 0.1, torch.rand(2, 2, 2, 1) + 0.1
    with_empty = scale_agreement_loss([torch.cat([other, torch.zeros(1, 4, 4, 2)]), coarse])
    alone = scale_agreement_loss([other, coarse[:1]])
    assert with_empty.item() == pytest.approx(alone.item(), rel=1e-6) and alone.item() > 0
    with pytest.raises(ValueError, match="at least two scales"):
        scale_agreement_loss([m])


def test_scale_agreement_teacher_view_hand_value():
    # two scales both (0.8, 0.2) on a 2 x 1 x 1 grid, a teacher view (0.2, 0.8): the teacher is the geometric
    # mean of the three, ((0.8^2 * 0.2)^(1/3), (0.2^2 * 0.8)^(1/3)) normalised; each scale's KL to it, mean of two
    m = torch.tensor([0.8, 0.2]).reshape(1, 2, 1, 1)
    view = torch.tensor([0.2, 0.8]).reshape(1, 2, 1, 1)
    t = ((0.8**2 * 0.2) ** (1 / 3), (0.2**2 * 0.8) ** (1 / 3))
    q = (t[0] / sum(t), t[1] / sum(t))  # (0.6135, 0.3865)
    expected = q[0] * math.log(q[0] / 0.8) + q[1] * math.log(q[1] / 0.2)  # 0.0918
    loss = scale_agreement_loss([m, m.clone()], teacher_views=[view])
    assert loss.item() == pytest.approx(expected, abs=1e-6) and expected == pytest.approx(0.0918, abs=1e-4)
    # without the view the scales agree already; an empty view leaves the case out (no case left: 0)
    assert scale_agreement_loss([m, m.clone()]).item() == pytest.approx(0.0, abs=1e-6)
    assert scale_agreement_loss([m, m.clone()], teacher_views=[torch.zeros(1, 2, 1, 1)]).item() == 0.0
    # a map that peaks one voxel off-centre and its mirror: the product's teacher sits at the centre
    off = torch.tensor([1e-3, 0.5, 0.5]).reshape(1, 3, 1, 1).requires_grad_()
    scale_agreement_loss([off, off], sharpness=3.0, teacher_views=[off.detach().flip(1)]).backward()
    assert off.grad[0, 1, 0, 0] < 0 < off.grad[0, 2, 0, 0]
    with pytest.raises(ValueError, match="one batch size"):
        scale_agreement_loss([m, m], teacher_views=[torch.ones(2, 2, 1, 1)])


def test_stage1_agreement_flip_reads_the_flipped_view():
    # the flipped view's true-class maps, flipped back, join the teacher: maps that follow the flip
    # (an equivariant model) give the term without the view; others change it; the view is required
    scales, w_cls = _two_scales()
    m1 = torch.rand(1, 1, 4, 4, 4) + 0.1
    m2 = torch.stack([torch.rand(4, 4, 4), torch.rand(4, 4, 4) + 0.1])[None]
    scales = [scales[0]._replace(maps=m1), scales[1]._replace(maps=m2)]
    equivariant = [s._replace(maps=s.maps.flip((2, 3, 4))) for s in scales]
    other = [s._replace(maps=torch.rand_like(s.maps) + 0.1) for s in scales]
    args = (scales, torch.tensor([[0.0, LN3]]), torch.tensor([1]), w_cls, None)
    loss = Stage1Loss(seed=0, agreement_weight=0.5, agreement_flip=True)
    assert loss.needs_flipped_view and not Stage1Loss(agreement_flip=True).needs_flipped_view
    plain = scale_agreement_loss([m1[:, 0], m2[:, 1]])
    assert loss(*args, equivariant)[1]["agree"].item() == pytest.approx(plain.item(), rel=1e-5)
    views = [other[0].maps[:, 0].flip((1, 2, 3)), other[1].maps[:, 1].flip((1, 2, 3))]
    expected = scale_agreement_loss([m1[:, 0], m2[:, 1]], teacher_views=views)
    assert loss(*args, other)[1]["agree"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() != pytest.approx(plain.item(), rel=1e-3)
    with pytest.raises(ValueError, match="flipped view"):
        loss(*args)


def test_stage1_agreement_term_reads_the_true_class_maps():
    # y = 1 selects the prototypes with zeta > 0 for class 1: scale 1's only one, scale 2's second (columns 1, 2
    # of w[1] = (0, 1)); their maps, normalised, are what the term compares
    scales, w_cls = _two_scales()
    m1 = torch.rand(1, 1, 4, 4, 4) + 0.1
    m2 = torch.stack([torch.rand(4, 4, 4), torch.rand(4, 4, 4) + 0.1])[None]
    scales = [scales[0]._replace(maps=m1), scales[1]._replace(maps=m2)]
    args = (scales, torch.tensor([[0.0, LN3]]), torch.tensor([1]), w_cls)
    total_off, parts_off = Stage1Loss(seed=0)(*args)
    total_on, parts_on = Stage1Loss(seed=0, agreement_weight=0.5)(*args)
    assert "agree" not in parts_off
    expected = scale_agreement_loss([m1[:, 0], m2[:, 1]])
    assert parts_on["agree"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert total_on.item() == pytest.approx(total_off.item() + 0.5 * expected.item(), rel=1e-5)
    _, parts_sharp = Stage1Loss(seed=0, agreement_weight=0.5, agreement_sharpness=2.0)(*args)
    sharp = scale_agreement_loss([m1[:, 0], m2[:, 1]], sharpness=2.0)
    assert parts_sharp["agree"].item() == pytest.approx(sharp.item(), rel=1e-5) and sharp.item() != expected.item()
    with pytest.raises(ValueError, match="agreement_weight"):
        Stage1Loss(agreement_weight=-1.0)
    with pytest.raises(ValueError, match="agreement_sharpness"):
        Stage1Loss(agreement_weight=0.5, agreement_sharpness=0.0)
    with pytest.raises(ValueError, match="ScaleTerms.maps"):
        Stage1Loss(agreement_weight=0.5)(_two_scales()[0], *args[1:])
    # one scale with prototypes (the single-scale baselines and ablations): nothing to agree with, no term
    one = scales[1]._replace(columns=slice(0, 2))
    _, parts_one = Stage1Loss(agreement_weight=0.5)([one], args[1], args[2], w_cls[:, 1:])
    assert "agree" not in parts_one
