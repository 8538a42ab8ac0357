"""Evidence functions: Eq. 31 contributions, per-scale class maps (Eq. 27–28), per-sequence evidence, inversion."""

from __future__ import annotations

import dataclasses
import itertools
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from test_evidence_fixtures import CONSTRUCTED, GEOMETRY, ODD_AFFINE, ODD_SHAPE, constructed_model, write_case

from scripts.calibration import Calibration
from scripts.data import InferenceCases, preprocessing_transforms
from scripts.explain.attribution import class_map_from_maps, scale_class_maps
from scripts.explain.evidence import (
    LOW_PROBABILITY,
    CaseEvidence,
    calibration_note,
    explain_case,
    prediction_record,
    probability_text,
    prototype_contributions,
    ranking_reference,
    relative_contributions,
    sequence_evidence,
    sequence_mean_inputs,
    support_note,
    to_original_space,
    top_columns,
    write_nifti,
)
from scripts.explain.report import (
    class_means_text,
    contribution_lines,
    ranking_text,
    separation_line,
    separation_verdict,
)
from scripts.inference import EvidenceWriter
from scripts.networks import UMProtoShare
from scripts.prototypes import ranked_columns, reference_similarity


def test_eq31_contributions_hand_computed():
    similarities = torch.tensor([[0.5, -0.2, 0.8]])
    weight = torch.tensor([[2.0, 1.0, -1.0], [0.0, -3.0, 0.5]])
    expected = torch.tensor([[[1.0, -0.2, -0.8], [0.0, 0.6, 0.4]]])
    torch.testing.assert_close(prototype_contributions(similarities, weight), expected)
    # Property: with a bias-free classifier the contributions sum to the logits (0.0 and 1.0 here).
    torch.testing.assert_close(expected.sum(-1), torch.tensor([[0.0, 1.0]]))


def test_eq31_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="K_total"):
        prototype_contributions(torch.zeros(1, 3), torch.zeros(2, 4))


def test_sequence_mean_inputs_change_one_channel_each():
    image = torch.arange(2 * 3 * 1 * 1, dtype=torch.float32).reshape(2, 3, 1, 1)
    copies = sequence_mean_inputs(image)
    # channel 0 = [0, 1, 2] (mean 1), channel 1 = [3, 4, 5] (mean 4)
    torch.testing.assert_close(copies[0], torch.tensor([[1.0, 1, 1], [3, 4, 5]]).reshape(2, 3, 1, 1))
    torch.testing.assert_close(copies[1], torch.tensor([[0.0, 1, 2], [4, 4, 4]]).reshape(2, 3, 1, 1))


def test_sequence_evidence_sees_only_the_sequence_the_model_reads(tmp_path):
    item = write_case(tmp_path / "c", "c", seed=3)
    image = torch.as_tensor(preprocessing_transforms(**GEOMETRY)(item)["image"])
    delta = sequence_evidence(constructed_model(), image)
    assert delta.shape == (4, 3)
    assert torch.equal(delta[:3], torch.zeros(3, 3))  # the constructed stem never reads T1, T1-CE, T2
    assert (delta[3].abs() > 1e-3).all()  # a flat FLAIR changes every prototype's similarity


def test_sequence_evidence_reuses_a_given_reference_similarity(tmp_path):
    item = write_case(tmp_path / "c", "c", seed=3)
    image = torch.as_tensor(preprocessing_transforms(**GEOMETRY)(item)["image"])
    model = constructed_model()
    with torch.no_grad():
        reference = model.similarities(image[None])
    torch.testing.assert_close(sequence_evidence(model, image, reference), sequence_evidence(model, image))
    # the given S(x) is what is subtracted: shifting it shifts every change the other way
    torch.testing.assert_close(sequence_evidence(model, image, reference + 0.25), sequence_evidence(model, image) - 0.25)


def test_eq27_per_scale_maps_hand_computed_and_sum_to_class_map():
    model = UMProtoShare(encoder_layers=[1, 1], encoder_width=4, prototypes_per_scale=[2, 1, 0], fusion="none",
                         embed_dim=8, mapping_dim=8)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.7]]))
    scale1 = torch.zeros(1, 2, 2, 1, 1)
    scale1[0, 0, 0] = 1.0  # prototype (1, 0) on voxel 0
    scale1[0, 1, 1] = 1.0  # prototype (1, 1) on voxel 1
    scale2 = torch.full((1, 1, 2, 1, 1), 0.5)
    maps = torch.stack(scale_class_maps(model, {1: scale1, 2: scale2}, [0], (2, 1, 1)))[:, 0]
    # class 0 is supported by (1, 0) only at scale 1 and by (2, 0) at scale 2
    torch.testing.assert_close(maps[:, :, 0, 0], torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    total = class_map_from_maps(model, {1: scale1, 2: scale2}, [0], (2, 1, 1), combination="sum")
    torch.testing.assert_close(maps.sum(0), total[0])  # Eq. 28 as printed
    product = class_map_from_maps(model, {1: scale1, 2: scale2}, [0], (2, 1, 1))  # the bundle's default
    torch.testing.assert_close(product[0], maps.clamp_min(1e-12).log().sum(0).exp())


def test_ranked_columns_and_the_first_of_each_scale():
    columns = [(1, 0), (1, 1), (1, 2), (3, 0), (3, 1)]
    scores = torch.tensor([0.1, 0.9, -0.3, -0.5, -0.2])
    order = ranked_columns(scores)
    assert order == [1, 0, 4, 2, 3]
    assert top_columns(order, columns, per_scale=2) == [1, 0, 4, 3]
    assert top_columns(order, columns, per_scale=5) == [1, 0, 2, 4, 3]
    first = torch.tensor([False, False, True, True, False])  # columns 2 and 3 ahead, each group by score
    assert ranked_columns(scores, first=first) == [2, 3, 1, 0, 4]
    assert ranked_columns(scores, torch.tensor([True, False, True, True, True]), first) == [2, 3, 0, 4]
    assert ranked_columns(torch.tensor([0.5, 0.5, 0.5])) == [0, 1, 2]  # ties: lower column first


def _evidence(calibration: Calibration | None = None, active: list[bool] | None = None) -> CaseEvidence:
    weight = torch.tensor([[1.0, -1.0, 0.5], [-0.5, 2.0, 0.0]])
    active = torch.tensor([True] * 3 if active is None else active)
    weight = weight * active
    similarities = torch.tensor([0.2, 0.6, -0.4])
    contributions = prototype_contributions(similarities[None], weight)[0]
    logits = contributions.sum(1)
    calibration = Calibration() if calibration is None else calibration
    return CaseEvidence(
        logits=logits, probabilities=calibration.apply(logits), raw_probabilities=torch.softmax(logits, 0),
        calibration=calibration, predicted=int(logits.argmax()),
        similarities=similarities, classifier_weight=weight, zeta=torch.zeros(2, 3), contributions=contributions,
        sequence_delta=torch.tensor([[0.0, -0.1, 0.2], [-0.3, 0.0, 0.0], [0.1, -0.4, 0.0], [0.0, 0.0, -0.01]]),
        maps_per_scale=[torch.zeros(3, 2, 2, 2)], scales=[1], active=active,
    )


def test_prediction_record_sorted_by_predicted_class_contribution():
    record = prediction_record(_evidence(), [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"])
    # logits: LGG 0.2 - 0.6 - 0.2 = -0.6, HGG -0.1 + 1.2 + 0 = 1.1 → HGG; HGG contributions 1.2, 0, -0.1
    assert record["predicted_class"] == "HGG"
    assert [p["column"] for p in record["prototypes"]] == [1, 2, 0]
    for name in ("LGG", "HGG"):
        total = sum(p["contribution"][name] for p in record["prototypes"])
        assert total == pytest.approx(record["logits"][name], abs=1e-6)
    first = record["prototypes"][0]
    assert first["class_weights"] == {"LGG": -1.0, "HGG": 2.0}
    assert first["driving_sequence"] == "T2" and first["source"] is None


def test_prediction_record_says_which_prototypes_separate_the_classes_on_the_push_set():
    # favoured classes (argmax of each weight column): LGG, HGG, LGG
    means = [{"LGG": 0.80, "HGG": 0.40}, {"LGG": 0.71, "HGG": 0.74}, {"LGG": 0.50, "HGG": 0.60}]
    records = [
        {"scale": 1, "k": k, "case_id": f"c{k}", "class_name": "HGG", "similarity": 0.9, "peak_voxel": [0, 0, 0],
         "input_shape": [2, 2, 2], "class_similarity": m}
        for k, m in enumerate(means)
    ]
    record = prediction_record(_evidence(), [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"], records)
    by_column = {p["column"]: p for p in record["prototypes"]}
    assert [by_column[c]["separation"] for c in range(3)] == pytest.approx([0.40, 0.03, -0.10])
    assert [by_column[c]["separates_classes"] for c in range(3)] == [True, False, False]
    assert by_column[1]["source"]["class_similarity"] == {"LGG": 0.71, "HGG": 0.74}
    line = separation_line(by_column[1])
    assert line.startswith("training S: LGG 0.71, HGG 0.74") and "matches the other class as well" in line
    assert "matches" not in separation_line(by_column[0])
    assert separation_line(by_column[2]).endswith("! matches the other class better: weak evidence")
    assert [separation_verdict(by_column[c]) for c in range(3)] == [
        "yes", "NO: matches the other class as well", "NO: matches the other class better"]
    old = [{key: value for key, value in r.items() if key != "class_similarity"} for r in records]
    unknown = prediction_record(_evidence(), [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"], old)["prototypes"][0]
    assert unknown["separation"] is None and unknown["separates_classes"] is None
    assert separation_line(unknown) == "training cases: S per class not recorded" and separation_verdict(unknown) is None
    assert class_means_text(unknown) is None and class_means_text(by_column[1]) == "LGG 0.71, HGG 0.74"


RANKING_MEANS = [{"LGG": 0.5, "HGG": 0.3}, {"LGG": 0.7, "HGG": 0.6}, {"LGG": -0.2, "HGG": -0.4}]
"""Push-set class means of :func:`_evidence`'s three prototypes: S̄ = 0.4, 0.65, -0.3."""


def test_reference_similarity_weights_each_class_alike():
    torch.testing.assert_close(reference_similarity(RANKING_MEANS), torch.tensor([0.4, 0.65, -0.3], dtype=torch.float64))
    assert reference_similarity([RANKING_MEANS[0], None]) is None  # a column without means (clamped S, old push)
    assert reference_similarity([{"LGG": 0.5, "HGG": None}]) is None  # a class without cases
    assert reference_similarity([{"LGG": 0.5, "HGG": math.nan}]) is None
    assert reference_similarity([{}]) is None


def test_relative_contributions_hand_computed_sum_to_the_logits_less_the_references():
    evidence = _evidence()  # S = 0.2, 0.6, -0.4; w_LGG = 1, -1, 0.5; w_HGG = -0.5, 2, 0
    reference = reference_similarity(RANKING_MEANS)
    relative = relative_contributions(evidence.contributions[None], evidence.classifier_weight, reference)[0]
    # w·(S - S̄): S - S̄ = -0.2, -0.05, -0.1
    expected = torch.tensor([[-0.2, 0.05, -0.05], [0.1, -0.1, 0.0]])
    torch.testing.assert_close(relative, expected)
    # completeness: the logits (-0.6, 1.1) less those of a case with S = S̄ (-0.4, 1.1)
    torch.testing.assert_close(relative.sum(1), torch.tensor([-0.2, 0.0]))
    with pytest.raises(ValueError, match="reference"):
        relative_contributions(evidence.contributions[None], evidence.classifier_weight, reference[:2])


def test_prediction_record_ranks_against_the_training_mean_when_given_one():
    # four prototypes, columns 0 and 1 vote HGG, 2 and 3 LGG; column 0 matches every training case alike
    columns, names = [(1, 0), (1, 1), (1, 2), (2, 0)], ["LGG", "HGG"]
    similarities = torch.tensor([0.99, 0.8, 0.7, 0.3])
    weight = torch.tensor([[-0.5, -0.5, 1.0, 1.0], [1.0, 1.0, -0.5, -0.5]])
    means = [{"LGG": 0.98, "HGG": 0.99}, {"LGG": 0.5, "HGG": 0.9}, {"LGG": 0.9, "HGG": 0.5}, {"LGG": 0.8, "HGG": 0.4}]
    contributions = prototype_contributions(similarities[None], weight)[0]
    logits = contributions.sum(1)  # LGG 0.105, HGG 1.29
    plain = CaseEvidence(
        logits=logits, probabilities=torch.softmax(logits, 0), raw_probabilities=torch.softmax(logits, 0),
        calibration=Calibration(), predicted=1, similarities=similarities, classifier_weight=weight,
        zeta=torch.zeros(2, 4), contributions=contributions, sequence_delta=torch.zeros(4, 4),
        maps_per_scale=[torch.zeros(3, 2, 2, 2), torch.zeros(1, 1, 1, 1)], scales=[1, 2], active=torch.ones(4, dtype=torch.bool),
    )
    relative = dataclasses.replace(plain, reference=reference_similarity(means).float())  # S̄ 0.985, 0.7, 0.7, 0.6
    # Δy for HGG: 0.99, 0.8, -0.35, -0.15 ranks 0, 1, 3, 2. w·(S - S̄): 0.005, 0.1, 0, 0.15; the HGG voters first:
    # column 1 (matched more than usual) before column 0 (matched as every case is); column 3, an LGG pattern this
    # case matches less than usual, only after them
    record = prediction_record(relative, columns, names)
    assert record["evidence_ranking"] == "relative" and [p["column"] for p in record["prototypes"]] == [1, 0, 3, 2]
    first = record["prototypes"][0]
    assert first["reference_similarity"] == pytest.approx(0.7)
    assert first["relative_contribution"] == pytest.approx({"LGG": -0.05, "HGG": 0.1})
    assert first["contribution"] == pytest.approx({"LGG": -0.4, "HGG": 0.8})  # Eq. 31 is still reported
    total = sum(p["relative_contribution"]["HGG"] for p in record["prototypes"])
    assert total == pytest.approx(1.29 - (0.985 + 0.7 - 0.35 - 0.3))  # the logit less a case with S = S̄
    assert top_columns(relative.ranked(1), columns, 1) == [1, 3]
    old = prediction_record(plain, columns, names)
    assert old["evidence_ranking"] == "contribution" and [p["column"] for p in old["prototypes"]] == [0, 1, 3, 2]
    assert old["prototypes"][0]["reference_similarity"] is None and old["prototypes"][0]["relative_contribution"] is None
    assert ranking_text(record) == (
        "those voting for HGG (w > 0) first, each by its contribution to HGG relative to the training cases' mean S")
    assert ranking_text(old) == "by contribution to HGG"
    lines = contribution_lines(first)
    assert lines[lines.index("vs training mean S 0.70:") + 1] == "  LGG -0.05  HGG +0.10"
    assert not any(line.startswith("vs training mean") for line in contribution_lines(old["prototypes"][0]))


def test_ranking_reference_says_what_it_falls_back_to(caplog):
    records = [{"class_similarity": means} for means in RANKING_MEANS]
    torch.testing.assert_close(ranking_reference(records, "relative"), reference_similarity(RANKING_MEANS))
    assert ranking_reference(records, "contribution") is None
    with caplog.at_level("WARNING"):
        assert ranking_reference([{"class_similarity": None}] * 3, "relative") is None
        assert ranking_reference(None, "relative") is None
    assert "it has none" in caplog.text and "there is no push record" in caplog.text
    with pytest.raises(ValueError, match="evidence_ranking"):
        ranking_reference(records, "similarity")


def test_a_bad_evidence_ranking_is_refused_by_name_before_any_case(tmp_path):
    with pytest.raises(ValueError, match="evidence_ranking must be one of .* got 'similarity'"):
        EvidenceWriter(constructed_model(), preprocessing_transforms(**GEOMETRY), InferenceCases([], []), tmp_path,
                       ["LGG", "HGG"], evidence_ranking="similarity")
    assert not any(tmp_path.iterdir())


def test_a_pruned_prototype_is_neither_listed_nor_chosen():
    # column 1 pruned: logits LGG 0.2 - 0.2 = 0.0, HGG -0.1 + 0 = -0.1 → LGG; LGG contributions 0.2, -, -0.2
    evidence = _evidence(active=[True, False, True])
    record = prediction_record(evidence, [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"])
    assert record["predicted_class"] == "LGG"
    assert [p["column"] for p in record["prototypes"]] == [0, 2]
    assert evidence.ranked(0) == [0, 2] and top_columns(evidence.ranked(0), [(1, 0), (1, 1), (1, 2)], 3) == [0, 2]
    assert ranked_columns(evidence.contributions[0]) == [0, 1, 2]


def test_the_banner_reads_the_calibrated_probability():
    # logits LGG -0.6, HGG 1.1: raw p(HGG) = σ(1.7) = 0.8455 clears 0.8; with T = 2, σ(0.85) = 0.7006 does not
    raw = prediction_record(_evidence(), [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"])
    assert raw["probabilities"]["HGG"] == pytest.approx(0.8455, abs=1e-4) and not raw["warnings"]
    assert raw["calibration"]["method"] == "none" and raw["raw_probabilities"] == raw["probabilities"]
    calibration = Calibration(temperature=2.0, method="platt_targets", cases=12, separated=True)
    calibrated = prediction_record(_evidence(calibration), [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"])
    assert calibrated["probabilities"]["HGG"] == pytest.approx(0.7006, abs=1e-4)
    assert calibrated["raw_probabilities"] == raw["probabilities"] and calibrated["logits"] == raw["logits"]
    assert calibrated["calibration"] == calibration.to_dict()
    assert calibrated["predicted_class"] == "HGG" and calibrated["warnings"] == [
        f"low confidence: top probability 0.70 < {LOW_PROBABILITY}"
    ]
    assert calibration_note(calibrated["calibration"]) == "calibrated (T = 2.00 on 12 validation cases)"
    assert calibration_note(raw["calibration"]) == "uncalibrated softmax"
    assert calibration_note(calibrated["calibration"], flip_average=True) == (
        "calibrated (T = 2.00 on 12 validation cases), mean of 8 mirror images"
    )
    assert calibration_note(raw["calibration"], precision="fp32 (bf16 recheck)") == (
        "uncalibrated softmax, recomputed in fp32: too close to call in bf16"
    )
    assert calibration_note(raw["calibration"], precision="bf16") == "uncalibrated softmax, computed in bf16"


def test_the_banner_says_when_the_mirror_images_mean_grades_otherwise_than_the_image_as_given():
    # logits LGG -0.6, HGG 1.1 (the image as given: HGG); a flip average that favours LGG
    base = _evidence()
    averaged = dataclasses.replace(base, probabilities=torch.tensor([0.55, 0.45]), predicted=0, flip_average=True)
    record = prediction_record(averaged, [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"])
    assert record["predicted_class"] == "LGG" and record["flip_average"] is True
    assert "the image as given is graded HGG (its logits), the mean of its 8 mirror images LGG" in record["warnings"]
    agreeing = dataclasses.replace(base, probabilities=torch.tensor([0.05, 0.95]), flip_average=True)
    assert prediction_record(agreeing, [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"])["warnings"] == []
    single = dataclasses.replace(base, probabilities=torch.tensor([0.55, 0.45]), predicted=0)  # not averaged
    assert not any("image as given" in w for w in prediction_record(single, [(1, 0), (1, 1), (1, 2)],
                                                                     ["LGG", "HGG"])["warnings"])


@pytest.mark.parametrize(
    ("probability", "text"),
    [(0.99995, "p(HGG) > 0.999"), (0.9994, "p(HGG) = 0.999"), (0.0004, "p(HGG) < 0.001"), (0.5, "p(HGG) = 0.500")],
)
def test_probabilities_are_printed_with_honest_precision(probability, text):
    assert probability_text("HGG", probability) == text


def test_prediction_record_rejects_push_of_another_model():
    records = [{"scale": 1, "k": k, "case_id": "x", "class_name": "LGG", "similarity": 1.0, "peak_voxel": [0, 0, 0],
                "input_shape": [2, 2, 2]} for k in (0, 1, 3)]
    with pytest.raises(ValueError, match="prototype columns"):
        prediction_record(_evidence(), [(1, 0), (1, 1), (1, 2)], ["LGG", "HGG"], records)


def test_maps_return_to_the_input_grid_and_land_on_the_tumour(tmp_path):
    item = write_case(tmp_path / "c", "c", seed=5)
    preprocessing = preprocessing_transforms(**GEOMETRY)
    image = preprocessing(item)["image"]
    tumour = preprocessing_transforms(with_mask=True, **GEOMETRY)({**item, "mask": item["seg"]})["mask"]
    original = to_original_space(torch.cat([tumour.as_tensor(), 1 - tumour.as_tensor()]), image, preprocessing)
    assert tuple(original.shape) == (2, *ODD_SHAPE)
    np.testing.assert_allclose(np.asarray(original.affine), ODD_AFFINE, atol=1e-5)
    labels = nib.load(item["seg"]).get_fdata() > 0
    inside = original[0].numpy() > 0.5
    dice = 2 * (inside & labels).sum() / (inside.sum() + labels.sum())
    assert dice > 0.7  # 2 mm network grid and back


def test_write_nifti_keeps_the_reference_grid_and_refuses_another(tmp_path):
    item = write_case(tmp_path / "c", "c", seed=5)
    path = write_nifti(np.ones(ODD_SHAPE), item["image"][0], tmp_path / "out.nii.gz")
    written = nib.load(str(path))
    assert written.shape == ODD_SHAPE and np.allclose(written.affine, ODD_AFFINE)
    assert written.get_fdata(dtype=np.float32).dtype == np.float32 and float(written.get_fdata().max()) == 1.0
    with pytest.raises(ValueError, match="not on the grid"):
        write_nifti(np.ones((4, 4, 4)), item["image"][0], tmp_path / "bad.nii.gz")


def test_to_original_space_needs_the_operations_stack():
    with pytest.raises(ValueError, match="applied operations"):
        to_original_space(torch.zeros(1, 2, 2, 2), torch.zeros(4, 2, 2, 2), preprocessing_transforms())


def test_explain_case_contributions_sum_to_model_logits(tmp_path):
    item = write_case(tmp_path / "c", "c", seed=3)
    image = torch.as_tensor(preprocessing_transforms(**GEOMETRY)(item)["image"])
    model = constructed_model()
    evidence = explain_case(model, image)
    with torch.no_grad():
        logits = model(image[None])[0]
    torch.testing.assert_close(evidence.contributions.sum(1), logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(evidence.logits, logits)
    assert evidence.predicted == int(logits.argmax())


def test_explain_case_flip_average_shows_the_mirror_images_mean_and_predicts_its_argmax(tmp_path):
    item = write_case(tmp_path / "c", "c", seed=3)
    image = torch.as_tensor(preprocessing_transforms(**GEOMETRY)(item)["image"])
    torch.manual_seed(1)
    model = UMProtoShare(**CONSTRUCTED).eval()  # random convolutions: not flip-invariant
    calibration = Calibration(temperature=0.25, method="nll", cases=12)
    mirrors = [image[None].flip(axes) for n in range(4) for axes in itertools.combinations((2, 3, 4), n)]
    with torch.no_grad():
        per_mirror = torch.stack([torch.softmax(model(m)[0] / 0.25, 0) for m in mirrors])
    assert float(per_mirror[:, 1].std()) > 1e-3 and float((per_mirror.mean(0) - per_mirror[0]).abs().max()) > 1e-5
    evidence = explain_case(model, image, calibration, flips=True, flip_average=True)
    torch.testing.assert_close(evidence.probabilities, per_mirror.mean(0), rtol=0, atol=1e-6)
    assert evidence.predicted == int(per_mirror.mean(0).argmax()) and evidence.flip_average
    predicted = evidence.predicted
    assert evidence.flip_spread == pytest.approx(float(per_mirror[:, predicted].std(unbiased=False)), abs=1e-6)
    single = explain_case(model, image, calibration, flips=True)
    torch.testing.assert_close(single.probabilities, per_mirror[0], rtol=0, atol=1e-6)
    assert single.flip_spread == pytest.approx(evidence.flip_spread, abs=1e-6) and not single.flip_average
    record = prediction_record(evidence, [(1, k) for k in range(3)], ["LGG", "HGG"])
    assert record["flip_average"] is True
    assert record["probabilities"]["HGG"] == pytest.approx(float(per_mirror.mean(0)[1]), abs=1e-6)


@pytest.mark.parametrize(
    "support, margin, expected",
    [("volume", 0, None), ("brain", 0, 16**3 - 8), ("brain", 2, 12**3 - 8)],
)
def test_the_evidence_knows_where_its_maps_can_reach(support, margin, expected):
    # brain: the box [4, 20)^3 of a 24^3 image, aligned with the 2-voxel cells of scale 1's 12^3 grid. Without
    # a band, cells 2..9 hold it exactly; resized back (trilinear), a voxel of the box's first or last layer
    # reads 0.75 along that axis, so every box voxel but its 8 corners (0.75^3 < 0.5) is reached. Less 2 voxels,
    # [6, 18): cells 3..8, 12^3 voxels less 8 corners. Whole volume: None, and no note on the pages.
    torch.manual_seed(1)
    model = UMProtoShare(**{**CONSTRUCTED, "map_support": support, "map_support_margin": margin}).eval()
    image = torch.zeros(4, 24, 24, 24)
    image[:, 4:20, 4:20, 4:20] = 1.0 + torch.rand(4, 16, 16, 16, generator=torch.Generator().manual_seed(2))
    evidence = explain_case(model, image)
    assert [tuple(m.shape[1:]) for m in evidence.maps_per_scale] == [(12, 12, 12)]
    if expected is None:
        assert evidence.support_reach is None and support_note(None) is None
        return
    reach = evidence.support_reach
    assert int(reach.sum()) == expected and not reach[:4].any() and not reach[20:].any()
    cells = evidence.maps_per_scale[0]  # (3, 12, 12, 12): zero on every cell outside the support, not inside it
    first, last = (4 + margin) // 2, (20 - margin) // 2
    assert not cells[:, :first].any() and not cells[:, last:].any() and cells[:, first:last].any()
    assert f"in {100 * expected / 16**3:.0f} % of the brain" in support_note(expected / 16**3)


def test_the_record_says_what_the_case_was_computed_in(tmp_path):
    from scripts.networks import set_precision

    item = write_case(tmp_path / "c", "c", seed=3)
    image = torch.as_tensor(preprocessing_transforms(**GEOMETRY)(item)["image"])
    torch.manual_seed(1)
    model = UMProtoShare(**CONSTRUCTED).eval()
    seen = {}
    for name, precision, margin in (("fp32", "fp32", 2.0), ("alone", "bf16", 0.0), ("recheck", "bf16", math.inf)):
        evidence = explain_case(set_precision(model, precision, recheck_margin=margin), image)
        seen[name] = (evidence.precision, evidence.logits)
    assert [seen[name][0] for name in seen] == ["fp32", "bf16", "fp32 (bf16 recheck)"]
    assert torch.equal(seen["recheck"][1], seen["fp32"][1]) and not torch.equal(seen["alone"][1], seen["fp32"][1])
    record = prediction_record(explain_case(model, image), [(1, k) for k in range(3)], ["LGG", "HGG"])
    assert record["precision"] == "fp32 (bf16 recheck)"
