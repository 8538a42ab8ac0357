"""Prototype-level read-outs of a fold on planted cases: top prototypes' peaks, source classes, Eq. 28 AP, and
that the evaluation maps the ground-truth class."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scripts.data.foreground import brain_mask
from scripts.evaluate import predict_fold
from scripts.evaluate.prototypes import (
    PEAK_KEYS,
    fold_readouts,
    peak_shares,
    prototype_peaks,
    separating_share,
    source_agreement,
    support_warning,
    top_prototype_columns,
)
from scripts.explain.evidence import prototype_contributions, ranking_contributions
from scripts.metrics import activation_precision
from scripts.networks import UMProtoShare
from scripts.prototypes import class_separation

GRID = (8, 8, 8)
COLUMNS = [(1, k) for k in range(5)] + [(2, k) for k in range(3)]
"""Five prototypes at scale 1 (maps on the input grid), three at scale 2 (maps on a 4³ grid)."""


def planted_case() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps, similarities, weights, input image and tumour mask of one case whose peaks are known voxels.

    Brain: the box [1, 7)³ (where the image is non-zero); tumour: [2, 4)³. Contributions to class 1
    (S · w): columns 0..7 give 0.9, -0.8, 0.5, 0.4, 0.3, 0.7, 0.6, 0.1, so the top 6 are 0, 5, 6, 2, 3, 4;
    column 1 (large S, weights for class 0) and column 7 (small S) are left out, both peaking in the tumour.
    Peaks of the top 6: column 0 at (0, 0, 0) and column 6 at (7, 7, 7) (coarse voxel (3, 3, 3), the
    edge, upsamples to 1.0 at the last fine voxel) outside the brain; column 5 at (2, 2, 2) (coarse (1, 1, 1)
    upsamples to 0.75 on the block 2..3, first voxel in C order) and column 2 at (3, 3, 3) in the tumour;
    columns 3 and 4 at (5, 5, 5) and (1, 6, 1) in the brain outside the tumour.
    """
    fine, coarse = torch.zeros(5, *GRID), torch.zeros(3, 4, 4, 4)
    for k, voxel in enumerate([(0, 0, 0), (2, 3, 2), (3, 3, 3), (5, 5, 5), (1, 6, 1)]):
        fine[(k, *voxel)] = 1.0
    for k, voxel in enumerate([(1, 1, 1), (3, 3, 3), (1, 1, 1)]):
        coarse[(k, *voxel)] = 1.0
    similarities = torch.tensor([[0.9, 0.8, 0.5, 0.4, 0.3, 0.7, 0.6, 0.1]])
    weight = torch.stack([-torch.ones(8), torch.ones(8)])
    weight[:, 1] = torch.tensor([1.0, -1.0])
    image = torch.zeros(4, *GRID)
    image[2, 1:7, 1:7, 1:7] = 0.5
    tumour = torch.zeros(GRID, dtype=torch.bool)
    tumour[2:4, 2:4, 2:4] = True
    return [fine, coarse], similarities, weight, image, tumour


def test_top_six_peaks_of_a_planted_case_give_the_hand_counted_shares():
    maps, similarities, weight, image, tumour = planted_case()
    contributions = prototype_contributions(similarities, weight)[0, 1]
    chosen = top_prototype_columns(contributions, 6)
    assert chosen == [0, 5, 6, 2, 3, 4]
    peaks = prototype_peaks(maps, COLUMNS, chosen, GRID)
    assert peaks == [[0, 0, 0], [2, 2, 2], [7, 7, 7], [3, 3, 3], [5, 5, 5], [1, 6, 1]]
    shares = peak_shares(peaks, brain_mask(image), tumour)
    assert shares["topk_peak_in_brain"] == 4 / 6 and shares["topk_peak_in_tumour"] == 2 / 6
    # nearest tumour voxels: (2,2,2) for (0,0,0): √12; (3,3,3) for (7,7,7): √48 and for (5,5,5): √12;
    # (2,3,2) for (1,6,1): √11; the two peaks inside: 0
    assert shares["topk_peak_tumour_distance"] == pytest.approx((8 * math.sqrt(3) + math.sqrt(11)) / 6)
    # the prediction's class decides the ranking: for class 0 the top 2 are columns 1 and 7, both in the tumour
    other = top_prototype_columns(prototype_contributions(similarities, weight)[0, 0], 2)
    assert other == [1, 7]
    assert peak_shares(prototype_peaks(maps, COLUMNS, other, GRID), brain_mask(image), tumour) == {
        "topk_peak_in_brain": 1.0, "topk_peak_in_tumour": 1.0, "topk_peak_tumour_distance": 0.0
    }
    without = peak_shares(peaks, brain_mask(image))
    assert math.isnan(without["topk_peak_in_tumour"]) and math.isnan(without["topk_peak_tumour_distance"])
    empty = peak_shares(peaks, brain_mask(image), torch.zeros(GRID, dtype=torch.bool))
    assert empty["topk_peak_in_tumour"] == 0.0 and math.isnan(empty["topk_peak_tumour_distance"])


def test_ranked_against_a_reference_the_planted_top_six_change_as_hand_computed():
    maps, similarities, weight, image, tumour = planted_case()
    reference = torch.zeros(8)
    reference[0] = 0.9  # the training cases match column 0 as well as this case does: it adds nothing for class 1
    chosen = top_prototype_columns(ranking_contributions(similarities, weight, reference)[0, 1], 6)
    assert chosen == [5, 6, 2, 3, 4, 7]  # w·(S − S̄) = 0.7, 0.6, 0.5, 0.4, 0.3, 0.1; column 0 falls to 0
    shares = peak_shares(prototype_peaks(maps, COLUMNS, chosen, GRID), brain_mask(image), tumour)
    assert shares["topk_peak_in_brain"] == 5 / 6 and shares["topk_peak_in_tumour"] == 3 / 6  # column 7 in the tumour
    torch.testing.assert_close(ranking_contributions(similarities, weight), prototype_contributions(similarities, weight))


def test_source_agreement_on_a_constructed_push_record():
    names = ["LGG", "HGG"]
    weight = torch.tensor([[0.9, -0.5, 0.2, -1.0], [-0.5, 0.7, 0.3, 2.0]])  # favoured: LGG, HGG, HGG, HGG
    labels = [0, 0, 1, 0]  # pushed from: LGG, LGG, HGG, LGG
    records = [{"column": c, "scale": 3, "k": c, "case_id": f"case{c}", "label": y} for c, y in enumerate(labels)]
    rows = source_agreement(records, weight, names)
    assert [r["agrees"] for r in rows] == [True, False, True, False]
    assert [(r["source_class"], r["favoured_class"]) for r in rows][1] == ("LGG", "HGG")
    assert rows[3]["source_case"] == "case3"
    with pytest.raises(ValueError, match="4 push records"):
        source_agreement(records, weight[:, :3], names)
    assert [r["separates"] for r in rows] == [None] * 4  # a record without class means
    assert fold_readouts(torch.zeros(1), {k: torch.zeros(1) for k in PEAK_KEYS}, torch.ones(1, dtype=torch.bool), 6,
                         rows)["prototype_separates"] is None


def test_class_separation_hand_computed():
    assert class_separation({"LGG": 0.9, "HGG": 0.6}, "LGG") == pytest.approx(0.3)
    assert class_separation({"LGG": 0.9, "HGG": 0.6}, "HGG") == pytest.approx(-0.3)
    assert class_separation({"a": 0.5, "b": 0.7, "c": 0.2}, "b") == pytest.approx(0.2)  # against the best other
    assert class_separation({"LGG": None, "HGG": 0.6}, "HGG") is None
    assert class_separation(None, "HGG") is None
    with pytest.raises(ValueError, match="favoured class 'WHO4'"):
        class_separation({"LGG": 0.9, "HGG": 0.6}, "WHO4")


def test_share_of_prototypes_that_separate_the_classes():
    names = ["LGG", "HGG"]
    weight = torch.tensor([[0.9, -0.5, 0.2], [-0.5, 0.7, 0.3]])  # favoured: LGG, HGG, HGG
    means = [{"LGG": 0.9, "HGG": 0.5}, {"LGG": 0.6, "HGG": 0.63}, {"LGG": 0.2, "HGG": 0.8}]
    records = [{"column": c, "scale": 1, "k": c, "case_id": "x", "label": 0, "class_similarity": m}
               for c, m in enumerate(means)]
    rows = source_agreement(records, weight, names)
    assert [r["separation"] for r in rows] == pytest.approx([0.4, 0.03, 0.6])
    assert [r["separates"] for r in rows] == [True, False, True]
    readouts = fold_readouts(torch.zeros(2), {k: torch.zeros(2) for k in PEAK_KEYS}, torch.ones(2, dtype=torch.bool),
                             6, rows)
    assert readouts["prototype_separates"] == pytest.approx(2 / 3)
    active = source_agreement(records, weight, names, active=torch.tensor([True, False, True]))
    assert fold_readouts(torch.zeros(1), {k: torch.zeros(1) for k in PEAK_KEYS}, torch.ones(1, dtype=torch.bool), 6,
                         active)["prototype_separates"] == 1.0
    shares = separating_share([[0, 1], [2, 0, 1], [1]], rows)  # columns 0 and 2 separate, 1 does not
    assert shares.tolist() == pytest.approx([0.5, 2 / 3, 0.0])
    readouts = fold_readouts(torch.zeros(3), {k: torch.zeros(3) for k in PEAK_KEYS}, torch.tensor([True, False, True]),
                             6, rows, shares)
    assert readouts["topk_separating"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert readouts["topk_separating_correct"] == pytest.approx(0.25)
    assert separating_share([[0]], None) is None
    assert separating_share([[0]], [{**rows[0], "separates": None}]) is None  # a push record without class means


def shared_model() -> UMProtoShare:
    """One prototype scale (3) with two shared prototypes: ζ of class 0 supports column 0 only, class 1 column 1."""
    torch.manual_seed(0)
    model = UMProtoShare(encoder_layers=(1, 1), encoder_width=8, embed_dim=16, mapping_dim=12,
                         prototypes_per_scale=(0, 0, 2), fusion="none").eval()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    return model


def test_evaluation_maps_the_ground_truth_class_and_reads_eq28_and_peaks():
    model = shared_model()
    generator = torch.Generator().manual_seed(5)
    images = torch.randn(2, 4, 32, 32, 24, generator=generator)
    images[:, :, :3] = images[:, :, :3].amin()  # background slab: some voxels lie outside the brain
    masks = torch.zeros(2, 1, 32, 32, 24)
    masks[:, :, 8:20, 10:22, 6:16] = 1
    labels = torch.tensor([0, 1])
    batch = {"image": images, "label": labels, "case_id": ["a", "b"], "mask": masks}
    result = predict_fold(model, [batch], "cpu", scale_combination="product", brain_only=False, top_prototypes=1)
    with torch.no_grad():
        explanation = model.explain(images)
    maps = explanation.per_scale[0].maps  # (2, 2, h, w, d)
    upsampled = F.interpolate(maps, size=(32, 32, 24), mode="trilinear", align_corners=False)
    for i, label in enumerate(labels.tolist()):
        # one supporting prototype per class: the class map is that prototype's map, upsampled
        torch.testing.assert_close(result.maps[i], upsampled[i, label])
        assert not torch.allclose(upsampled[i, label], upsampled[i, 1 - label], rtol=1e-3, atol=0)
        # Eq. 28 over one scale, whole volume: the same map
        assert result.ap_eq28[i] == activation_precision(upsampled[i, label], masks[i])
        # top-1 prototype: the larger contribution to the predicted class (S_k · w_{c,k})
        predicted = int(result.probs[i].argmax())
        column = int((explanation.similarities[i] * model.classifier.weight[predicted]).argmax())
        flat = int(upsampled[i, column].argmax())
        peak = torch.unravel_index(torch.tensor(flat), (32, 32, 24))
        brain = (images[i] > images[i].amin()).any(0)
        assert result.peaks["topk_peak_in_brain"][i] == float(brain[peak])
        assert result.peaks["topk_peak_in_tumour"][i] == float(masks[i, 0][peak] > 0)
        tumour = masks[i, 0].nonzero().double()
        nearest = float(((tumour - torch.stack(peak).double()) ** 2).sum(dim=1).min().sqrt())
        assert result.peaks["topk_peak_tumour_distance"][i] == pytest.approx(nearest)
        assert result.top_columns[i] == [column]


@pytest.mark.parametrize(
    "support, margin, cells, expected",
    [
        ("volume", 0, "any", 1.0),
        ("brain", 0, "any", 0.75),  # cells from x = 8 on: x 8..19 of the tumour's 4..19
        ("brain", 5, "any", 0.75),  # brain from x = 13: cell 8..15 still touches it
        ("brain", 5, "majority", 0.25),  # ... but holds 3 of 8 brain voxels: only x 16..19
    ],
)
def test_evaluation_reads_the_share_of_the_tumour_inside_every_scales_map_support(support, margin, cells, expected):
    # brain: x >= 8 of a 32 x 32 x 24 input (background slab x < 8); the scale-3 grid is 4 x 4 x 3, cells of 8
    # voxels, and resized back a cell's support reads >= 0.5 from its own first voxel on. Tumour: x 4..19.
    torch.manual_seed(0)
    model = UMProtoShare(encoder_layers=(1, 1), encoder_width=8, embed_dim=16, mapping_dim=12,
                         prototypes_per_scale=(0, 0, 2), fusion="none", map_support=support,
                         map_support_margin=margin, map_support_cells=cells).eval()
    images = torch.randn(1, 4, 32, 32, 24, generator=torch.Generator().manual_seed(3))
    images[:, :, :8] = images.amin() - 1
    masks = torch.zeros(1, 1, 32, 32, 24)
    masks[:, :, 4:20, 10:22, 6:16] = 1
    batch = {"image": images, "label": torch.tensor([1]), "case_id": ["a"], "mask": masks}
    result = predict_fold(model, [batch], "cpu", top_prototypes=1)
    with torch.no_grad():
        assert model.explain(images).per_scale[0].maps.shape[2:] == (4, 4, 3)
    assert result.tumour_in_support.tolist() == [expected]


def test_a_fold_whose_tumours_lie_outside_the_maps_support_is_warned_of():
    assert support_warning(0.95, 3) is None and support_warning(0.9, 3) is None
    assert support_warning(None, 3) is None and support_warning(math.nan, 3) is None
    warning = support_warning(0.483, 3)
    assert warning.startswith("only 48 % of the held-out tumours") and "3-voxel band" in warning
    assert "--map_support_margin 1 or 0" in warning


def test_evaluation_ranks_a_classs_voters_first_by_their_contribution_relative_to_the_reference():
    model = shared_model()
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, 1.0]]))  # class 0: both vote; class 1: column 1
    images = torch.randn(4, 4, 32, 32, 24, generator=torch.Generator().manual_seed(7))
    batch = {"image": images, "label": torch.tensor([0, 1, 0, 1]), "case_id": list("abcd")}
    reference = torch.tensor([2.0, 0.0])  # beyond any S: column 0 adds less than nothing to class 0
    plain = predict_fold(model, [batch], "cpu", top_prototypes=2)
    ranked = predict_fold(model, [batch], "cpu", top_prototypes=2, reference=reference)
    with torch.no_grad():
        explanation = model.explain(images)
    for i, similarities in enumerate(explanation.similarities):
        predicted = int(explanation.logits[i].argmax())
        weight = model.classifier.weight[predicted]
        by_delta = sorted(range(2), key=lambda c: -float(similarities[c] * weight[c]))
        assert plain.top_columns[i] == by_delta
        relative = (similarities - reference) * weight
        voters = sorted([c for c in range(2) if weight[c] > 0], key=lambda c: -float(relative[c]))
        assert ranked.top_columns[i] == voters + [c for c in range(2) if c not in voters]
    assert ranked.top_columns != plain.top_columns
