"""UM-ProtoShare: backbone, per-scale prototype heads and a linear classifier (Section 2.2, Appendix A)."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from os import PathLike
from typing import NamedTuple, Optional

import torch
from monai.utils import look_up_option
from torch import Tensor, nn

from scripts.data.foreground import GRID_CELL_RULES, erode, foreground_mask, foreground_on_grid
from scripts.prototypes import PROTOTYPE_SHARING, ScaleTerms

from .backbone import Backbone
from .classifier import PrototypeClassifier
from .groups import GroupedNetwork, group_of
from .head import PrototypeHead

__all__ = [
    "ADDON_INPUTS",
    "BACKBONE_GROUPS",
    "CLASSIFIER_INITS",
    "MAP_SUPPORTS",
    "Explanation",
    "ScaleExplanation",
    "UMProtoShare",
]

CLASSIFIER_INITS = ("default", "balanced")
"""Start of a shared model's classifier: PyTorch's default init, or +1 / −0.5 with each scale's
prototypes dealt to the classes in turn (:meth:`UMProtoShare.balanced_assignment`)."""

MAP_SUPPORTS = ("volume", "brain")
"""Where prototype maps may lie: ``volume`` (the paper: the whole input grid) or ``brain`` (the input's
foreground, :func:`~scripts.data.foreground.foreground_mask`, on each scale's grid; zero elsewhere)."""

ADDON_INPUTS = ("fused", "encoder")
"""What each scale's add-on G_s reads: ``fused`` (the paper: F_s, encoder and decoder fused) or ``encoder``
(the encoder tap f_s alone, whose receptive field is local; the mapping module still reads F_s). With
``fusion="none"`` the two are the same tensor, and so they are for MAProtoNet's F_2, whose add-on part
is f_2."""

BACKBONE_GROUPS = ("encoder", "decoder", "fusion", "addon")
"""Parameter groups initialised from the backbone warm-up CNN by :meth:`UMProtoShare.load_backbone`."""


class ScaleExplanation(NamedTuple):
    """One prototype-carrying scale s of an :class:`Explanation`."""

    scale: int
    """s ∈ {1, 2, 3}."""
    features: Tensor
    """F_s, (B, C_s, H_s, W_s, D_s)."""
    gate: Tensor | None
    """α_s, (B, C_s, 1, 1, 1), for gated fusion; None otherwise."""
    hidden: Tensor | None
    """Mapping module hidden activations, (B, D, H_s, W_s, D_s); None without mapping module (ProtoPNet)."""
    raw_maps: Tensor | None
    """M⁰_s, (B, K_s, H_s, W_s, D_s); None without mapping module."""
    soft_maps: Tensor | None
    """M¹_s (Eq. 12 or the baseline's map activation), input of L_map; None without mapping module."""
    maps: Tensor
    """M_s (Eq. 13; the baselines' occurrence maps; ProtoPNet's per-voxel similarities), (B, K_s, H_s, W_s, D_s)."""
    embeddings: Tensor
    """G_s, (B, E, H_s, W_s, D_s)."""
    descriptors: Tensor
    """H_s (Eq. 14; ProtoPNet: each prototype's most similar voxel feature), (B, K_s, E)."""
    similarities: Tensor
    """S_s, (B, K_s)."""
    push_similarities: Tensor
    """The score push maximises over cases, (B, K_s) (S_s; ProtoPNet: best voxel similarity)."""
    fusion_inputs: list[Tensor]
    """What F_s is fused from (:meth:`~scripts.networks.backbone.Backbone.fusion_inputs`), for the
    multi-scale mapping loss; ``model.refuse(scale, inputs)`` recomputes F_s from them."""
    support: Tensor | None = None
    """Where the scale's maps may lie (:meth:`UMProtoShare.map_supports`, the mask the head multiplied them by),
    (B, 1, H_s, W_s, D_s) of 0/1; None for maps over the whole volume."""


class Explanation(NamedTuple):
    """Output of :meth:`UMProtoShare.explain`."""

    per_scale: list[ScaleExplanation]
    """One entry per prototype-carrying scale, ascending (``model.scales``)."""
    similarities: Tensor
    """S(x, P), (B, K_total), columns as ``model.prototype_columns``."""
    logits: Tensor
    """(B, C), identical to ``model(x)``."""


class UMProtoShare(GroupedNetwork):
    """UM-ProtoShare with shared (or class-specific) multi-scale prototypes; ``forward`` returns logits.

    Args:
        spatial_dims: 3 (or 2).
        in_channels: input channels, [T1, T1-CE, T2, FLAIR].
        num_classes: C ≥ 2.
        encoder_layers: bottlenecks in layer1 and layer2 (ResNet-152: (3, 8)).
        encoder_width: encoder stem width (64 → C_s = 64, 256, 512).
        prototypes_per_scale: (K_1, K_2, K_3); K_s = 0 means scale s carries no prototypes and gets
            no head (A1/A2: (0, 0, 30)).
        fusion: "gated" (Eq. 11), "concat" (ablation C) or "none" (no decoder; A, B).
        prototype_sharing: "shared" (classifier start set by ``classifier_init``) or
            "class_specific" (each scale's K_s split equally among the classes in order; classifier
            starts from +1 own class / −0.5 other classes).
        classifier_init: start of a shared model's classifier, one of :data:`CLASSIFIER_INITS`:
            "default" (PyTorch's init, the SPEC's reading of the paper) or "balanced" (+1 / −0.5, each
            scale's prototypes dealt to the classes in turn, so ζ of Eq. 7 starts one-hot with every
            class supported at every scale). Stage 3 then learns every weight freely.
        map_init_coverage: initial share of the voxels each prototype map covers (the mapping
            module's output BN shift, :class:`~scripts.networks.head.MappingModule`); None keeps
            PyTorch's init, under which every map starts on about half the volume.
        map_support: one of :data:`MAP_SUPPORTS`. ``brain``: every prototype map is multiplied by the
            input's brain mask on its scale's grid before Eq. 13, so no map draws evidence from, or
            peaks, outside the brain; ``volume``: the paper's maps over the whole grid.
        map_support_margin: with ``map_support="brain"``, leave out this many input voxels along the
            brain's border too (:func:`~scripts.data.foreground.erode`), where the brain/background edge
            makes features that compact maps latch onto.
        map_support_cells: with ``map_support="brain"``, when a cell of a scale's grid belongs to that brain,
            one of :data:`~scripts.data.foreground.GRID_CELL_RULES`: ``any`` of its input voxels does, or a
            ``majority`` of them (so a coarse cell that straddles the brain's border, mostly outside it, is left
            out too).
        addon_input: one of :data:`ADDON_INPUTS`. ``encoder``: a descriptor (Eq. 14) pools features of its
            map's own neighbourhood, so a prototype can match only where its map lies; ``fused``: the
            paper's G_s = add-on(F_s), where the decoder's features carry context from the whole volume.
        embed_dim: E.
        mapping_dim: hidden channels of the mapping module.
        addon_activation: "relu" or "sigmoid".
        similarity_clamp: clamp cosine similarities at 0 (reference implementations' choice).
        soft_mask_weight: w of Eq. 12.
        soft_mask_threshold: σ of Eq. 12.
        pretrained_path: local torchvision ResNet state dict inflated into the encoder, or None.
        map_activation: "soft_mask" (Eq. 12–13), "sigmoid" (XProtoNet) or "minmax_soft_mask"
            (MProtoNet, MAProtoNet); see :mod:`scripts.networks.head`.
        similarity_kind: "descriptor" (cos(H, p)) or "voxel_topk" (ProtoPNet: no mapping module).
        encoder_last_layer: "layer2", or "layer1" (MAProtoNet: taps s1, s2 only; ``encoder_layers``
            then gives one count).
        encoder_attention: "none" or "quadruplet" (MAProtoNet, in every bottleneck).
        feature_fusion: "none" or "stem_pool_concat" (MAProtoNet: the mapping module sees
            [avg-pool(f1), max-pool(f1), f2]; the add-on sees f2).
        decoder_kind: "paper" (each up-block upsamples, then convolves) or "lite" (convolves at the
            coarser grid, then upsamples: 192 instead of 496 GFLOP per full-size forward; not the paper's model),
            see :data:`~scripts.networks.decoder.DECODER_KINDS`.

    The baselines of Table 1 are settings of these fields: ``configs/baselines/*.json`` (their README).
    """

    optional_state = ("addon_reads_encoder",)
    """State-dict entries a checkpoint may lack (:func:`scripts.weights.optional_state_keys`): one written
    before ``addon_input`` existed has no ``addon_reads_encoder`` and was trained with ``fused``."""

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 4,
        num_classes: int = 2,
        encoder_layers: Sequence[int] = (3, 8),
        encoder_width: int = 64,
        prototypes_per_scale: Sequence[int] = (9, 15, 6),
        fusion: str = "gated",
        prototype_sharing: str = "shared",
        embed_dim: int = 128,
        mapping_dim: int = 128,
        addon_activation: str = "relu",
        similarity_clamp: bool = False,
        soft_mask_weight: float = 10.0,
        soft_mask_threshold: float = 0.5,
        pretrained_path: str | PathLike | None = None,
        map_activation: str = "soft_mask",
        similarity_kind: str = "descriptor",
        encoder_last_layer: str = "layer2",
        encoder_attention: str = "none",
        feature_fusion: str = "none",
        classifier_init: str = "default",
        map_init_coverage: float | None = None,
        map_support: str = "volume",
        map_support_margin: int = 0,
        map_support_cells: str = "any",
        decoder_kind: str = "paper",
        addon_input: str = "fused",
    ) -> None:
        super().__init__()
        self.addon_input = look_up_option(addon_input, ADDON_INPUTS)
        self.map_support = look_up_option(map_support, MAP_SUPPORTS)
        if map_support_margin < 0:
            raise ValueError(f"map_support_margin must be >= 0 voxels, got {map_support_margin}.")
        self.map_support_margin = int(map_support_margin)
        if map_support_cells not in GRID_CELL_RULES:
            raise ValueError(f"map_support_cells must be one of {GRID_CELL_RULES}, got {map_support_cells!r}.")
        self.map_support_cells = str(map_support_cells)
        if self.map_support == "brain" and similarity_kind == "voxel_topk":
            raise ValueError("map_support='brain' needs maps from a mapping module; similarity_kind='voxel_topk' has none.")
        if len(prototypes_per_scale) != 3 or min(prototypes_per_scale) < 0 or sum(prototypes_per_scale) < 1:
            raise ValueError(
                f"prototypes_per_scale must give three non-negative counts (K_1, K_2, K_3) with at least one "
                f"prototype, got {tuple(prototypes_per_scale)}."
            )
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
        self.prototype_sharing = look_up_option(prototype_sharing, PROTOTYPE_SHARING)
        classifier_init = look_up_option(classifier_init, CLASSIFIER_INITS)
        self.num_classes = num_classes
        self.prototypes_per_scale = tuple(int(k) for k in prototypes_per_scale)
        self.scales = [s for s, k in enumerate(self.prototypes_per_scale, start=1) if k > 0]
        self.backbone = Backbone(
            spatial_dims,
            in_channels,
            encoder_layers,
            encoder_width,
            self.scales,
            fusion,
            pretrained_path,
            encoder_last_layer=encoder_last_layer,
            encoder_attention=encoder_attention,
            feature_fusion=feature_fusion,
            decoder_kind=decoder_kind,
        )
        self.channels_per_scale = self.backbone.encoder.channels
        self.heads = nn.ModuleDict(
            {
                f"scale{s}": PrototypeHead(
                    spatial_dims,
                    channels,
                    self.prototypes_per_scale[s - 1],
                    embed_dim=embed_dim,
                    mapping_dim=mapping_dim,
                    addon_activation=addon_activation,
                    similarity_clamp=similarity_clamp,
                    soft_mask_weight=soft_mask_weight,
                    soft_mask_threshold=soft_mask_threshold,
                    map_activation=map_activation,
                    similarity_kind=similarity_kind,
                    addon_channels=self.channels_per_scale[s - 1],
                    map_init_coverage=map_init_coverage,
                )
                for s, channels in zip(self.scales, self.backbone.out_channels)
            }
        )
        self.prototype_columns = [(s, k) for s in self.scales for k in range(self.prototypes_per_scale[s - 1])]
        self.num_prototypes = len(self.prototype_columns)
        self.classifier = PrototypeClassifier(self.num_prototypes, num_classes)
        ownership = None
        if self.prototype_sharing == "class_specific":
            ownership = self._hard_ownership()
        start = self.balanced_assignment() if ownership is None and classifier_init == "balanced" else ownership
        if start is not None:
            with torch.no_grad():
                self.classifier.weight.copy_(1.5 * start.T - 0.5)
        self.register_buffer("ownership", ownership, persistent=False)
        self.register_buffer("addon_reads_encoder", torch.tensor(int(self.addon_input == "encoder"), dtype=torch.uint8))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors) -> None:
        """A whole checkpoint (one with the classifier; :meth:`load_backbone` loads parts) must come from a
        network whose add-ons read the same input: the weights alone cannot tell, and the other reading gives
        other similarities without any error. One without the entry was written before it existed (fused).
        Without a decoder (``fusion="none"``: F_s is f_s) the two readings are the same and not checked."""
        key = prefix + "addon_reads_encoder"
        whole = key in state_dict or prefix + "classifier.weight" in state_dict
        saved = ADDON_INPUTS[int(state_dict.get(key, 0))]
        if whole and self.backbone.decoder is not None and saved != self.addon_input:
            errors.append(
                f"the checkpoint was trained with addon_input='{saved}' and this network has "
                f"addon_input='{self.addon_input}': load it with --addon_input {saved}"
            )
        if whole:
            state_dict[key] = self.addon_reads_encoder.clone()  # a constant of the architecture, never loaded
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def set_map_shift(self, shift: float) -> None:
        """Shift every head's map pre-activation z by ``shift`` (> 0 widens the maps; 0 is the model itself)."""
        for head in self.heads.values():
            head.map_shift = float(shift)

    @contextlib.contextmanager
    def own_class_map_gradient(self, labels: Tensor) -> Iterator[None]:
        """Inside: S_k of a case sends gradient into prototype k's map only when the case's label is the class
        k's classifier weights favour (argmax of its column); forward values are unchanged.

        Args:
            labels: (B,) class indices of the batch about to be run.
        """
        favoured = self.classifier.effective_weight.detach().argmax(dim=0)
        try:
            for s in self.scales:
                mask = labels.reshape(-1, 1).to(favoured.device) == favoured[self.columns(s)].reshape(1, -1)
                self.head(s).map_gradient_mask = mask
            yield
        finally:
            for head in self.heads.values():
                head.map_gradient_mask = None

    def balanced_assignment(self) -> Tensor:
        """(K_total, C) one-hot: prototype k of each scale goes to class k mod C (the "balanced" start)."""
        owners = [torch.arange(self.prototypes_per_scale[s - 1]) % self.num_classes for s in self.scales]
        return nn.functional.one_hot(torch.cat(owners), self.num_classes).float()

    def _hard_ownership(self) -> Tensor:
        """(K_total, C) one-hot: each scale's K_s prototypes split into C equal consecutive slots."""
        owners = []
        for s in self.scales:
            count = self.prototypes_per_scale[s - 1]
            if count % self.num_classes:
                raise ValueError(
                    f"class_specific prototypes need K_s divisible by num_classes={self.num_classes}; "
                    f"scale {s} has K_s={count}."
                )
            owners.append(torch.arange(count) // (count // self.num_classes))
        return nn.functional.one_hot(torch.cat(owners), self.num_classes).float()

    def _check_scale(self, scale: int) -> None:
        if scale not in self.scales:
            raise ValueError(f"scale {scale} carries no prototypes; prototype scales are {self.scales}.")

    def columns(self, scale: int) -> slice:
        """Classifier columns (and entries of S(x, P)) of scale ``scale``'s prototypes."""
        self._check_scale(scale)
        start = sum(self.prototypes_per_scale[: scale - 1])
        return slice(start, start + self.prototypes_per_scale[scale - 1])

    def prototype_name(self, column: int) -> str:
        """``s<s>_k<k>``, the name reports, galleries and ``prune_prototypes`` give classifier column ``column``."""
        scale, k = self.prototype_columns[column]
        return f"s{scale}_k{k}"

    def column_of(self, name: str) -> int:
        """The classifier column of a prototype named ``s<s>_k<k>`` (or ``prototype_s<s>_k<k>``, a report's file stem)."""
        match = re.fullmatch(r"(?:prototype_)?s(\d+)_k(\d+)", str(name).strip())
        if match is None:
            raise ValueError(f"{name!r} is not a prototype name: expected s<scale>_k<k>, e.g. 's1_k3'.")
        key = (int(match.group(1)), int(match.group(2)))
        if key not in self.prototype_columns:
            counts = {s: self.prototypes_per_scale[s - 1] for s in self.scales}
            raise ValueError(f"no prototype {name!r}: this model has k = 0..K_s-1 per scale s, K_s = {counts}.")
        return self.prototype_columns.index(key)

    @property
    def active_columns(self) -> Tensor:
        """(K_total,) bool: the prototypes the classifier reads (False where pruned)."""
        return self.classifier.active > 0

    def head(self, scale: int) -> PrototypeHead:
        """The prototype head of scale ``scale`` (add-on, mapping module, prototypes)."""
        self._check_scale(scale)
        return self.heads[f"scale{scale}"]

    def fused_features(self, x: Tensor) -> list[Tensor]:
        """F_s (B, C_s, H_s, W_s, D_s) for each prototype scale in ``scales``, from x (B, C_in, H, W, D)."""
        return self.backbone(x)

    def addon_inputs(self, taps: list[Tensor]) -> list[Optional[Tensor]]:
        """Per prototype scale, what its add-on reads: the encoder tap f_s (``addon_input="encoder"``), or
        None for the head's own slice of F_s."""
        inputs: list[Optional[Tensor]] = []
        for s in self.scales:
            inputs.append(taps[s - 1] if self.addon_input == "encoder" else None)
        return inputs

    def map_supports(self, x: Tensor, features: list[Tensor]) -> list[Optional[Tensor]]:
        """Per prototype scale, where its maps may lie: the brain of x on F_s's grid (B, 1, H_s, W_s, D_s),
        or None for the whole volume (``map_support="volume"``)."""
        if self.map_support == "volume":
            return [None for _ in features]
        brain = erode(foreground_mask(x), self.map_support_margin)
        return [foreground_on_grid(brain, list(f.shape[2:]), self.map_support_cells).to(f.dtype) for f in features]

    def similarities(self, x: Tensor) -> Tensor:
        """S(x, P) (B, K_total) from x (B, C_in, H, W, D)."""
        taps, decoded = self.backbone.encode_decode(x)
        features = self.backbone.fuse(taps, decoded)
        supports = self.map_supports(x, features)
        addon_inputs = self.addon_inputs(taps)
        similarities: list[Tensor] = []
        for i, head in enumerate(self.heads.values()):
            similarities.append(head(features[i], supports[i], addon_inputs[i]))
        return torch.cat(similarities, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, C) from x (B, C_in, H, W, D); float32 at either ``precision``."""
        if self.uses_autocast():
            return self.logits_at_precision(x)
        return self.logits(x)

    def logits(self, x: Tensor) -> Tensor:
        """Logits (B, C) from x (B, C_in, H, W, D), in the ambient precision."""
        return self.classifier(self.similarities(x))

    def explain(self, x: Tensor) -> Explanation:
        """Every intermediate of the forward pass (same code path), per prototype scale, with S and logits.

        At ``precision`` bf16 (eval mode) it runs under autocast and returns float32 tensors.
        """
        if self.uses_autocast():
            return self.at_precision(self._explain, x)
        return self._explain(x)

    def _explain(self, x: Tensor) -> Explanation:
        taps, decoded = self.backbone.encode_decode(x)
        features = self.backbone.fuse(taps, decoded)
        gates = self.backbone.gates(taps, decoded)
        inputs = self.backbone.fusion_inputs(taps, decoded)
        supports = self.map_supports(x, features)
        per_scale = [
            ScaleExplanation(
                scale=s, features=f, gate=gate, **head.run(f, support, addon)._asdict(), fusion_inputs=fused_from,
                support=support,
            )
            for s, f, gate, head, fused_from, support, addon in zip(
                self.scales, features, gates, self.heads.values(), inputs, supports, self.addon_inputs(taps)
            )
        ]
        similarities = torch.cat([scale.similarities for scale in per_scale], dim=1)
        return Explanation(per_scale, similarities, self.classifier(similarities))

    def loss_inputs(self, explanation: Explanation) -> list[ScaleTerms]:
        """The per-scale inputs of :class:`~scripts.losses.Stage1Loss` from one :meth:`explain` output.

        A head without mapping module (ProtoPNet) gives no ``w2`` and no ``map_fn``; ``fusion_inputs`` and
        ``refuse_fn`` feed the multi-scale mapping loss (MAProtoNet).
        """
        terms = []
        for entry in explanation.per_scale:
            head = self.head(entry.scale)
            mapped = head.mapping is not None
            terms.append(
                ScaleTerms(
                    features=entry.features,
                    hidden=entry.hidden,
                    w2=head.mapping.out_conv.weight if mapped else None,
                    soft_maps=entry.soft_maps,
                    similarities=entry.similarities,
                    prototypes=head.prototypes,
                    map_fn=head.soft_maps if mapped else None,
                    columns=self.columns(entry.scale),
                    fusion_inputs=entry.fusion_inputs,
                    refuse_fn=functools.partial(self.refuse, entry.scale),
                    maps=entry.maps,
                )
            )
        return terms

    def refuse(self, scale: int, inputs: list[Tensor]) -> Tensor:
        """F_s (B, C, *S) of ``scale`` from its (resized) ``ScaleExplanation.fusion_inputs`` (multi-scale L_map)."""
        self._check_scale(scale)
        return self.backbone.refuse(scale, inputs)

    def load_backbone(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Initialise encoder, decoder, fusion and add-ons from a :class:`BackboneCNN` state dict.

        Raises a ValueError listing every missing or shape-mismatched key of those groups.

        Returns:
            The keys of ``state_dict`` not used (e.g. the CNN's classifier, add-ons of other scales).
        """
        wanted = {k: v for k, v in self.state_dict().items() if group_of(k) in BACKBONE_GROUPS}
        missing = [k for k in wanted if k not in state_dict]
        mismatched = [
            f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
            for k, v in wanted.items()
            if k in state_dict and state_dict[k].shape != v.shape
        ]
        if missing or mismatched:
            raise ValueError(
                f"backbone state dict does not fit this model: {len(missing)} missing keys {missing}; "
                f"{len(mismatched)} shape mismatches (given vs model) {mismatched}."
            )
        self.load_state_dict({k: state_dict[k] for k in wanted}, strict=False)
        return [k for k in state_dict if k not in wanted]
