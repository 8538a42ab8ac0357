"""Hand-computed checks of temperature scaling, its file, and the calibration measures (ECE, NLL, Brier)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scripts.calibration import (
    CALIBRATION_JSON,
    TEMPERATURE_BOUNDS,
    Calibration,
    brier_score,
    calibration_metrics,
    calibration_targets,
    ece_if_calibrated,
    fit_calibration,
    fit_temperature,
    format_probability,
    negative_log_likelihood,
    plot_reliability,
    reliability_bins,
    top_label_ece,
)

# ---------------------------------------------------------------- fitting the temperature


def test_fit_temperature_nll_known_optimum():
    # 4 binary cases, logits [d, 0] with d = 4, labels 0, 0, 0, 1. Every case gets p_0 = sigmoid(d / T), so
    # the NLL -(3 log p_0 + log(1 - p_0)) / 4 is least at p_0 = 3/4: d / T = logit(3/4) = ln 3, T = 4 / ln 3.
    logits = torch.tensor([[4.0, 0.0]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    assert fit_temperature(logits, labels, "nll") == pytest.approx(4 / math.log(3), abs=1e-4)  # ≈ 3.641


def _separated_set() -> tuple[torch.Tensor, torch.Tensor]:
    """2 cases per class, each with margin d = 6 toward its true class; every case classified correctly."""
    return torch.tensor([[6.0, 0.0], [6.0, 0.0], [0.0, 6.0], [0.0, 6.0]]), torch.tensor([0, 0, 1, 1])


def test_fit_temperature_platt_targets_finite_on_separated_set():
    # N_0 = N_1 = 2: the true class's target is (2 + 1) / (2 + 2) = 3/4 for every case, and every case's true
    # class has p = sigmoid(6 / T), so the optimum is sigmoid(6 / T) = 3/4: T = 6 / ln 3 ≈ 5.461.
    logits, labels = _separated_set()
    assert fit_temperature(logits, labels, "platt_targets") == pytest.approx(6 / math.log(3), abs=1e-4)


def test_fit_temperature_nll_runs_to_lower_bound_on_separated_set():
    # one-hot targets: the NLL falls for every T decrease, so the optimum is the lower bound (sharpening)
    logits, labels = _separated_set()
    assert fit_temperature(logits, labels, "nll") == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-9)
    assert fit_temperature(logits, labels, "nll", bounds=(0.5, 10.0)) == pytest.approx(0.5, rel=1e-9)


def test_fit_temperature_does_not_depend_on_logit_offset():
    # softmax is invariant to adding a constant to every class logit, so the fitted T must be too
    logits, labels = torch.tensor([[4.0, 0.0]] * 4), torch.tensor([0, 0, 0, 1])
    assert fit_temperature(logits + 7.0, labels, "nll") == pytest.approx(fit_temperature(logits, labels, "nll"))


@pytest.mark.parametrize(
    "logits, labels, kwargs, match",
    [
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), {}, "empty"),
        (torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), {}, "labels must be"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), {}, r"\(N, C\)"),
        (torch.tensor([[0.0, math.nan]]), torch.tensor([0]), {}, "non-finite"),
        (torch.tensor([[0.0, math.inf]]), torch.tensor([0]), {}, "non-finite"),
        (torch.zeros(2, 2), torch.tensor([0, 2]), {}, "outside"),
        (torch.zeros(2, 2), torch.tensor([0, -1]), {}, "outside"),
        (torch.zeros(2, 2), torch.tensor([0, 1]), {"bounds": (0.0, 1.0)}, "bounds"),
        (torch.zeros(2, 2), torch.tensor([0, 1]), {"bounds": (2.0, 1.0)}, "bounds"),
        (torch.zeros(2, 2), torch.tensor([0, 1]), {"method": "none"}, "platt_targets"),
    ],
)
def test_fit_temperature_rejects_bad_input(logits, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels, **kwargs)


def test_calibration_targets_three_classes_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    # N_0 = 3: 4/5 on class 0, the other 1/5 split over classes 1 and 2 -> 1/10 each
    # N_1 = 1: 2/3 on class 1, 1/3 split -> 1/6 each
    # N_2 = 2: 3/4 on class 2, 1/4 split -> 1/8 each
    row_0, row_1, row_2 = [4 / 5, 1 / 10, 1 / 10], [1 / 6, 2 / 3, 1 / 6], [1 / 8, 1 / 8, 3 / 4]
    expected = torch.tensor([row_0, row_0, row_0, row_1, row_2, row_2], dtype=torch.float64)
    assert torch.allclose(calibration_targets(labels, 3, "platt_targets"), expected)
    assert torch.equal(calibration_targets(labels, 3, "nll"), torch.eye(3, dtype=torch.float64)[labels])


def test_calibration_targets_binary_are_platts():
    # N+ = 3 (class 1), N- = 1 (class 0): t+ = 4/5, t- = 1/(1 + 2) = 1/3 (target on class 1 of a class-0 case)
    targets = calibration_targets(torch.tensor([1, 1, 1, 0]), 2, "platt_targets")
    assert targets[:, 1].tolist() == pytest.approx([4 / 5, 4 / 5, 4 / 5, 1 / 3])


def test_calibration_targets_unknown_method_names_allowed():
    with pytest.raises(ValueError, match="platt_targets.*nll"):
        calibration_targets(torch.tensor([0, 1]), 2, "isotonic")


def test_fit_calibration_records_cases_and_separation():
    logits, labels = _separated_set()
    fitted = fit_calibration(logits, labels, "platt_targets")
    assert (fitted.method, fitted.cases, fitted.separated) == ("platt_targets", 4, True)
    assert fitted.temperature == pytest.approx(6 / math.log(3), abs=1e-4)
    # one case wrong: not separated; method "none" keeps T = 1
    identity = fit_calibration(logits, torch.tensor([0, 1, 1, 1]), "none")
    assert (identity.temperature, identity.method, identity.cases, identity.separated) == (1.0, "none", 4, False)


def test_fit_calibration_without_validation_cases_says_so():
    with pytest.raises(ValueError, match="val_fraction"):
        fit_calibration(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_fit_calibration_rejects_unknown_method():
    with pytest.raises(ValueError, match="none"):
        fit_calibration(torch.zeros(2, 2), torch.tensor([0, 1]), "platt")


# ---------------------------------------------------------------- Calibration and its file


def test_apply_is_softmax_of_scaled_logits():
    logits = torch.tensor([[[2.0, -1.0, 0.5]], [[0.0, 3.0, 1.0]]])  # leading dims (2, 1)
    calibration = Calibration(temperature=2.5, method="nll", cases=10, separated=False)
    assert torch.allclose(calibration.apply(logits), torch.softmax(logits / 2.5, dim=-1))
    # by hand for the first case: exp(z / T) / sum exp(z / T)
    scaled = [math.exp(value / 2.5) for value in (2.0, -1.0, 0.5)]
    assert calibration.apply(logits)[0, 0].tolist() == pytest.approx([value / sum(scaled) for value in scaled])
    assert torch.allclose(Calibration().apply(logits), torch.softmax(logits, dim=-1))


def test_save_load_round_trip_through_directory_and_model_path(tmp_path):
    calibration = Calibration(temperature=1.7, method="platt_targets", cases=12, separated=True)
    written = calibration.save(tmp_path / "fold0" / CALIBRATION_JSON)
    assert written == tmp_path / "fold0" / CALIBRATION_JSON
    assert not [path for path in written.parent.iterdir() if path != written]  # no temporary file left
    assert Calibration.load(written) == calibration
    assert Calibration.load(tmp_path / "fold0") == calibration
    assert Calibration.load(tmp_path / "fold0" / "model.pt") == calibration
    # saving to a directory writes its calibration.json
    other = Calibration(temperature=0.8, method="nll", cases=3, separated=False)
    assert other.save(tmp_path / "fold0") == written
    assert Calibration.load(tmp_path / "fold0" / "model.pt") == other


def test_load_without_file_is_identity(tmp_path):
    assert Calibration.load(tmp_path / "model.pt") == Calibration(temperature=1.0, method="none")
    assert Calibration.load(tmp_path) == Calibration()
    assert Calibration.load(tmp_path).temperature == 1.0


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"temperature": -1.0, "method": "nll"}', ""])
def test_load_corrupt_file_names_it(tmp_path, text):
    path = tmp_path / CALIBRATION_JSON
    path.write_text(text)
    with pytest.raises(ValueError, match=CALIBRATION_JSON):
        Calibration.load(tmp_path / "model.pt")


@pytest.mark.parametrize(
    "record, match",
    [
        ({"temperature": 0.0, "method": "nll"}, "> 0"),
        ({"temperature": -2.0, "method": "nll"}, "> 0"),
        ({"temperature": math.nan, "method": "nll"}, "finite"),
        ({"temperature": math.inf, "method": "nll"}, "finite"),
        ({"temperature": "2.0", "method": "nll"}, "number"),
        ({"temperature": 2.0, "method": "isotonic"}, "unknown calibration method"),
        ({"temperature": 2.0, "method": "none"}, "identity"),
        ({"temperature": 2.0, "method": "nll", "cases": -1}, "cases"),
        ({"method": "nll", "tempreature": 3.0}, "lacks"),
        ({"temperature": 2.0}, "lacks"),
    ],
)
def test_from_dict_rejects_bad_records(record, match):
    with pytest.raises(ValueError, match=match):
        Calibration.from_dict(record)


def test_to_dict_from_dict_round_trip():
    calibration = Calibration(temperature=3.25, method="nll", cases=7, separated=None)
    assert calibration.to_dict() == {"temperature": 3.25, "method": "nll", "cases": 7, "separated": None}
    assert Calibration.from_dict(calibration.to_dict()) == calibration
    # extra keys (a fold's file also keeps its validation logits) are ignored; cases and separated optional
    record = {"temperature": 2, "method": "platt_targets", "validation": {"case_ids": ["a"], "logits": [[1, 0]]}}
    assert Calibration.from_dict(record) == Calibration(temperature=2.0, method="platt_targets")


def test_load_file_with_extra_keys(tmp_path):
    path = Calibration(temperature=0.9, method="nll", cases=5, separated=False).save(tmp_path / CALIBRATION_JSON)
    record = json.loads(path.read_text())
    record["validation"] = {"case_ids": ["c1"], "labels": [0], "logits": [[2.0, -1.0]]}
    path.write_text(json.dumps(record))
    assert Calibration.load(tmp_path / "model.pt") == Calibration(0.9, "nll", 5, False)


# ---------------------------------------------------------------- calibration measures

# Six binary cases, all of class 1. Top probability and correctness:
#   [0.1, 0.9]  -> 0.9  right      [0.3, 0.7]   -> 0.7  right
#   [0.0, 1.0]  -> 1.0  right      [0.65, 0.35] -> 0.65 wrong
#   [1.0, 0.0]  -> 1.0  wrong      [0.4, 0.6]   -> 0.6  right (exactly on an edge of 5 bins)
# 5 bins, (left, right]:
#   (0.8, 1.0]: 0.9, 1.0, 1.0: confidence 2.9/3, accuracy 2/3 -> gap 0.3,   weight 3/6 -> 0.15
#   (0.6, 0.8]: 0.7, 0.65:     confidence 0.675, accuracy 1/2 -> gap 0.175, weight 2/6 -> 0.058333
#   (0.4, 0.6]: 0.6:           confidence 0.6,  accuracy 1    -> gap 0.4,   weight 1/6 -> 0.066667
#   ECE = 0.15 + 0.058333 + 0.066667 = 0.275
# (Had 0.6 gone to [0.6, 0.8), that bin's gap would be |0.65 - 2/3| and the ECE 0.158333.)
ECE_PROBS = torch.tensor(
    [[0.1, 0.9], [0.0, 1.0], [1.0, 0.0], [0.3, 0.7], [0.65, 0.35], [0.4, 0.6]], dtype=torch.float64
)
ECE_LABELS = torch.ones(6, dtype=torch.long)


def _plain_ece(probs: list[list[float]], labels: list[int], bins: int) -> float:
    """Independent ECE: bin k holds top probabilities in (k/bins, (k+1)/bins], 0 in the first bin."""
    totals = [[0.0, 0.0, 0] for _ in range(bins)]  # sum of confidence, sum of correct, count
    for row, label in zip(probs, labels):
        confidence = max(row)
        index = min(max(math.ceil(round(confidence * bins, 9)) - 1, 0), bins - 1)
        totals[index][0] += confidence
        totals[index][1] += float(row.index(confidence) == label)
        totals[index][2] += 1
    return sum(abs(conf - hits) / len(labels) for conf, hits, count in totals if count)


def test_top_label_ece_hand_example():
    assert top_label_ece(ECE_PROBS, ECE_LABELS, bins=5) == pytest.approx(0.275, abs=1e-6)
    # Default 15 bins, edges k/15: 0.6 = 9/15 sits in (8/15, 9/15], alone; 0.65 in (9/15, 10/15], 0.7 in
    # (10/15, 11/15], 0.9 in (13/15, 14/15], both 1.0s in (14/15, 1]. Gaps times counts:
    #   |0.6 - 1| + |0.65 - 0| + |0.7 - 1| + |0.9 - 1| + 2 |1 - 1/2| = 0.4 + 0.65 + 0.3 + 0.1 + 1 = 2.45
    #   ECE = 2.45 / 6 = 0.408333 (MONAI's right=True would put 0.6 with 0.65 and give 1.65 / 6 = 0.275)
    assert top_label_ece(ECE_PROBS, ECE_LABELS) == pytest.approx(2.45 / 6, abs=1e-6)
    assert top_label_ece(ECE_PROBS, ECE_LABELS, bins=5) == pytest.approx(
        _plain_ece(ECE_PROBS.tolist(), ECE_LABELS.tolist(), 5), abs=1e-6
    )


@pytest.mark.parametrize("bins", [3, 7, 15])
def test_top_label_ece_matches_plain_python(bins):
    generator = torch.Generator().manual_seed(bins)
    probs = torch.softmax(3 * torch.randn(40, 3, generator=generator, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (40,), generator=generator)
    expected = _plain_ece(probs.tolist(), labels.tolist(), bins)
    assert top_label_ece(probs, labels, bins) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_hand_example():
    confidence, accuracy, counts = reliability_bins(ECE_PROBS, ECE_LABELS, bins=5)
    assert counts.tolist() == [0, 0, 1, 2, 3]  # both 1.0s in the last bin, 0.6 in (0.4, 0.6]
    assert torch.isnan(confidence[:2]).all() and torch.isnan(accuracy[:2]).all()
    assert confidence[2:].tolist() == pytest.approx([0.6, 0.675, 2.9 / 3], abs=1e-6)
    assert accuracy[2:].tolist() == pytest.approx([1.0, 0.5, 2 / 3], abs=1e-6)
    # default 15 bins: 0.6 = 9/15 in bin 8, 0.65 in 9, 0.7 in 10, 0.9 in 13, both 1.0s in 14
    counts = reliability_bins(ECE_PROBS, ECE_LABELS)[2]
    assert counts.tolist() == [0] * 8 + [1, 1, 1, 0, 0, 1, 2]


def test_ece_of_perfectly_confident_right_answers_is_zero_and_wrong_is_one():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert top_label_ece(probs, torch.tensor([0, 1])) == pytest.approx(0.0)
    assert top_label_ece(probs, torch.tensor([1, 0])) == pytest.approx(1.0)


def test_ece_if_calibrated_hand_values():
    # one case, top p 0.9, right with probability 0.9: E|R - 0.9| = 0.9 * 0.1 + 0.1 * 0.9 = 0.18
    assert ece_if_calibrated(torch.tensor([[0.1, 0.9]])) == pytest.approx(0.18)
    # two cases at 0.5 in one bin: R = 0, 1, 2 with 1/4, 1/2, 1/4; gaps 0.5, 0, 0.5 -> 0.25
    assert ece_if_calibrated(torch.tensor([[0.5, 0.5], [0.5, 0.5]])) == pytest.approx(0.25)
    # 0.9 and 0.6 in separate bins: (0.18 + 2 * 0.6 * 0.4) / 2 = 0.33
    assert ece_if_calibrated(torch.tensor([[0.9, 0.1], [0.4, 0.6]])) == pytest.approx(0.33)
    # 0.65 and 0.7 share a bin of 5, (0.6, 0.8]: gaps |R / 2 - 0.675| = 0.675, 0.175, 0.325 for R = 0, 1, 2,
    # with P = 0.35 * 0.3 = 0.105, 0.65 * 0.3 + 0.35 * 0.7 = 0.44, 0.65 * 0.7 = 0.455: 0.29575
    assert ece_if_calibrated(torch.tensor([[0.35, 0.65], [0.3, 0.7]]), bins=5) == pytest.approx(0.29575)
    # 0.6 lies on an edge and goes to the lower bin, (0.4, 0.6], apart from 0.65: (0.48 + 0.455) / 2
    assert ece_if_calibrated(torch.tensor([[0.4, 0.6], [0.35, 0.65]]), bins=5) == pytest.approx(0.4675)
    # certain answers: no sampling error at all
    assert ece_if_calibrated(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)


def test_ece_if_calibrated_is_the_mean_ece_of_labels_drawn_from_the_probabilities():
    generator = torch.Generator().manual_seed(0)
    top = 0.5 + 0.5 * torch.rand(30, generator=generator, dtype=torch.float64)
    top[:3] = torch.tensor([0.6, 0.8, 14 / 15])  # on bin edges, which reliability_bins puts in the lower bin
    probs = torch.stack([1 - top, top], dim=1)
    draws = [
        top_label_ece(probs, (torch.rand(30, generator=generator, dtype=torch.float64) < top).long())
        for _ in range(3000)
    ]
    # 3000 draws: the mean's standard error is about 0.03 / sqrt(3000) < 0.001
    assert sum(draws) / len(draws) == pytest.approx(ece_if_calibrated(probs), abs=0.004)


def test_negative_log_likelihood_and_brier_by_hand():
    probs = torch.tensor([[0.8, 0.2], [0.25, 0.75], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 0])
    # -(ln 0.8 + ln 0.75 + ln 0.5) / 3 = (0.22314 + 0.28768 + 0.69315) / 3 ≈ 0.40132
    nll = -(math.log(0.8) + math.log(0.75) + math.log(0.5)) / 3
    assert negative_log_likelihood(probs, labels) == pytest.approx(nll, rel=1e-6)
    # (0.2² + 0.2²) = 0.08, (0.25² + 0.25²) = 0.125, (0.5² + 0.5²) = 0.5 -> 0.705 / 3 = 0.235
    assert brier_score(probs, labels) == pytest.approx(0.235, rel=1e-6)
    assert calibration_metrics(probs, labels) == pytest.approx(
        {"ece": top_label_ece(probs, labels), "nll": nll, "brier": 0.235}, rel=1e-6
    )


def test_negative_log_likelihood_clamps_zero_probability():
    # p_y = 0 is clamped to 1e-12: -ln(1e-12) = 12 ln 10 ≈ 27.63, not inf
    probs = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    assert negative_log_likelihood(probs, torch.tensor([1])) == pytest.approx(12 * math.log(10))
    # and the worst Brier score: (1 - 0)² + (0 - 1)² = 2
    assert brier_score(probs, torch.tensor([1])) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "function", [top_label_ece, reliability_bins, negative_log_likelihood, brier_score, calibration_metrics]
)
def test_measures_reject_bad_shapes(function):
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        function(torch.tensor([0.2, 0.8]), torch.tensor([1]))
    with pytest.raises(ValueError, match="labels must be"):
        function(torch.tensor([[0.2, 0.8]]), torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="outside"):
        function(torch.tensor([[0.2, 0.8]]), torch.tensor([2]))


@pytest.mark.parametrize("method", ["nll", "platt_targets"])
def test_fitted_temperature_beats_a_grid_of_temperatures(method):
    # three noisy, over-confident classes: the fitted T minimises the fitting loss, so no T on a fine grid
    # (T = 1 included) does better
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=generator)
    logits = (8 * torch.nn.functional.one_hot(labels, 3) + 4 * torch.randn(60, 3, generator=generator)).double()
    targets = calibration_targets(labels, 3, method)

    def loss(temperature: float) -> float:
        scaled = logits / temperature
        return float(-(targets * (scaled - scaled.logsumexp(dim=1, keepdim=True))).sum(dim=1).mean())

    fitted = fit_temperature(logits, labels, method)
    assert TEMPERATURE_BOUNDS[0] < fitted < TEMPERATURE_BOUNDS[1]
    grid = torch.logspace(-1, 2, 301, dtype=torch.float64).tolist() + [1.0, 0.999 * fitted, 1.001 * fitted]
    assert loss(fitted) <= min(loss(temperature) for temperature in grid) + 1e-12


# ---------------------------------------------------------------- what a reader is shown


def test_plot_reliability_writes_png(tmp_path):
    calibrated = torch.softmax(torch.log(ECE_PROBS.clamp_min(1e-6)) / 2, dim=1)
    path = plot_reliability(tmp_path / "plots" / "reliability.png", ECE_PROBS, calibrated, ECE_LABELS, title="fold 0")
    assert path == tmp_path / "plots" / "reliability.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_plot_reliability_rejects_mismatched_probabilities(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        plot_reliability(tmp_path / "r.png", ECE_PROBS, ECE_PROBS[:3], ECE_LABELS)


@pytest.mark.parametrize(
    "p, text",
    [(0.99995, "> 0.999"), (0.9994, "0.999"), (0.0004, "< 0.001"), (0.5, "0.500"), (1.0, "> 0.999"), (0.0, "< 0.001")],
)
def test_format_probability(p, text):
    assert format_probability(p) == text


def test_format_probability_never_claims_certainty():
    values = torch.linspace(0, 1, 20001, dtype=torch.float64).tolist() + [0.9995, 0.99949999999, 0.0005, 0.00049999]
    for p in values:
        text = format_probability(p)
        assert not text.startswith("1.0") and text not in ("0.000", "-0.000"), (p, text)
        if not text.startswith(("<", ">")):
            assert float(text) == pytest.approx(p, abs=0.0005 + 1e-12)


def test_prior_nll_is_the_map_temperature_and_tends_to_plain_nll_with_many_cases():
    # 4 binary cases, logits (4, 0), 3 of class 0 and 1 of class 1: plain NLL's optimum is T = 4 / ln 3.
    # With the prior ln T ~ N(0, 0.5²) the MAP T minimises mean NLL + (ln T)² / (2 · 0.25 · 4), found here by
    # brute force over ln T in plain Python, independently of the golden-section code.
    logits = torch.tensor([[4.0, 0.0]] * 4)
    labels = torch.tensor([0, 0, 0, 1])

    def objective(log_t: float) -> float:
        a = 4 / math.exp(log_t)  # log p = -log(1 + e^-a), log(1 - p) = -a - log(1 + e^-a)
        return (3 * math.log1p(math.exp(-a)) + a + math.log1p(math.exp(-a))) / 4 + log_t**2 / (2 * 0.25 * 4)

    brute = math.exp(min((i / 10000 for i in range(-29000, 46000)), key=objective))
    fitted = fit_temperature(logits, labels, "prior_nll")
    assert fitted == pytest.approx(brute, rel=1e-3)
    assert 1.0 < fitted < 4 / math.log(3)  # pulled from the NLL optimum towards 1
    many = fit_temperature(logits.repeat(1000, 1), labels.repeat(1000), "prior_nll")
    assert many == pytest.approx(4 / math.log(3), rel=1e-2)
    # a separated split: plain NLL runs to the bound, the prior keeps T finite
    separated = torch.tensor([[6.0, 0.0], [6.0, 0.0], [0.0, 6.0], [0.0, 6.0]])
    t = fit_temperature(separated, torch.tensor([0, 0, 1, 1]), "prior_nll")
    assert TEMPERATURE_BOUNDS[0] < t < 1.0
    assert fit_calibration(separated, torch.tensor([0, 0, 1, 1])).method == "prior_nll"
