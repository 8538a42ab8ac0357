"""Per-equation loss terms on similarities, prototypes and classifier weights.

Eq. 7-10 and 22-23 (Section 2.3, Appendix B.2), L_cls and L_L1 (Eq. 3/21). Shapes: ``B`` batch,
``C`` classes, ``K_s`` prototypes of scale ``s``, ``K_total`` all prototypes (classifier columns
ordered by scale, then k), ``E`` embedding size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import look_up_option

from scripts.prototypes import ZETA_EPS, soft_ownership

__all__ = [
    "CLASSIFICATION_LOSSES",
    "CLUSTERING_FORMS",
    "classification_loss",
    "clustering_loss_class_specific",
    "clustering_loss_shared",
    "clustering_loss_shared_max",
    "clustering_loss_shared_mean",
    "diversity_loss",
    "forget_loss",
    "inverse_frequency_weights",
    "l1_regularisation",
    "separation_loss_class_specific",
    "separation_loss_shared",
    "separation_loss_shared_max",
    "separation_loss_shared_mean",
]

CLASSIFICATION_LOSSES = ("cross_entropy", "focal")


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    kind: str = "cross_entropy",
    class_weights: torch.Tensor | Sequence[float] | None = None,
    gamma: float = 2.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Classification loss L_cls, a term of Eq. 1/19 and Eq. 3/21.

    ``"cross_entropy"`` is the paper's loss; with ``label_smoothing`` ε > 0 its target is
    ``(1 - ε) one_hot + ε / C`` (Szegedy et al. 2016; ``torch.nn.functional.cross_entropy``), which
    stops the logits growing without bound on separable training data. ``"focal"`` is MProtoNet's option: per sample
    ``-(1 - p_y)^gamma log p_y`` with softmax probabilities, reduced as a class-weighted mean
    ``sum_b w[y_b] l_b / sum_b w[y_b]`` (MProtoNet uses ``w = 1/n_class``, see
    :func:`inverse_frequency_weights`). MONAI's ``FocalLoss(use_softmax=True)`` averages over
    ``B * C`` one-hot entries and does not renormalise by the weights, so it is not used here.

    Args:
        logits: class scores `(B, C)`.
        labels: class indices `(B,)`.
        kind: ``"cross_entropy"`` or ``"focal"``.
        class_weights: optional per-class weights `(C,)`, used by both kinds.
        gamma: focusing exponent of the focal loss.
        label_smoothing: ε in [0, 1) for ``"cross_entropy"``; must be 0 with ``"focal"``.
    """
    kind = look_up_option(kind, CLASSIFICATION_LOSSES)
    if not 0.0 <= label_smoothing < 1.0 or (kind == "focal" and label_smoothing):
        raise ValueError(
            f"label_smoothing must lie in [0, 1) and be 0 with the focal loss, got {label_smoothing} ({kind})."
        )
    weight = None
    if class_weights is not None:
        weight = torch.as_tensor(class_weights, dtype=logits.dtype, device=logits.device)
    if kind == "cross_entropy":
        return F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)
    log_prob = F.log_softmax(logits, dim=1)
    return F.nll_loss((1.0 - log_prob.exp()) ** gamma * log_prob, labels, weight=weight)


def inverse_frequency_weights(labels: torch.Tensor | Sequence[int], num_classes: int) -> torch.Tensor:
    """Per-class weights ``1 / n_class`` counted from training labels `(N,)` -> `(C,)`."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    if counts.numel() != num_classes or (counts == 0).any():
        raise ValueError(f"each of the {num_classes} classes needs a label, got counts {counts.tolist()}.")
    return (1.0 / counts).float()


def _check_labels(similarities: torch.Tensor, labels: torch.Tensor) -> None:
    if similarities.ndim != 2 or labels.shape != similarities.shape[:1]:
        raise ValueError(
            f"expected similarities (B, K_total) and labels (B,), "
            f"got {tuple(similarities.shape)} and {tuple(labels.shape)}."
        )


def _other_class_weights(zeta: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``sum_{c' != y} zeta[c', p]`` per case, `(B, K_total)`."""
    return zeta.sum(dim=0, keepdim=True) - zeta[labels]


def _weighted_similarity(similarities: torch.Tensor, weights: torch.Tensor, normalise: bool = False) -> torch.Tensor:
    """Batch mean of ``sum_p weights[b, p] S[b, p]``, divided per case by ``sum_p weights[b, p] + eps`` if ``normalise``."""
    total = (weights * similarities).sum(dim=1)
    return (total / (weights.sum(dim=1) + ZETA_EPS) if normalise else total).mean()


def clustering_loss_shared(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """Class-agnostic clustering loss (Eq. 8), averaged over the batch.

    ``-sum_p zeta[y, p] S(x, p)``.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        zeta: soft coefficients `(C, K_total)` from :func:`scripts.prototypes.soft_class_coefficients`.
    """
    _check_labels(similarities, labels)
    return -_weighted_similarity(similarities, zeta[labels])


def separation_loss_shared(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """Class-agnostic separation loss (Eq. 9), averaged over the batch; enters Eq. 1 with a + sign.

    ``sum_p (sum_{c' != y} zeta[c', p]) S(x, p)``.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        zeta: soft coefficients `(C, K_total)`.
    """
    _check_labels(similarities, labels)
    return _weighted_similarity(similarities, _other_class_weights(zeta, labels))


def clustering_loss_shared_mean(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """ζ-normalised class-agnostic clustering loss (Eq. 8 divided by its weights), batch mean.

    ``-sum_p zeta[y, p] S(x, p) / (sum_p zeta[y, p] + eps)``: a ζ-weighted mean similarity, so that the
    term's size does not grow with the number of prototypes. A case whose class supports no prototype
    contributes 0.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        zeta: soft coefficients `(C, K_total)` from :func:`scripts.prototypes.soft_class_coefficients`.
    """
    _check_labels(similarities, labels)
    return -_weighted_similarity(similarities, zeta[labels], normalise=True)


def separation_loss_shared_mean(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """ζ-normalised class-agnostic separation loss (Eq. 9 divided by its weights), batch mean; + sign in Eq. 1.

    ``sum_p o[y, p] S(x, p) / (sum_p o[y, p] + eps)`` with ``o[y, p] = sum_{c' != y} zeta[c', p]``.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        zeta: soft coefficients `(C, K_total)`.
    """
    _check_labels(similarities, labels)
    return _weighted_similarity(similarities, _other_class_weights(zeta, labels), normalise=True)


def _masked_max(similarities: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-case max of S over ``mask`` `(B, K)`, 0 for a case whose mask is empty -> `(B,)`."""
    best = similarities.masked_fill(~mask, -math.inf).amax(dim=1)
    return torch.where(mask.any(dim=1), best, torch.zeros_like(best))


def clustering_loss_shared_max(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """Class-agnostic clustering loss in ProtoPNet's max form (Eq. 22 with ownership read from ζ), batch mean.

    ``-max`` of S over the prototypes that class y owns by ζ (:func:`scripts.prototypes.soft_ownership`); 0 for a case
    whose class owns none.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        zeta: soft coefficients `(C, K_total)`.
    """
    _check_labels(similarities, labels)
    return -_masked_max(similarities, soft_ownership(zeta)[labels]).mean()


def separation_loss_shared_max(similarities: torch.Tensor, labels: torch.Tensor, zeta: torch.Tensor) -> torch.Tensor:
    """Class-agnostic separation loss in ProtoPNet's max form (Eq. 23 with ownership read from ζ), batch mean.

    ``max`` of S over the prototypes owned by ζ by any class other than y; 0 where there are none.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        zeta: soft coefficients `(C, K_total)`.
    """
    _check_labels(similarities, labels)
    owned = soft_ownership(zeta)
    others = owned.any(dim=0, keepdim=True) & ~owned[labels]
    return _masked_max(similarities, others).mean()


CLUSTERING_FORMS = {
    "sum": (clustering_loss_shared, separation_loss_shared),
    "mean": (clustering_loss_shared_mean, separation_loss_shared_mean),
    "max": (clustering_loss_shared_max, separation_loss_shared_max),
}
"""Forms of the class-agnostic clustering/separation pair for shared prototypes: ``sum`` (Eq. 8–9 as
printed), ``mean`` (ζ-normalised), ``max`` (ProtoPNet's max over the prototypes ζ assigns)."""


def _own_mask(similarities: torch.Tensor, labels: torch.Tensor, ownership: torch.Tensor) -> torch.Tensor:
    """Boolean `(B, K_total)`: True where the prototype belongs to the sample's class."""
    if ownership.ndim != 2 or ownership.shape[0] != similarities.shape[1]:
        raise ValueError(f"ownership must be (K_total={similarities.shape[1]}, C), got {tuple(ownership.shape)}.")
    if not (((ownership == 0) | (ownership == 1)).all() and (ownership.sum(dim=1) == 1).all()):
        raise ValueError("ownership must be 0/1 with exactly one owning class per prototype (row).")
    _check_labels(similarities, labels)
    own = ownership.t()[labels].bool()
    if not own.any(dim=1).all() or own.all(dim=1).any():
        raise ValueError("every labelled class needs at least one own and one other-class prototype.")
    return own


def clustering_loss_class_specific(
    similarities: torch.Tensor, labels: torch.Tensor, ownership: torch.Tensor
) -> torch.Tensor:
    """Class-specific clustering loss (Eq. 22): ``-max`` of S over own-class prototypes, batch mean.

    The max runs over the own-class prototypes only; it equals Eq. 22 as printed (max of
    ``zeta_hard * S`` over all prototypes) whenever that max is not negative.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        ownership: hard ownership `(K_total, C)`, one 1 per row.
    """
    own = _own_mask(similarities, labels, ownership)
    return -similarities.masked_fill(~own, -math.inf).amax(dim=1).mean()


def separation_loss_class_specific(
    similarities: torch.Tensor, labels: torch.Tensor, ownership: torch.Tensor
) -> torch.Tensor:
    """Class-specific separation loss (Eq. 23): ``max`` of S over other-class prototypes, batch mean.

    Args:
        similarities: `(B, K_total)`.
        labels: `(B,)`.
        ownership: hard ownership `(K_total, C)`.
    """
    own = _own_mask(similarities, labels, ownership)
    return similarities.masked_fill(own, -math.inf).amax(dim=1).mean()


def diversity_loss(prototypes: Sequence[torch.Tensor]) -> torch.Tensor:
    """Prototype-diversity regulariser L_div (Eq. 10).

    Per scale the mean cosine over prototype pairs ``i < j``, then the mean over scales. A scale
    with fewer than two prototypes has no pair and is skipped (left out of the mean too); with no
    such pair anywhere the loss is 0.

    Args:
        prototypes: one `(K_s, E)` tensor per scale.
    """
    per_scale = []
    for bank in prototypes:
        if bank.shape[0] < 2:
            continue
        unit = F.normalize(bank, dim=1)
        rows, cols = torch.triu_indices(bank.shape[0], bank.shape[0], offset=1, device=bank.device)
        per_scale.append((unit[rows] * unit[cols]).sum(dim=1).mean())
    if not per_scale:
        return prototypes[0].new_zeros(()) if prototypes else torch.zeros(())
    return torch.stack(per_scale).mean()


def l1_regularisation(classifier_weight: torch.Tensor, ownership: torch.Tensor | None = None) -> torch.Tensor:
    """l1 penalty L_L1 of the classifier weights (Eq. 3/21).

    Shared prototypes (``ownership=None``): all weights. Class-specific prototypes: only the
    other-class connections, mask ``1 - ownership^T``.

    Args:
        classifier_weight: `(C, K_total)`.
        ownership: optional hard ownership `(K_total, C)`.
    """
    if ownership is None:
        return classifier_weight.abs().sum()
    if ownership.shape != classifier_weight.shape[::-1]:
        expected = tuple(classifier_weight.shape[::-1])
        raise ValueError(f"ownership must be (K_total, C) = {expected}, got {tuple(ownership.shape)}.")
    return (classifier_weight * (1 - ownership.t().to(classifier_weight.dtype))).abs().sum()


def forget_loss(descriptors: torch.Tensor, forbidden: torch.Tensor) -> torch.Tensor:
    """Forgetting term after ProtoPDebug (Bontempelli et al., ICLR 2023; not a term of the paper) on one scale.

    ``mean_b max_{k, f} max(0, cos(H_s^k(x_b), f))``: how much the scale's evidence on each case of a batch
    resembles the forbidden patches f (each the descriptor of a forbidden prototype's pushed map on its
    source case), through the prototype that resembles them most. Lowering it moves the maps of the
    scale away from what those patches show. (The mean over k instead of the max barely moved on the
    quick start: 0.49 → 0.47 in five epochs, while the held-out max rose.)

    Args:
        descriptors: H_s, `(B, K_s, E)`.
        forbidden: the forbidden patches' descriptors `(F, E)` (no gradient needed).

    Returns:
        Scalar in [0, 1].
    """
    if descriptors.ndim != 3 or forbidden.ndim != 2 or descriptors.shape[-1] != forbidden.shape[-1]:
        raise ValueError(
            f"expected descriptors (B, K_s, E) and forbidden patches (F, E), got {tuple(descriptors.shape)} "
            f"and {tuple(forbidden.shape)}."
        )
    cosine = F.cosine_similarity(descriptors[:, :, None, :], forbidden[None, None].to(descriptors.dtype), dim=-1)
    return cosine.flatten(1).amax(dim=1).clamp_min(0.0).mean()
