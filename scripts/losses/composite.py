"""Composite objectives: the warm-up CNN's L_cls, stage 1 (Eq. 1/19) and stage 3 (Eq. 3/21)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import look_up_option
from torch import nn

from scripts.losses.localisation import (
    LSE_SHARPNESS,
    mapping_loss,
    multiscale_mapping_loss,
    online_cam_logits,
    scale_agreement_loss,
)
from scripts.losses.terms import (
    CLASSIFICATION_LOSSES,
    CLUSTERING_FORMS,
    classification_loss,
    clustering_loss_class_specific,
    diversity_loss,
    l1_regularisation,
    separation_loss_class_specific,
)
from scripts.maps import class_attention_map
from scripts.prototypes import PROTOTYPE_SHARING, ScaleTerms, soft_class_coefficients

__all__ = ["MAPPING_LOSS_KINDS", "MAP_RATIOS", "ClassificationLoss", "LastLayerLoss", "Stage1Loss"]

MAP_RATIOS = (0.75, 0.875)
MAPPING_LOSS_KINDS = ("single_scale", "multi_scale")
"""L_map^s on the resized F_s (:func:`mapping_loss`, MProtoNet) or on F_s re-fused from its resized inputs
(:func:`multiscale_mapping_loss`, MAProtoNet)."""


class ClassificationLoss(nn.Module):
    """L_cls alone, the backbone warm-up's objective: ``(logits (B, C), labels (B,)) -> scalar``.

    With the defaults it is ``torch.nn.CrossEntropyLoss()``.

    Args:
        classification, class_weights, focal_gamma, label_smoothing: see :func:`classification_loss`.
    """

    def __init__(
        self,
        classification: str = "cross_entropy",
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.classification = look_up_option(classification, CLASSIFICATION_LOSSES)
        self.class_weights = class_weights
        self.focal_gamma = focal_gamma
        self.label_smoothing = label_smoothing

    def classify(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar L_cls of ``logits`` `(B, C)` against ``labels`` `(B,)` with this loss's settings."""
        return classification_loss(
            logits, labels, self.classification, self.class_weights, self.focal_gamma, self.label_smoothing
        )

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scalar L_cls of ``logits`` `(B, C)` against ``labels`` `(B,)`."""
        return self.classify(logits, labels)


class Stage1Loss(ClassificationLoss):
    """Stage-1 (latent space) objective (Eq. 1/19).

    ``L = l_cls L_cls + l_clst L_clst + l_sep L_sep + l_map/n_s sum_s L_map^s
    + l_OC/n_s sum_s L_OC^s + l_div L_div`` with n_s the number of scales given, plus, when
    ``agreement_weight > 0`` (not in the paper), ``l_agree`` times the scale agreement of each case's
    true-class map (:func:`~scripts.losses.localisation.scale_agreement_loss`; left out when a single
    scale carries prototypes).

    Args:
        prototype_sharing: ``"shared"`` (Eq. 8-9 with zeta of Eq. 7) or ``"class_specific"``
            (Eq. 22-23 with a hard ownership matrix).
        clustering: form of the shared clustering/separation pair, a key of
            :data:`~scripts.losses.terms.CLUSTERING_FORMS`: ``"sum"`` (Eq. 8-9 as printed), ``"mean"``
            (zeta-normalised) or ``"max"`` (max over the prototypes zeta assigns). No effect with
            ``"class_specific"``. ``clst_weight = sep_weight = 0`` switches the pair off.
        cls_weight, clst_weight, sep_weight, map_weight, oc_weight, div_weight, agreement_weight: the
            lambdas (``agreement_weight`` 0 leaves the term out, the paper's objective).
        agreement_sharpness: the agreement teacher's exponent (1: the scales' geometric mean; n_scales:
            their product).
        agreement_flip: the teacher also averages the maps of the input flipped along its three spatial
            axes, flipped back (``forward``'s ``flipped``), so it cannot sit at a fixed offset from what the
            prototypes match.
        use_map, use_oc: switch L_map / L_OC off (their map_fn / hidden are then unused).
        map_ratios: r is drawn uniformly from these once per call.
        seed: seeds a private generator for the r draws; None uses torch's global RNG.
        classification, class_weights, focal_gamma, label_smoothing: see :func:`classification_loss`.
        lse_sharpness: r of the Online-CAM log-sum-exp pooling.
        mapping_loss_kind: one of :data:`MAPPING_LOSS_KINDS` (``multi_scale``: MAProtoNet).
    """

    def __init__(
        self,
        prototype_sharing: str = "shared",
        clustering: str = "sum",
        cls_weight: float = 1.0,
        clst_weight: float = 0.8,
        sep_weight: float = 0.08,
        map_weight: float = 0.5,
        oc_weight: float = 0.05,
        div_weight: float = 0.001,
        agreement_weight: float = 0.0,
        agreement_sharpness: float = 1.0,
        agreement_flip: bool = False,
        use_map: bool = True,
        use_oc: bool = True,
        map_ratios: Sequence[float] = MAP_RATIOS,
        seed: int | None = None,
        classification: str = "cross_entropy",
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
        lse_sharpness: float = LSE_SHARPNESS,
        mapping_loss_kind: str = "single_scale",
    ) -> None:
        super().__init__(classification, class_weights, focal_gamma, label_smoothing)
        self.prototype_sharing = look_up_option(prototype_sharing, PROTOTYPE_SHARING)
        self.clustering = look_up_option(clustering, tuple(CLUSTERING_FORMS))
        self.mapping_loss_kind = look_up_option(mapping_loss_kind, MAPPING_LOSS_KINDS)
        if not map_ratios or not all(0.0 < r <= 1.0 for r in map_ratios):
            raise ValueError(f"map_ratios must be a non-empty sequence of values in (0, 1], got {map_ratios}.")
        self.lambdas = {
            "cls": cls_weight,
            "clst": clst_weight,
            "sep": sep_weight,
            "map": map_weight,
            "oc": oc_weight,
            "div": div_weight,
        }
        if agreement_weight < 0:
            raise ValueError(f"agreement_weight must be >= 0, got {agreement_weight}.")
        if agreement_weight > 0:
            self.lambdas["agree"] = agreement_weight
        if agreement_sharpness <= 0:
            raise ValueError(f"agreement_sharpness must be > 0, got {agreement_sharpness}.")
        self.agreement_sharpness = float(agreement_sharpness)
        self.agreement_flip = bool(agreement_flip)
        self.use_map, self.use_oc = use_map, use_oc
        self.map_ratios = tuple(float(r) for r in map_ratios)
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.lse_sharpness = lse_sharpness

    def draw_ratio(self) -> float:
        """One r from ``map_ratios`` (uniform), from the private generator if seeded."""
        return self.map_ratios[int(torch.randint(len(self.map_ratios), (1,), generator=self.generator))]

    def _mapping_loss(self, scale: ScaleTerms, ratio: float) -> torch.Tensor:
        if scale.soft_maps is None or scale.map_fn is None:
            raise ValueError("L_map needs soft_maps and map_fn (a mapping module); switch use_map off without one.")
        if self.mapping_loss_kind == "single_scale":
            return mapping_loss(scale.features, scale.soft_maps, scale.map_fn, ratio)
        if scale.fusion_inputs is None or scale.refuse_fn is None:
            raise ValueError('mapping_loss_kind="multi_scale" needs ScaleTerms.fusion_inputs and refuse_fn.')
        return multiscale_mapping_loss(scale.fusion_inputs, scale.soft_maps, scale.refuse_fn, scale.map_fn, ratio)

    def _online_cam_loss(
        self, scale: ScaleTerms, classifier_columns: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        if scale.hidden is None or scale.w2 is None:
            raise ValueError("L_OC needs hidden and w2 (a mapping module); switch use_oc off without one.")
        return self.classify(online_cam_logits(scale.hidden, scale.w2, classifier_columns, self.lse_sharpness), labels)

    @property
    def needs_flipped_view(self) -> bool:
        """Whether :meth:`forward` wants ``flipped``: the agreement term is on and its teacher reads the flipped view."""
        return self.agreement_flip and "agree" in self.lambdas

    def forward(
        self,
        scales: Sequence[ScaleTerms],
        logits: torch.Tensor,
        labels: torch.Tensor,
        classifier_weight: torch.Tensor,
        ownership: torch.Tensor | None = None,
        flipped: Sequence[ScaleTerms] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the unweighted terms.

        Args:
            scales: one :class:`ScaleTerms` per scale that carries prototypes, in column order.
            logits: `(B, C)`.
            labels: `(B,)`.
            classifier_weight: `(C, K_total)`.
            ownership: hard ownership `(K_total, C)`, required for ``"class_specific"``.
            flipped: the same cases' terms for the input flipped along its three spatial axes (only the
                maps are read, by the agreement teacher); required when :attr:`needs_flipped_view`.

        Returns:
            The scalar total, and detached unweighted terms keyed ``cls, clst, sep, div`` plus
            ``map`` and ``oc`` (scale means) when switched on.
        """
        if not scales:
            raise ValueError("Stage1Loss needs at least one scale that carries prototypes.")
        k_total = classifier_weight.shape[1]
        columns = [
            torch.arange(k_total)[s.columns.cpu() if isinstance(s.columns, torch.Tensor) else s.columns].reshape(-1)
            for s in scales
        ]
        widths_match = [c.numel() for c in columns] == [s.similarities.shape[1] for s in scales]
        if not widths_match or not torch.equal(torch.cat(columns), torch.arange(k_total)):
            raise ValueError(
                f"scale columns {[c.tolist() for c in columns]} must match the similarity widths "
                f"{[s.similarities.shape[1] for s in scales]} and cover 0..{k_total - 1} in order."
            )
        similarities = torch.cat([s.similarities for s in scales], dim=1)
        if self.prototype_sharing == "shared":
            zeta = soft_class_coefficients(classifier_weight)
            clustering, separation = CLUSTERING_FORMS[self.clustering]
            terms = {"clst": clustering(similarities, labels, zeta), "sep": separation(similarities, labels, zeta)}
        else:
            if ownership is None:
                raise ValueError('prototype_sharing="class_specific" needs the ownership matrix (K_total, C).')
            zeta = ownership.t()
            terms = {
                "clst": clustering_loss_class_specific(similarities, labels, ownership),
                "sep": separation_loss_class_specific(similarities, labels, ownership),
            }
        terms["cls"] = self.classify(logits, labels)
        terms["div"] = diversity_loss([s.prototypes for s in scales])
        if self.use_map:
            ratio = self.draw_ratio()
            terms["map"] = torch.stack([self._mapping_loss(s, ratio) for s in scales]).mean()
        if self.use_oc:
            terms["oc"] = torch.stack(
                [self._online_cam_loss(s, classifier_weight[:, cols], labels) for s, cols in zip(scales, columns)]
            ).mean()
        if "agree" in self.lambdas and len(scales) > 1:
            terms["agree"] = self._agreement_loss(scales, zeta, columns, labels, flipped)
        total = sum(self.lambdas[name] * value for name, value in terms.items())
        return total, {name: value.detach() for name, value in terms.items()}

    def _agreement_loss(
        self,
        scales: Sequence[ScaleTerms],
        zeta: torch.Tensor,
        columns: Sequence[torch.Tensor],
        labels: torch.Tensor,
        flipped: Sequence[ScaleTerms] | None,
    ) -> torch.Tensor:
        """The scale agreement of each case's true-class map (Eq. 27's selection: prototypes with ζ > 0).

        With ``agreement_flip`` the flipped view's maps, flipped back, join the teacher: a prototype that
        fires at a fixed offset from what it matches fires at the mirrored offset in that view, so the
        teacher sits between the two, on the matched structure.
        """
        if self.agreement_flip and (flipped is None or len(flipped) != len(scales)):
            raise ValueError(f"agreement_flip needs the flipped view's ScaleTerms for each of the {len(scales)} scales.")

        def true_class_maps(view: Sequence[ScaleTerms]) -> list[torch.Tensor]:
            if any(s.maps is None for s in view):
                raise ValueError("the scale agreement term needs ScaleTerms.maps (the normalised maps M_s).")
            return [
                class_attention_map([s.maps], zeta[:, cols.to(zeta.device)], labels, s.maps.shape[2:], "sum")
                for s, cols in zip(view, columns)
            ]

        teacher_views = [m.flip((1, 2, 3)) for m in true_class_maps(flipped)] if self.agreement_flip else ()
        return scale_agreement_loss(true_class_maps(scales), self.agreement_sharpness, teacher_views)


class LastLayerLoss(ClassificationLoss):
    """Stage-3 (classifier) objective (Eq. 3/21): ``l_cls L_cls + l_L1 L_L1``.

    Args:
        cls_weight: lambda_cls.
        l1_weight: lambda_L1.
        classification, class_weights, focal_gamma, label_smoothing: see :func:`classification_loss`.
    """

    def __init__(
        self,
        cls_weight: float = 1.0,
        l1_weight: float = 0.01,
        classification: str = "cross_entropy",
        class_weights: Sequence[float] | None = None,
        focal_gamma: float = 2.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(classification, class_weights, focal_gamma, label_smoothing)
        self.cls_weight, self.l1_weight = cls_weight, l1_weight

    def forward(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        classifier_weight: torch.Tensor,
        ownership: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the detached unweighted terms ``cls, l1``.

        Args:
            logits: `(B, C)`.
            labels: `(B,)`.
            classifier_weight: `(C, K_total)`.
            ownership: hard ownership `(K_total, C)` for class-specific prototypes, else None.
        """
        cls = self.classify(logits, labels)
        l1 = l1_regularisation(classifier_weight, ownership)
        return self.cls_weight * cls + self.l1_weight * l1, {"cls": cls.detach(), "l1": l1.detach()}
