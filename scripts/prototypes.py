"""What the network, the losses and the read-outs share about prototypes, defined once.

The sharing modes, the soft class coefficients ζ (Eq. 7) and the ownership read from them, how well a
prototype tells the classes apart (:func:`class_separation`), the reference similarity that a case's
prototypes are ranked against (:func:`reference_similarity`, :data:`EVIDENCE_RANKINGS`), and
:class:`ScaleTerms`, what :meth:`scripts.networks.UMProtoShare.loss_inputs` hands the stage-1 loss.
PyTorch only, below :mod:`scripts.networks`, :mod:`scripts.losses` and :mod:`scripts.explain`, so
that none of them imports another for these.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch

__all__ = [
    "EVIDENCE_RANKINGS",
    "PROTOTYPE_SHARING",
    "SEPARATION_FLOOR",
    "ZETA_EPS",
    "ScaleTerms",
    "checked_ranking",
    "class_separation",
    "ranked_columns",
    "reference_similarity",
    "soft_class_coefficients",
    "soft_ownership",
]

PROTOTYPE_SHARING = ("shared", "class_specific")
"""``shared``: class-agnostic prototypes (UM-ProtoShare, A2–E); ``class_specific``: hard ownership, K_s / C
prototypes per class (A1)."""
ZETA_EPS = 1e-6
"""Added to ζ's denominator (Eq. 7) so that a prototype with no positive weight gets zeros."""
SEPARATION_FLOOR = 0.05
"""A prototype whose :func:`class_separation` is below this matches the other classes' cases about as well as
(or better than) the cases of the class it votes for: its match says little about the class."""

EVIDENCE_RANKINGS = ("relative", "contribution")
"""What a case's prototypes are ranked by, for what a reader is shown first: ``relative``, the prototypes that
vote for the class (w > 0: those its evidence map is made of, Eq. 27) first, each group by w·(S − S̄), the
contribution relative to a training case of average similarity (S̄: :func:`reference_similarity`); or
``contribution``, by Δy = w·S (Eq. 31) alone."""


def checked_ranking(ranking: str) -> str:
    """``ranking`` when it is one of :data:`EVIDENCE_RANKINGS`; else a ValueError naming ``evidence_ranking``."""
    if ranking not in EVIDENCE_RANKINGS:
        raise ValueError(f"evidence_ranking must be one of {EVIDENCE_RANKINGS}, got {ranking!r}.")
    return str(ranking)


def class_separation(class_similarity: Mapping[str, float | None] | None, favoured: str) -> float | None:
    """How much better a prototype matches the class it votes for than any other class, on the push set.

    Args:
        class_similarity: class name → mean S over that class's training cases (the push record's
            ``class_similarity``), or None where it was not measured.
        favoured: the class whose classifier weight on the prototype's column is largest.

    Returns:
        S̄(favoured) − max over the other classes of S̄(c); None when a mean is missing (or NaN).
    """
    if class_similarity is None:
        return None
    values = dict(class_similarity)
    if favoured not in values or len(values) < 2:
        raise ValueError(f"class_similarity {values} must hold the favoured class {favoured!r} and another.")
    if any(value is None or math.isnan(value) for value in values.values()):
        return None
    return float(values[favoured]) - max(float(v) for name, v in values.items() if name != favoured)


def reference_similarity(class_similarities: Sequence[Mapping[str, float | None] | None]) -> torch.Tensor | None:
    """S̄ per prototype: the mean over the classes of its mean S on each class's push-set cases.

    Each class counts once, whatever its number of cases, so that the reference favours no grade.

    Args:
        class_similarities: per classifier column, the push record's ``class_similarity`` (class name → mean S
            over that class's training cases), or None where it was not measured.

    Returns:
        (K,) float64; None when any column lacks a class mean (a push from before they were recorded, a class
        without cases, or a similarity that is not a plain cosine).
    """
    means = []
    for entry in class_similarities:
        values = None if entry is None else list(entry.values())
        if not values or any(v is None or math.isnan(v) for v in values):
            return None
        means.append(math.fsum(float(v) for v in values) / len(values))
    return torch.tensor(means, dtype=torch.float64)


def ranked_columns(
    scores: torch.Tensor, active: torch.Tensor | None = None, first: torch.Tensor | None = None
) -> list[int]:
    """Classifier columns by ``scores``, largest first (lower column first on ties), ``first`` ones before the rest.

    Args:
        scores: one case's ranking score of each prototype for one class, (K_total,).
        active: (K_total,) bool, the prototypes not pruned (``model.active_columns``); None: all. Others are left out.
        first: (K_total,) bool, the prototypes ranked ahead of every other (those voting for the class); None: none.
    """
    if scores.ndim != 1:
        raise ValueError(f"need one score per column (K_total,), got {tuple(scores.shape)}.")
    order = torch.sort(scores, descending=True, stable=True).indices.tolist()
    order = [c for c in order if active is None or bool(active[c])]
    return order if first is None else [c for c in order if first[c]] + [c for c in order if not first[c]]


def soft_class_coefficients(classifier_weight: torch.Tensor) -> torch.Tensor:
    """Soft class-prototype coefficients zeta (Eq. 7), detached from the classifier.

    Args:
        classifier_weight: `(C, K_total)`.

    Returns:
        `(C, K_total)`; each column sums to 1 where any weight of that prototype is positive,
        and is all zero otherwise.
    """
    positive = torch.relu(classifier_weight.detach())
    return positive / (positive.sum(dim=0, keepdim=True) + ZETA_EPS)


def soft_ownership(zeta: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Hard ownership read from ζ: prototype p belongs to class c where ``zeta[c, p] > threshold``.

    Args:
        zeta: soft coefficients `(C, K_total)`.
        threshold: 0.5 gives each prototype at most one class; a prototype no class holds above it
            (e.g. all its weights negative) belongs to none.

    Returns:
        bool `(C, K_total)`.
    """
    return zeta > threshold


class ScaleTerms(NamedTuple):
    """What the model gives :class:`Stage1Loss` for one scale s that carries prototypes.

    Attributes:
        features: fused features F_s `(B, C_s, H_s, W_s, D_s)`.
        hidden: mapping module's first Conv+BN+ReLU output h_s `(B, 128, H_s, W_s, D_s)`.
        w2: mapping module's second conv weight `(K_s, 128, 1, 1, 1)`.
        soft_maps: soft-masked maps M1_s `(B, K_s, H_s, W_s, D_s)`.
        similarities: S_s `(B, K_s)`.
        prototypes: p_s `(K_s, E)`.
        map_fn: re-runs the mapping module (incl. soft mask) on features `F -> M1`. In train
            mode its BatchNorm also sees the resized features, as in MProtoNet.
        columns: this scale's classifier columns (slice or indices), in order.
        fusion_inputs: what F_s is fused from (``ScaleExplanation.fusion_inputs``); needed only by
            ``mapping_loss_kind="multi_scale"``.
        refuse_fn: fuses resized ``fusion_inputs`` into F_s (``functools.partial(model.refuse, s)``);
            needed only by ``mapping_loss_kind="multi_scale"``.
        maps: the normalised maps M_s of Eq. 13 `(B, K_s, H_s, W_s, D_s)`; needed only by the scale
            agreement term (``agreement_weight``).

    Without a mapping module (ProtoPNet) ``hidden``, ``w2``, ``soft_maps`` and ``map_fn`` may be None
    when L_map and L_OC are off.
    """

    features: torch.Tensor
    hidden: torch.Tensor | None
    w2: torch.Tensor | None
    soft_maps: torch.Tensor | None
    similarities: torch.Tensor
    prototypes: torch.Tensor
    map_fn: Callable[[torch.Tensor], torch.Tensor] | None
    columns: slice | Sequence[int] | torch.Tensor
    fusion_inputs: Sequence[torch.Tensor] | None = None
    refuse_fn: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    maps: torch.Tensor | None = None
