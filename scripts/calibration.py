"""Post-hoc calibration of image-level class probabilities by temperature scaling (Guo et al. 2017).

A network's softmax probabilities are usually over-confident. Temperature scaling divides the logits by
one scalar T > 0 fitted on held-out cases: the argmax, hence BAC, accuracy and ROC AUC, is unchanged,
only the confidence a reader is shown moves. A fold's temperature is fitted at the end of training on
the fold's validation split (never on its test fold), saved as ``calibration.json`` beside the weights,
and read back by evaluation, inference, the report and the MONAI Label app through
:meth:`Calibration.load`; a model trained before calibration existed has no such file and loads as the
identity (T = 1, method ``"none"``).

Small validation splits are often perfectly separated, where the NLL optimum is T -> 0 (sharpening
probabilities towards 0 and 1); the default fit (``prior_nll``) therefore adds a log-normal prior on T
centred on 1, which keeps T finite; Platt (1999)'s smoothed targets are the other bounded option (see
:func:`fit_temperature`). The measures of calibration are the top-label expected
calibration error (binned with MONAI's :func:`monai.metrics.calibration_binning`), the negative
log-likelihood and the Brier score. Pure PyTorch apart from matplotlib for the reliability diagram.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.metrics import CalibrationErrorMetric, calibration_binning
from torch import Tensor

__all__ = [
    "CALIBRATION_JSON",
    "CALIBRATION_METHODS",
    "ECE_BINS",
    "PRIOR_WIDTH",
    "TEMPERATURE_BOUNDS",
    "Calibration",
    "brier_score",
    "calibration_metrics",
    "calibration_targets",
    "ece_if_calibrated",
    "fit_calibration",
    "fit_temperature",
    "format_probability",
    "negative_log_likelihood",
    "plot_reliability",
    "reliability_bins",
    "top_label_ece",
]

CALIBRATION_JSON = "calibration.json"
"""File name of a fold's calibration, beside its weights."""
CALIBRATION_METHODS = ("prior_nll", "platt_targets", "nll", "none")
"""How a temperature is fitted: NLL with a log-normal prior on T centred on 1, Platt's smoothed targets,
plain NLL (one-hot targets), or not at all."""
PRIOR_WIDTH = 0.5
"""σ of ``prior_nll``'s prior ln T ~ N(0, σ²): T within a factor e^(±2σ) = e^(±1) of 1 with 95 %."""
ECE_BINS = 15
"""Equal-width confidence bins of the ECE and the reliability diagram (Guo et al. 2017 use 15)."""
TEMPERATURE_BOUNDS = (0.05, 100.0)
"""Range searched for T; an optimum on a bound is returned as that bound."""

_FITTED_METHODS = tuple(method for method in CALIBRATION_METHODS if method != "none")
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _validated_labels(labels: Tensor, num_classes: int, cases: int | None = None) -> Tensor:
    """``labels`` (N,) as CPU int64, checked against C = ``num_classes`` (and N = ``cases``), or a ValueError."""
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.ndim != 1 or (cases is not None and labels.shape[0] != cases):
        expected = "(N,)" if cases is None else f"(N,) with N = {cases}"
        raise ValueError(f"labels must be {expected}, got {tuple(labels.shape)}.")
    if num_classes < 2:
        raise ValueError(f"calibration needs C >= 2 classes, got {num_classes}.")
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError(f"labels must be class indices, got non-integer values {labels.unique().tolist()}.")
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels hold indices outside [0, {num_classes}): {labels.unique().tolist()}.")
    return labels


def _validated(scores: Tensor, labels: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """``scores`` (N, C) as CPU float64 and ``labels`` (N,) as CPU int64, checked, or a ValueError."""
    scores = torch.as_tensor(scores).detach().cpu().double()
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"{name} must be (N, C) with C >= 2 classes, got {tuple(scores.shape)}.")
    labels = _validated_labels(labels, scores.shape[1], scores.shape[0])
    if scores.shape[0] == 0:
        raise ValueError(f"{name} and labels are empty: there are no cases.")
    if not torch.isfinite(scores).all():
        raise ValueError(f"{name} holds non-finite values (NaN or inf).")
    return scores, labels


def calibration_targets(labels: Tensor, num_classes: int, method: str) -> Tensor:
    """Soft targets the temperature is fitted to.

    ``"nll"`` and ``"prior_nll"``: one-hot. ``"platt_targets"``: Platt (1999)'s rule generalised to C
    classes: a case of class c has target (N_c + 1)/(N_c + 2) on c and 1/(N_c + 2) spread evenly over the
    other C - 1 classes, N_c the number of cases of class c in ``labels``. For C = 2 these are Platt's
    t+ = (N+ + 1)/(N+ + 2) and t- = 1/(N- + 2).

    Args:
        labels: class indices, (N,).
        num_classes: C >= 2.
        method: ``"platt_targets"``, ``"nll"`` or ``"prior_nll"``.

    Returns:
        (N, C) float64, every row summing to 1.
    """
    if method not in _FITTED_METHODS:
        raise ValueError(f"unknown calibration fitting method {method!r}: expected one of {_FITTED_METHODS}.")
    labels = _validated_labels(labels, num_classes)
    one_hot = F.one_hot(labels, num_classes).double()
    if method != "platt_targets":
        return one_hot
    counts = torch.bincount(labels, minlength=num_classes).double()
    hit = (counts + 1) / (counts + 2)
    miss = 1 / ((counts + 2) * (num_classes - 1))
    return one_hot * hit[labels, None] + (1 - one_hot) * miss[labels, None]


def fit_temperature(
    logits: Tensor,
    labels: Tensor,
    method: str = "prior_nll",
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    iterations: int = 100,
    prior_width: float = PRIOR_WIDTH,
) -> float:
    """Temperature T minimising the mean soft-target cross-entropy of softmax(logits / T) (Guo et al. 2017).

    The loss -mean_n sum_c t_nc log softmax(beta z_n)_c = mean_n [logsumexp(beta z_n) - beta t_n . z_n]
    is convex in beta = 1/T, so a golden-section search over beta in [1/bounds[1], 1/bounds[0]]
    (float64, deterministic, ``iterations`` steps) finds its minimum; both ends of the range are
    candidates too, so an optimum on a bound comes back as exactly that bound.

    With ``"nll"`` (one-hot targets) on a perfectly separated validation set every increase of beta
    lowers the loss, so the optimum runs to the lower bound of T: the fit sharpens the probabilities
    towards 0 and 1, claiming a certainty a handful of cases cannot support. Platt's targets
    (:func:`calibration_targets`) are below 1, so the loss grows again once the probabilities pass
    them, and T stays finite. ``"prior_nll"`` is the maximum a posteriori T under a log-normal prior
    ln T ~ N(0, ``prior_width``²): it adds (ln T)² / (2 σ² N) to the mean NLL, so a handful of cases moves
    T only as far as they are evidence for (a separated split sharpens a little, never to the bound) and
    many cases move it as plain NLL would. The prior makes the loss non-convex in beta, so this method
    scans 401 log-spaced temperatures first and refines around the best one.

    Args:
        logits: validation logits, (N, C).
        labels: validation class indices, (N,).
        method: ``"prior_nll"``, ``"platt_targets"`` or ``"nll"``.
        bounds: (lowest, highest) T searched, 0 < lowest < highest.
        iterations: golden-section steps (each shrinks the range by 0.618).
        prior_width: σ of ``"prior_nll"``'s prior on ln T (> 0).

    Returns:
        T.
    """
    logits, labels = _validated(logits, labels, "logits")
    low, high = (float(bound) for bound in bounds)
    if not (math.isfinite(high) and 0 < low < high):
        raise ValueError(f"temperature bounds must satisfy 0 < low < high (finite), got {tuple(bounds)}.")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    targets = calibration_targets(labels, logits.shape[1], method)

    top = F.one_hot(logits.argmax(dim=1), logits.shape[1]).bool()

    if not prior_width > 0:
        raise ValueError(f"prior_width must be > 0, got {prior_width}.")
    prior = 1 / (2 * prior_width**2 * len(labels)) if method == "prior_nll" else 0.0

    def loss(beta: float) -> float:
        # log softmax as s - max - log1p(sum of the other exp(s - max)): exact where p_top -> 1, so the
        # loss of a separated set keeps falling all the way to the bound instead of flattening at 1e-16
        shifted = logits * beta
        shifted = shifted - shifted.amax(dim=1, keepdim=True)
        log_probs = shifted - shifted.exp().masked_fill(top, 0.0).sum(dim=1, keepdim=True).log1p()
        return float(-(targets * log_probs).sum(dim=1).mean()) + prior * math.log(beta) ** 2

    left, right = 1 / high, 1 / low
    if prior:  # non-convex: bracket the best of a log-spaced scan, then refine inside it
        grid = torch.logspace(math.log10(left), math.log10(right), 401, dtype=torch.float64).tolist()
        best = min(range(len(grid)), key=lambda i: loss(grid[i]))
        left, right = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    inner_left, inner_right = right - _GOLDEN * (right - left), left + _GOLDEN * (right - left)
    loss_left, loss_right = loss(inner_left), loss(inner_right)
    for _ in range(iterations):
        if loss_left <= loss_right:
            right, inner_right, loss_right = inner_right, inner_left, loss_left
            inner_left = right - _GOLDEN * (right - left)
            loss_left = loss(inner_left)
        else:
            left, inner_left, loss_left = inner_left, inner_right, loss_right
            inner_right = left + _GOLDEN * (right - left)
            loss_right = loss(inner_right)
    beta = min(((left + right) / 2, 1 / high, 1 / low), key=loss)
    return 1 / beta


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and how it was fitted; the default is the identity (uncalibrated).

    Attributes:
        temperature: T > 0; probabilities are softmax(logits / T).
        method: one of :data:`CALIBRATION_METHODS`; ``"none"`` is the identity.
        cases: validation cases it was fitted on.
        separated: every validation case was classified correctly (where the NLL optimum is T -> 0);
            None when unknown.
    """

    temperature: float = 1.0
    method: str = "none"
    cases: int = 0
    separated: bool | None = None

    def __post_init__(self) -> None:
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
            raise ValueError(f"calibration temperature must be a number, got {temperature!r}.")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"calibration temperature must be finite and > 0, got {temperature!r}.")
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}: expected one of {CALIBRATION_METHODS}.")
        if self.method == "none" and temperature != 1:
            raise ValueError(f"calibration method 'none' is the identity (T = 1), got T = {temperature!r}.")
        if isinstance(self.cases, bool) or not isinstance(self.cases, numbers.Integral) or self.cases < 0:
            raise ValueError(f"calibration cases must be an integer >= 0, got {self.cases!r}.")
        if self.separated is not None and not isinstance(self.separated, bool):
            raise ValueError(f"calibration separated must be true, false or null, got {self.separated!r}.")
        object.__setattr__(self, "temperature", float(temperature))
        object.__setattr__(self, "cases", int(self.cases))

    def apply(self, logits: Tensor) -> Tensor:
        """Calibrated probabilities softmax(logits / T) over the last dim, (..., C) -> (..., C)."""
        return torch.softmax(logits / self.temperature, dim=-1)

    def to_dict(self) -> dict:
        """JSON-ready record: temperature, method, cases, separated."""
        return asdict(self)

    @classmethod
    def from_dict(cls, record: Mapping) -> Calibration:
        """The calibration of a :meth:`to_dict` record, checked (temperature finite > 0, method known).

        ``temperature`` and ``method`` are required, ``cases`` and ``separated`` optional; other keys
        (e.g. the validation logits a fold's file also keeps) are ignored.
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"a calibration record must be a mapping, got {type(record).__name__}.")
        missing = sorted({"temperature", "method"} - set(record))
        if missing:
            raise ValueError(f"calibration record lacks {missing}.")
        return cls(**{field.name: record[field.name] for field in fields(cls) if field.name in record})

    def save(self, path: str | PathLike, extra: Mapping[str, Any] | None = None) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (a directory: its ``calibration.json``), atomically.

        ``extra`` entries (e.g. the validation logits it was fitted on) are written beside the fields;
        :meth:`from_dict` ignores them. Parent directories are created; a temporary file beside ``path``
        is renamed over it, so a reader never sees half a file.
        """
        path = Path(path)
        if path.is_dir():
            path = path / CALIBRATION_JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps({**(extra or {}), **self.to_dict()}, indent=2) + "\n")
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, location: str | PathLike) -> Calibration:
        """The calibration saved for a model; the identity when there is none.

        Args:
            location: a ``.json`` file, a directory holding ``calibration.json``, or a model file
                (e.g. ``.../model.pt``) whose directory holds one.

        Returns:
            The saved calibration, or ``Calibration()`` (identity, method ``"none"``) when the file does
            not exist, so models trained before calibration existed still load.
        """
        location = Path(location)
        if location.is_dir():
            path = location / CALIBRATION_JSON
        elif location.suffix == ".json":
            path = location
        else:
            path = location.parent / CALIBRATION_JSON
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except ValueError as error:
            raise ValueError(f"{path}: not a readable calibration file: {error}") from error


def fit_calibration(logits: Tensor, labels: Tensor, method: str = "prior_nll") -> Calibration:
    """Fit a fold's calibration on its validation logits.

    Args:
        logits: validation logits, (N, C).
        labels: validation class indices, (N,).
        method: one of :data:`CALIBRATION_METHODS`; ``"none"`` records the split but keeps T = 1.

    Returns:
        The :class:`Calibration`, with ``cases`` = N and ``separated`` = all(argmax(logits) == labels).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}: expected one of {CALIBRATION_METHODS}.")
    if torch.as_tensor(logits).numel() == 0:
        raise ValueError("calibration needs a validation split (val_fraction > 0): there are no validation logits.")
    logits, labels = _validated(logits, labels, "logits")
    separated = bool((logits.argmax(dim=1) == labels).all())
    if method == "none":
        return Calibration(cases=len(labels), separated=separated)
    temperature = fit_temperature(logits, labels, method)
    return Calibration(temperature, method, len(labels), separated)


def _top_label(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Top probability and its correctness (0/1) of every case, each (1, 1, N) as MONAI's metrics take."""
    probs, labels = _validated(probs, labels, "probs")
    confidence, prediction = probs.max(dim=1)
    return confidence.view(1, 1, -1), (prediction == labels).double().view(1, 1, -1)


def reliability_bins(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> tuple[Tensor, Tensor, Tensor]:
    """Per-bin mean top probability, accuracy and case count, bins equal-width on the top probability.

    The binning is MONAI's :func:`~monai.metrics.calibration_binning` with ``right=False``. Its
    docstring says that gives [left, right) bins, but it passes ``right`` to ``torch.bucketize`` over
    the upper edges, where ``right=False`` means left < p <= right: bins are (left, right], the first
    also holding p = 0, and the last edge is 1 + float32 eps, so p = 1 falls in the last bin. (With
    ``right=True`` a p exactly on an inner edge lands in either bin depending on float32 rounding of the
    edges, e.g. 0.3 of 10 bins in (0.3, 0.4].) Checked against MONAI 1.6.1, which works in float32.

    Args:
        probs: class probabilities, (N, C).
        labels: class indices, (N,).
        bins: number of bins.

    Returns:
        (mean confidence, accuracy, count), each (bins,); confidence and accuracy NaN in empty bins.
    """
    confidence, correct = _top_label(probs, labels)
    mean_confidence, accuracy, counts = calibration_binning(confidence, correct, num_bins=bins, right=False)
    return mean_confidence[0, 0], accuracy[0, 0], counts[0, 0].long()


def top_label_ece(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error: sum over bins of (count / N) * |mean confidence - accuracy|.

    MONAI's :class:`~monai.metrics.CalibrationErrorMetric` (``"expected"``) on the top probabilities
    and their correctness, with the (left, right] bins of :func:`reliability_bins`.

    Args:
        probs: class probabilities, (N, C).
        labels: class indices, (N,).
        bins: number of equal-width bins on [0, 1].
    """
    confidence, correct = _top_label(probs, labels)
    metric = CalibrationErrorMetric(
        num_bins=bins, calibration_reduction="expected", metric_reduction="none", right=False
    )
    return float(metric(y_pred=confidence, y=correct))


def ece_if_calibrated(probs: Tensor, bins: int = ECE_BINS) -> float:
    """The top-label ECE that perfectly calibrated probabilities would show on these N cases, in expectation.

    ECE is a sample statistic: even when every case is right with exactly its top probability p_i, the
    binned gaps |accuracy − mean confidence| are not zero on a finite set. With correctness drawn
    independently as Bernoulli(p_i), bin b's count of right answers follows the Poisson-binomial law of
    its p_i (computed exactly), so E[ECE] = Σ_b (n_b / N) · E|R_b / n_b − mean_b(p)|, with the bins of
    :func:`reliability_bins`. An ECE near this value is what calibration can reach on N cases; a target
    below it cannot be told from chance.

    Args:
        probs: class probabilities, (N, C); only the top probability of each case is used.
        bins: number of equal-width bins on [0, 1].
    """
    confidence = _validated(probs, torch.zeros(len(probs), dtype=torch.long), "probs")[0].max(dim=1).values
    edges = torch.linspace(0.0, 1.0 + torch.finfo(torch.float32).eps, bins + 1)[1:]  # calibration_binning's
    members = torch.bucketize(confidence.float(), edges, right=False)
    expected = 0.0
    for b in members.unique().tolist():
        p = confidence[members == b].double()
        law = torch.ones(1, dtype=torch.float64)  # law[k] = P(k right answers among the cases so far)
        for p_i in p:
            law = torch.cat([law * (1 - p_i), law.new_zeros(1)]) + torch.cat([law.new_zeros(1), law * p_i])
        gaps = (torch.arange(len(p) + 1, dtype=torch.float64) / len(p) - p.mean()).abs()
        expected += len(p) / len(confidence) * float((law * gaps).sum())
    return expected


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    """Mean -log p_y over cases, p_y clamped at 1e-12; probs (N, C), labels (N,)."""
    probs, labels = _validated(probs, labels, "probs")
    return float(-probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Mean over cases of sum_c (p_c - onehot_c)^2, in [0, 2]; probs (N, C), labels (N,)."""
    probs, labels = _validated(probs, labels, "probs")
    return float(((probs - F.one_hot(labels, probs.shape[1]).double()) ** 2).sum(dim=1).mean())


def calibration_metrics(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> dict[str, float]:
    """``{"ece", "nll", "brier"}`` of probs (N, C) against labels (N,)."""
    return {
        "ece": top_label_ece(probs, labels, bins),
        "nll": negative_log_likelihood(probs, labels),
        "brier": brier_score(probs, labels),
    }


def plot_reliability(
    path: str | PathLike,
    raw_probs: Tensor,
    calibrated_probs: Tensor,
    labels: Tensor,
    bins: int = ECE_BINS,
    title: str = "",
) -> Path:
    """Reliability diagram PNG: accuracy against mean confidence per bin, raw and calibrated.

    Markers sit at (mean confidence, accuracy) of each non-empty bin, their area proportional to the
    bin's case count; the diagonal is perfect calibration; the legend gives both ECEs.

    Args:
        path: the PNG.
        raw_probs: uncalibrated probabilities, (N, C).
        calibrated_probs: calibrated probabilities, (N, C).
        labels: class indices, (N,).
        bins: number of bins.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if torch.as_tensor(raw_probs).shape != torch.as_tensor(calibrated_probs).shape:
        raise ValueError(
            f"raw_probs {tuple(torch.as_tensor(raw_probs).shape)} and calibrated_probs "
            f"{tuple(torch.as_tensor(calibrated_probs).shape)} differ in shape."
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(5, 5), dpi=100)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    for name, probs, marker in (("raw", raw_probs, "o"), ("calibrated", calibrated_probs, "s")):
        confidence, accuracy, counts = (values.numpy() for values in reliability_bins(probs, labels, bins))
        filled = counts > 0
        line = axis.plot(confidence[filled], accuracy[filled], linewidth=1, alpha=0.6)[0]
        axis.scatter(
            confidence[filled],
            accuracy[filled],
            s=300 * counts[filled] / counts.sum(),
            marker=marker,
            color=line.get_color(),
            label=f"{name} (ECE = {top_label_ece(probs, labels, bins):.3f})",
        )
    axis.set(
        xlabel="mean top-class probability in bin",
        ylabel="accuracy in bin",
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        aspect="equal",
    )
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left", title=f"{bins} bins, marker area ∝ cases", fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def format_probability(p: float) -> str:
    """A probability for a reader, three decimals, never rounded to a certainty it is not.

    "> 0.999" when p would print as 1.000 (p >= 0.9995), "< 0.001" when it would print as 0.000
    (p < 0.0005), else ``f"{p:.3f}"``, e.g. 0.9994 -> "0.999", 0.99995 -> "> 0.999".
    """
    p = float(p)
    if p >= 0.9995:
        return "> 0.999"
    if p < 0.0005:
        return "< 0.001"
    return f"{p:.3f}"
