"""Prototype evidence for one case: contributions (Eq. 31), per-sequence evidence, what a reader is told.

Pure tensor functions plus :func:`explain_case`, which runs a UM-ProtoShare once on a preprocessed
image and gathers what a reader is shown; :func:`to_original_space` undoes the preprocessing
(orientation, resampling, crop/pad, resize) with MONAI's inverse of the applied-operations stack, and
:func:`write_nifti` writes a volume on the grid (shape, affine, header) of an input file.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import Tensor

from scripts.calibration import Calibration, format_probability
from scripts.maps import resize_to_input
from scripts.metrics import support_reach
from scripts.networks import UMProtoShare
from scripts.prototypes import (
    SEPARATION_FLOOR,
    checked_ranking,
    class_separation,
    ranked_columns,
    reference_similarity,
    soft_class_coefficients,
)
from scripts.uncertainty import FLIP_SPREAD_CAUTION, flip_probabilities, spread_of

__all__ = [
    "DRIVING_DOMINANCE",
    "DRIVING_THRESHOLD",
    "LOW_PROBABILITY",
    "LOW_SIMILARITY_SPREAD",
    "RECHECKED",
    "SEQUENCE_NAMES",
    "CaseEvidence",
    "calibration_note",
    "confidence_warnings",
    "driving_sequence",
    "explain_case",
    "prediction_record",
    "probability_text",
    "prototype_contributions",
    "ranking_contributions",
    "ranking_first",
    "ranking_reference",
    "relative_contributions",
    "sequence_evidence",
    "sequence_mean_inputs",
    "support_note",
    "to_original_space",
    "top_columns",
    "unit_scaled",
    "write_nifti",
]

logger = logging.getLogger(__name__)

SEQUENCE_NAMES = ("T1", "T1-CE", "T2", "FLAIR")
"""Display names of the input channels, in channel order."""

DRIVING_THRESHOLD = 0.05
"""A sequence "drives" a match only when setting it to its mean lowers S by at least this much."""
DRIVING_DOMINANCE = 2.0
"""... and by at least this many times as much as any other sequence does (else no single one dominates)."""
LOW_PROBABILITY = 0.8
"""Below this top-class probability (calibrated, where the model has a calibration) the answer is flagged
low-confidence."""
LOW_SIMILARITY_SPREAD = 0.05
"""Below this standard deviation of a case's similarities over all prototypes, the prototypes cannot be
told apart on the case (the collapse of all S ≈ 1), and the answer is flagged low-confidence."""


def prototype_contributions(similarities: Tensor, classifier_weight: Tensor) -> Tensor:
    """Contribution of every prototype to every class logit, Δy_c = w_cls[c, col]·S_col (Eq. 31).

    Args:
        similarities: S(x, P), (B, K_total).
        classifier_weight: w_cls, (C, K_total) (no bias: the contributions sum over K to the logits).

    Returns:
        (B, C, K_total).
    """
    if similarities.ndim != 2 or classifier_weight.ndim != 2 or similarities.shape[1] != classifier_weight.shape[1]:
        raise ValueError(
            f"expected similarities (B, K_total) and classifier_weight (C, K_total), got "
            f"{tuple(similarities.shape)} and {tuple(classifier_weight.shape)}."
        )
    return similarities[:, None, :] * classifier_weight[None]


def relative_contributions(contributions: Tensor, classifier_weight: Tensor, reference: Tensor) -> Tensor:
    """Eq. 31's Δy relative to a case of reference similarity S̄: w_cls[c, col]·(S_col − S̄_col).

    Summed over K, the logits minus those of a case with S = S̄; for the linear classifier these are exactly
    the Shapley values of the similarities against that reference. A prototype that every case matches
    about as well as the reference (S ≈ S̄) contributes about nothing, however large its S·w.

    Args:
        contributions: Δy (:func:`prototype_contributions`), (B, C, K_total).
        classifier_weight: w_cls, (C, K_total).
        reference: S̄, (K_total,) (:func:`~scripts.prototypes.reference_similarity`).

    Returns:
        (B, C, K_total).
    """
    if contributions.ndim != 3 or contributions.shape[1:] != classifier_weight.shape or reference.shape != (
        classifier_weight.shape[1],
    ):
        raise ValueError(
            f"expected contributions (B, C, K), classifier_weight (C, K) and reference (K,), got "
            f"{tuple(contributions.shape)}, {tuple(classifier_weight.shape)} and {tuple(reference.shape)}."
        )
    return contributions - classifier_weight[None] * reference.to(contributions)[None, None]


def ranking_contributions(similarities: Tensor, classifier_weight: Tensor, reference: Tensor | None = None) -> Tensor:
    """What a batch's prototypes are ranked by, (B, C, K_total): Δy (Eq. 31), relative to S̄ when ``reference``
    is given (:func:`relative_contributions`)."""
    contributions = prototype_contributions(similarities, classifier_weight)
    return contributions if reference is None else relative_contributions(contributions, classifier_weight, reference)


def ranking_first(classifier_weight: Tensor, reference: Tensor | None = None) -> Tensor | None:
    """The prototypes ranked ahead of the others for each class, (C, K_total) bool: with a ``reference``, those
    that vote for it (w > 0, Eq. 27's K⁺: the ones its evidence map is made of), so that what a reader sees
    first are matches the case shows, not other classes' patterns it lacks; None (no precedence) without."""
    return None if reference is None else classifier_weight > 0


def ranking_reference(push_records: Sequence[Mapping[str, Any]] | None, ranking: str) -> Tensor | None:
    """S̄ to rank a model's prototypes against (:data:`~scripts.prototypes.EVIDENCE_RANKINGS`), or None: by Δy.

    ``ranking="relative"`` takes :func:`~scripts.prototypes.reference_similarity` of the push record; a record
    without class means (a push from before they were recorded, a similarity that is not a plain cosine) or
    no record leaves the ranking at Δy (Eq. 31), with a warning, and every output says which was used.
    """
    if checked_ranking(ranking) == "contribution":
        return None
    reference = None if push_records is None else reference_similarity(
        [record.get("class_similarity") for record in push_records]
    )
    if reference is None:
        logger.warning(
            "evidence_ranking 'relative' needs the push record's class means (push.json class_similarity); "
            "%s, so prototypes are ranked by their contribution (Eq. 31)",
            "there is no push record" if push_records is None else "it has none",
        )
    return reference


def sequence_mean_inputs(image: Tensor) -> Tensor:
    """One copy of ``image`` per sequence, with that sequence replaced by its mean over the volume.

    Args:
        image: (C_in, H, W, D).

    Returns:
        (C_in, C_in, H, W, D); copy i differs from ``image`` in channel i only.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C_in, H, W, D), got {tuple(image.shape)}.")
    copies = image[None].repeat(image.shape[0], *[1] * image.ndim)
    for i in range(image.shape[0]):
        copies[i, i] = image[i].mean()
    return copies


def sequence_evidence(model: UMProtoShare, image: Tensor, reference: Tensor | None = None) -> Tensor:
    """Change of every prototype's similarity when each sequence in turn is replaced by its mean.

    A negative entry means the sequence supports the match (removing it lowers S). Runs the model
    as it is (call ``eval()`` first) without gradient, on all copies in one batch.

    Args:
        model: a UM-ProtoShare.
        image: one preprocessed case, (C_in, H, W, D), on the model's device.
        reference: S(x) of ``image``, (1, K_total), when already computed (``explain``'s
            similarities); otherwise the unchanged image joins the batch.

    Returns:
        ΔS, (C_in, K_total): S(x with sequence i at its mean) − S(x).
    """
    with torch.no_grad():
        copies = sequence_mean_inputs(image)
        if reference is None:
            copies = torch.cat([image[None], copies])
        similarities = model.similarities(copies)
        if reference is None:
            reference, similarities = similarities[:1], similarities[1:]
    return similarities - reference


def driving_sequence(delta: Mapping[str, float]) -> str | None:
    """The sequence that drives a prototype's match, or None when no single sequence does.

    ``delta`` is ΔS per sequence (S with that sequence at its mean − S). The sequence with the largest
    drop drives the match only when the drop is at least :data:`DRIVING_THRESHOLD` and at least
    :data:`DRIVING_DOMINANCE` times every other sequence's drop (rises count as no drop).
    """
    drops = sorted(((-float(d), name) for name, d in delta.items()), reverse=True)
    if not drops or drops[0][0] < DRIVING_THRESHOLD:
        return None
    runner_up = max(drops[1][0], 0.0) if len(drops) > 1 else 0.0
    return drops[0][1] if drops[0][0] >= DRIVING_DOMINANCE * runner_up else None


def confidence_warnings(
    probabilities: Mapping[str, float],
    similarities: Sequence[float] | None,
    flip_spread: float | None = None,
    single_pass_class: str | None = None,
) -> list[str]:
    """Reasons to read an answer with caution: empty when the top probability, the spread of the case's
    similarities over its prototypes and, when measured, its flip spread (:func:`scripts.uncertainty.spread_of`)
    clear :data:`LOW_PROBABILITY`, :data:`LOW_SIMILARITY_SPREAD` and :data:`~scripts.uncertainty.FLIP_SPREAD_CAUTION`
    (``similarities`` None: a model without prototypes, not checked), and, for flip-averaged probabilities,
    when the image as given alone (``single_pass_class``, its logits' argmax; None: not averaged) is graded
    as the average is (the logits and the prototypes' contributions are the image's own)."""
    warnings = []
    top = max(probabilities.values())
    predicted = max(probabilities, key=probabilities.get)
    if top < LOW_PROBABILITY:
        warnings.append(f"low confidence: top probability {top:.2f} < {LOW_PROBABILITY}")
    if single_pass_class is not None and single_pass_class != predicted:
        warnings.append(
            f"the image as given is graded {single_pass_class} (its logits), the mean of its 8 mirror images {predicted}"
        )
    if flip_spread is not None and flip_spread > FLIP_SPREAD_CAUTION:
        warnings.append(
            f"unstable: the probability moves with the image's orientation (spread {flip_spread:.3f} over its 8 "
            f"mirror images > {FLIP_SPREAD_CAUTION})"
        )
    spread = math.inf if similarities is None else (
        float(np.std(np.asarray(similarities, dtype=np.float64))) if len(similarities) else 0.0
    )
    if spread < LOW_SIMILARITY_SPREAD:
        warnings.append(
            f"prototypes not distinguishable on this case: similarity spread {spread:.3f} < {LOW_SIMILARITY_SPREAD}"
        )
    return warnings


def probability_text(name: str, probability: float) -> str:
    """``p(<name>) = 0.873``, or ``p(<name>) > 0.999`` / ``< 0.001`` at the ends (never "1.00")."""
    text = format_probability(probability)
    return f"p({name}) {text}" if text[0] in "<>" else f"p({name}) = {text}"


RECHECKED = "fp32 (bf16 recheck)"
"""``precision`` of a case asked for in bf16 and run again in fp32 (its logits lay within the recheck margin)."""


def support_note(brain_in_support: float | None) -> str | None:
    """What a reader must know of the maps' reach: the share of the brain where they may show evidence, or None
    for maps over the whole volume (``prediction.json``'s ``brain_in_support``)."""
    if brain_in_support is None or math.isnan(brain_in_support):
        return None
    return (f"maps can show evidence in {100 * brain_in_support:.0f} % of the brain; not in its outer band "
            "(nor coarse cells mostly outside it), so a tumour there shows no evidence (map_support.nii.gz: where "
            "they can)")


def calibration_note(calibration: Mapping[str, Any], flip_average: bool = False, precision: str = "fp32") -> str:
    """What a reader is told about a record's ``calibration`` (and ``flip_average``, ``precision``): ``calibrated
    (T = 2.31 on 12 validation cases)`` or ``uncalibrated softmax``, then ``, mean of 8 mirror images`` when
    averaged and ``, computed in bf16`` or ``, recomputed in fp32: too close to call in bf16`` when not plain fp32."""
    mirrored = ", mean of 8 mirror images" if flip_average else ""
    mirrored += {"fp32": "", "bf16": ", computed in bf16", RECHECKED: ", recomputed in fp32: too close to call in bf16"}[
        precision
    ]
    if calibration.get("method", "none") == "none":
        return f"uncalibrated softmax{mirrored}"
    return f"calibrated (T = {calibration['temperature']:.2f} on {calibration['cases']} validation cases){mirrored}"


def unit_scaled(volume: np.ndarray | Tensor) -> tuple[np.ndarray, float]:
    """A non-negative map divided by its maximum, so that it displays on [0, 1]; returns it and that maximum.

    An all-zero map stays zero (maximum 0).
    """
    data = np.asarray(volume.detach().cpu() if isinstance(volume, Tensor) else volume, dtype=np.float32)
    peak = float(data.max()) if data.size else 0.0
    return (data / peak if peak > 0 else np.zeros_like(data)), peak


def top_columns(order: Sequence[int], columns: Sequence[tuple[int, int]], per_scale: int) -> list[int]:
    """The ``per_scale`` first columns of each scale in a ranked ``order``.

    Args:
        order: classifier columns, first first (:meth:`CaseEvidence.ranked`; pruned ones left out).
        columns: (scale, k) of each column (``model.prototype_columns``).
        per_scale: how many per scale (fewer where a scale has fewer in ``order``).

    Returns:
        Columns by scale, then in ``order``.
    """
    by_scale = {scale: [c for c in order if columns[c][0] == scale] for scale in sorted({s for s, _ in columns})}
    return [c for chosen in by_scale.values() for c in chosen[:per_scale]]


@dataclass
class CaseEvidence:
    """Everything shown for one case (CPU tensors; K = K_total, C classes)."""

    logits: Tensor
    """(C,)."""
    probabilities: Tensor
    """(C,), the calibrated probabilities: softmax of the logits / the calibration's temperature, averaged over
    the image's mirror images when ``flip_average``."""
    raw_probabilities: Tensor
    """(C,), softmax of the logits."""
    calibration: Calibration
    """The calibration applied (the identity, method "none", for an uncalibrated model)."""
    predicted: int
    """argmax of the logits."""
    similarities: Tensor
    """S, (K,)."""
    classifier_weight: Tensor
    """w_cls, (C, K)."""
    zeta: Tensor
    """ζ (Eq. 7), (C, K)."""
    contributions: Tensor
    """Δy (Eq. 31), (C, K); sums over K to the logits."""
    sequence_delta: Tensor
    """ΔS per sequence replaced by its mean, (C_in, K)."""
    maps_per_scale: list[Tensor]
    """M_s, (K_s, h_s, w_s, d_s) per prototype scale."""
    scales: list[int]
    """The prototype scales, ascending."""
    active: Tensor
    """(K,) bool: the prototypes the classifier reads (False where pruned)."""
    flip_spread: float | None = None
    """Spread of the predicted class's calibrated probability over the image's mirror images; None: not measured."""
    flip_average: bool = False
    """True: ``probabilities`` (and ``predicted``) are the mean over the image's mirror images of the calibrated
    probabilities; False: the calibrated probabilities of the image as given."""
    precision: str = "fp32"
    """What the image as given was computed in: ``fp32``, ``bf16``, or ``fp32 (bf16 recheck)`` when bf16 was
    asked for and the case fell under the network's ``bf16_recheck_margin``."""
    reference: Tensor | None = None
    """S̄, (K,): the similarity the prototypes are ranked against (:func:`ranking_reference`); None: by Δy."""
    support_reach: Tensor | None = None
    """bool (H, W, D) on the network's input grid: where every scale's maps may lie
    (:func:`scripts.metrics.support_reach`; the rest, the brain's border band and coarse cells mostly outside it,
    cannot show evidence); None: maps over the whole volume."""

    @property
    def ranking(self) -> str:
        """What the prototypes are ranked by: ``relative`` (to :attr:`reference`) or ``contribution`` (Eq. 31)."""
        return "contribution" if self.reference is None else "relative"

    @property
    def relative(self) -> Tensor | None:
        """Δy relative to S̄, (C, K) (:func:`relative_contributions`); None without a reference."""
        if self.reference is None:
            return None
        return relative_contributions(self.contributions[None], self.classifier_weight, self.reference)[0]

    @property
    def ranking_scores(self) -> Tensor:
        """(C, K): what the prototypes are ranked by, :attr:`relative` or else Δy."""
        relative = self.relative
        return self.contributions if relative is None else relative

    @property
    def ranking_first(self) -> Tensor | None:
        """(C, K) bool: the prototypes ranked ahead of the others (:func:`ranking_first`); None: none."""
        return ranking_first(self.classifier_weight, self.reference)

    def ranked(self, klass: int) -> list[int]:
        """Active columns in the order a reader is shown them for class ``klass``."""
        first = self.ranking_first
        return ranked_columns(self.ranking_scores[klass], self.active, None if first is None else first[klass])

    def prototype_map(self, scale: int, k: int, size: Sequence[int]) -> Tensor:
        """Attention map M_s^k of this case upsampled to ``size`` (the input grid), (H, W, D)."""
        return resize_to_input(self.maps_per_scale[self.scales.index(scale)][None, [k]], size)[0, 0]


def explain_case(
    model: UMProtoShare,
    image: Tensor,
    calibration: Calibration | None = None,
    flips: bool = False,
    flip_average: bool = False,
    reference: Tensor | None = None,
) -> CaseEvidence:
    """Run ``model`` (in its current mode, without gradient) on one preprocessed case and collect its evidence.

    Args:
        model: a UM-ProtoShare (call ``eval()`` first).
        image: (C_in, H, W, D), on the model's device.
        calibration: the model's calibration (``calibration.json`` beside its weights); None: uncalibrated.
        flips: also measure the flip spread (:func:`scripts.uncertainty.spread_of`: 8 more forward passes).
        flip_average: the probabilities shown (and the predicted class, whose evidence is sorted first) are the
            mean over the 8 mirror images of the calibrated probabilities (the same 8 passes).
        reference: S̄, (K_total,), to rank the prototypes against (:func:`ranking_reference`); None: by Δy.
    """
    calibration = Calibration() if calibration is None else calibration
    with torch.no_grad():
        explanation = model.explain(image[None])
        precision = "fp32" if not model.uses_autocast() else RECHECKED if model.rechecked else "bf16"
        weight = model.classifier.effective_weight.detach()
        contributions = prototype_contributions(explanation.similarities, weight)[0]
        delta = sequence_evidence(model, image, explanation.similarities)
    logits = explanation.logits[0].float().cpu()
    mirrored = flip_probabilities(model, image[None], calibration) if flips or flip_average else None
    probabilities = mirrored[0].mean(dim=0) if flip_average else calibration.apply(logits)
    predicted = int(probabilities.argmax())
    return CaseEvidence(
        logits=logits,
        probabilities=probabilities,
        raw_probabilities=torch.softmax(logits, dim=0),
        calibration=calibration,
        predicted=predicted,
        similarities=explanation.similarities[0].float().cpu(),
        classifier_weight=weight.float().cpu(),
        zeta=soft_class_coefficients(weight).float().cpu(),
        contributions=contributions.float().cpu(),
        sequence_delta=delta.float().cpu(),
        maps_per_scale=[entry.maps[0].float().cpu() for entry in explanation.per_scale],
        scales=[entry.scale for entry in explanation.per_scale],
        active=model.active_columns.cpu(),
        flip_spread=float(spread_of(mirrored, torch.tensor([predicted]))[0]) if flips else None,
        flip_average=flip_average,
        precision=precision,
        reference=None if reference is None else reference.float().cpu(),
        support_reach=None if explanation.per_scale[0].support is None else support_reach(
            [entry.support[0].cpu() for entry in explanation.per_scale], image.shape[1:]
        ),
    )


def to_original_space(maps: Tensor, image: MetaTensor, preprocessing: Compose) -> MetaTensor:
    """Bring maps on the network grid back to the input files' grid by inverting ``preprocessing``.

    The maps take a copy of ``image``'s metadata and applied-operations stack (orientation, spacing,
    crop, pad, resize), which MONAI's ``Compose.inverse`` undoes in reverse order with each
    transform's own interpolation (linear for the resampling steps).

    Args:
        maps: (N, H, W, D) on ``image``'s grid.
        image: the preprocessed case, a MetaTensor (C_in, H, W, D) carrying ``applied_operations``.
        preprocessing: the transforms that produced ``image`` (``scripts.data.preprocessing_transforms``).

    Returns:
        (N, X, Y, Z) with the affine of the input files.
    """
    if not isinstance(image, MetaTensor) or not image.applied_operations:
        raise ValueError("image must be a MetaTensor carrying the preprocessing's applied operations (uncached).")
    if tuple(maps.shape[1:]) != tuple(image.shape[1:]):
        raise ValueError(f"maps {tuple(maps.shape)} are not on the image grid {tuple(image.shape[1:])}.")
    tracked = MetaTensor(
        maps.detach().float().cpu(),
        meta=copy.deepcopy(dict(image.meta)),
        applied_operations=copy.deepcopy(image.applied_operations),
    )
    return preprocessing.inverse({"image": tracked})["image"]


def _header_like(reference: nib.spatialimages.SpatialImage) -> nib.Nifti1Header | None:
    """A float32 copy of a NIfTI-1 reference header (same qform/sform codes), or None for other formats."""
    if not isinstance(reference.header, nib.Nifti1Header) or isinstance(reference.header, nib.Nifti2Header):
        return None
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(None, None)
    return header


def write_nifti(
    volume: np.ndarray | Tensor,
    reference: str | PathLike,
    path: str | PathLike,
    description: str = "",
    display_range: tuple[float, float] | None = None,
) -> Path:
    """Write ``volume`` (X, Y, Z) as float32 NIfTI with the affine and header of the ``reference`` file.

    ``description`` goes to the header's ``descrip`` (80 bytes at most); ``display_range`` to
    ``cal_min``/``cal_max``, the window viewers such as 3D Slicer and ITK-SNAP open the volume with.

    Raises:
        ValueError: ``volume`` is not on the reference grid.
    """
    image = nib.load(str(reference))
    data = np.asarray(volume.detach().cpu() if isinstance(volume, Tensor) else volume, dtype=np.float32)
    if data.shape != tuple(image.shape[:3]):
        raise ValueError(f"volume of shape {data.shape} is not on the grid {tuple(image.shape)} of {reference}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = nib.Nifti1Image(data, image.affine, header=_header_like(image))
    written.header["descrip"] = description.encode("ascii", "replace")[:79]
    if display_range is not None:
        written.header["cal_min"], written.header["cal_max"] = display_range
    nib.save(written, str(path))
    return path


def _by_class(values: Tensor, names: Sequence[str]) -> dict[str, float]:
    return {name: float(v) for name, v in zip(names, values.tolist())}


def prediction_record(
    evidence: CaseEvidence,
    columns: Sequence[tuple[int, int]],
    class_names: Sequence[str],
    push_records: Sequence[Mapping[str, Any]] | None = None,
    details: Mapping[int, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The JSON-ready answer for one case: grade, raw logits, probabilities and every prototype's evidence.

    ``probabilities`` are calibrated (``calibration``: the temperature, method and validation cases it was
    fitted on; method "none" when the model has none) and, when ``flip_average`` is true, averaged over the
    8 mirror images; ``raw_probabilities`` the plain softmax of the image as given; the low-confidence
    warning reads ``probabilities``. ``flip_spread`` is the evidence's (None: not measured); ``precision`` what
    the image as given was computed in (``fp32``, ``bf16``, ``fp32 (bf16 recheck)``).

    Prototypes (pruned ones left out) are sorted as ``evidence_ranking`` says (:meth:`CaseEvidence.ranked`):
    those that vote for the predicted class first, each group by its contribution relative to the training
    cases' mean similarity (``relative``), or by the contribution itself (``contribution``), largest first.
    Each lists its scale, k, similarity, class weights, ζ, contribution to every class logit (Eq. 31), the
    reference similarity S̄ and the contribution relative to it (:func:`relative_contributions`; both None
    when ranked by contribution), the
    similarity change per sequence replaced by its mean (and :func:`driving_sequence`: the sequence that
    drives the match, or None), the case and class it was pushed from (``push_records``, in column
    order) with its mean S over each class's push-set cases, and ``separation`` / ``separates_classes``
    (:func:`~scripts.prototypes.class_separation` against :data:`~scripts.prototypes.SEPARATION_FLOOR`;
    None without those means): whether it matches the class it votes for better than the others.
    ``warnings`` lists :func:`confidence_warnings`.

    Args:
        evidence: from :func:`explain_case`.
        columns: (scale, k) per classifier column.
        class_names: C names in label order.
        push_records: the push provenance records (``push.json``), or None when unavailable.
        details: extra fields per column (e.g. the file of its map), merged into its entry.
    """
    if len(class_names) != evidence.logits.numel():
        raise ValueError(f"class_names {list(class_names)} do not match {evidence.logits.numel()} logits.")
    if push_records is not None and [(r["scale"], r["k"]) for r in push_records] != [tuple(c) for c in columns]:
        raise ValueError("the push records do not follow the model's prototype columns (another model's push.json?).")
    sequences = SEQUENCE_NAMES[: evidence.sequence_delta.shape[0]]
    relative = evidence.relative
    entries = []
    for column, (scale, k) in enumerate(columns):
        if not evidence.active[column]:
            continue  # pruned: no evidence
        delta = evidence.sequence_delta[:, column]
        source, separation = None, None
        if push_records is not None:
            record = push_records[column]
            source = {key: record[key] for key in ("case_id", "class_name", "similarity", "peak_voxel", "input_shape")}
            source["class_similarity"] = record.get("class_similarity")
            favoured = class_names[int(evidence.classifier_weight[:, column].argmax())]
            separation = class_separation(source["class_similarity"], favoured)
        entries.append(
            {
                "column": column,
                "scale": scale,
                "k": k,
                "similarity": float(evidence.similarities[column]),
                "class_weights": _by_class(evidence.classifier_weight[:, column], class_names),
                "zeta": _by_class(evidence.zeta[:, column], class_names),
                "contribution": _by_class(evidence.contributions[:, column], class_names),
                "reference_similarity": None if relative is None else float(evidence.reference[column]),
                "relative_contribution": None if relative is None else _by_class(relative[:, column], class_names),
                "sequence_evidence": _by_class(delta, sequences),
                "driving_sequence": driving_sequence(_by_class(delta, sequences)),
                "source": source,
                "separation": separation,
                "separates_classes": None if separation is None else separation >= SEPARATION_FLOOR,
                **dict((details or {}).get(column, {})),
            }
        )
    predicted = evidence.predicted
    rank = {column: i for i, column in enumerate(evidence.ranked(predicted))}
    entries.sort(key=lambda entry: rank[entry["column"]])
    probabilities = _by_class(evidence.probabilities, class_names)
    return {
        "predicted_class": class_names[predicted],
        "predicted_index": predicted,
        "class_names": list(class_names),
        "logits": _by_class(evidence.logits, class_names),
        "probabilities": probabilities,
        "raw_probabilities": _by_class(evidence.raw_probabilities, class_names),
        "calibration": evidence.calibration.to_dict(),
        "flip_average": evidence.flip_average,
        "flip_spread": evidence.flip_spread,
        "precision": evidence.precision,
        "warnings": confidence_warnings(
            probabilities, evidence.similarities[evidence.active].tolist(), evidence.flip_spread,
            class_names[int(evidence.logits.argmax())] if evidence.flip_average else None,
        ),
        "evidence_ranking": evidence.ranking,
        "prototypes": entries,
    }
