"""Localisation terms of Eq. 1/19 that follow MProtoNet: L_map^s and L_OC^s (SPEC §3)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from scripts.maps import PRODUCT_FLOOR, resize_to_input

__all__ = [
    "LSE_SHARPNESS",
    "lse_pool",
    "mapping_loss",
    "multiscale_mapping_loss",
    "online_cam_logits",
    "resize_spatial",
    "scale_agreement_loss",
]

LSE_SHARPNESS = 10.0


def resize_spatial(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """The resize A of L_map: trilinear, align_corners=True, size ``floor(size * ratio)``.

    Args:
        x: `(B, N, H, W, D)`.
        ratio: scale factor r in (0, 1].
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"resize ratio must lie in (0, 1], got {ratio}.")
    size = [math.floor(n * ratio) for n in x.shape[2:]]
    if min(size) < 1:
        raise ValueError(f"spatial size {tuple(x.shape[2:])} resized by {ratio} gives an empty axis {tuple(size)}.")
    return F.interpolate(x, size=size, mode="trilinear", align_corners=True)


def mapping_loss(
    features: torch.Tensor,
    soft_maps: torch.Tensor,
    map_fn: Callable[[torch.Tensor], torch.Tensor],
    ratio: float,
) -> torch.Tensor:
    """Mapping loss L_map^s, a term of Eq. 1/19 (MProtoNet definition, SPEC §3).

    ``mean|A(M1(F)) - M1(A(F))| + mean|M1(F)|``: the maps must follow a resize of the features,
    and stay small. Applied to the soft-masked maps M1 (before the l1 normalisation of Eq. 13).

    Args:
        features: fused features F_s `(B, C_s, H_s, W_s, D_s)`.
        soft_maps: M1(F_s) as computed in the forward pass `(B, K_s, H_s, W_s, D_s)`.
        map_fn: re-runs the mapping module (with soft mask) on features; only this is re-run.
        ratio: the resize ratio r drawn for this batch.
    """
    consistency = (resize_spatial(soft_maps, ratio) - map_fn(resize_spatial(features, ratio))).abs().mean()
    return consistency + soft_maps.abs().mean()


def multiscale_mapping_loss(
    fusion_inputs: Sequence[torch.Tensor],
    soft_maps: torch.Tensor,
    refuse_fn: Callable[[list[torch.Tensor]], torch.Tensor],
    map_fn: Callable[[torch.Tensor], torch.Tensor],
    ratio: float,
) -> torch.Tensor:
    """Multi-scale mapping loss, MAProtoNet's L_map^s in Eq. 1/19 (SPEC §8).

    ``mean|A(M1(F)) - M1(fuse(A(f_1), ..., A(f_n)))| + mean|M1(F)|``: every feature map F is fused
    from is resized by r, F is re-fused from them, the mapping module re-run, and the result compared
    with the resized map. With a single input and an identity fusion this is :func:`mapping_loss`.

    Args:
        fusion_inputs: the tensors F_s is fused from, each `(B, C_i, H_i, W_i, D_i)`.
        soft_maps: M1(F_s) from the forward pass `(B, K_s, H_s, W_s, D_s)`.
        refuse_fn: fuses the resized inputs into features for ``map_fn``.
        map_fn: re-runs the mapping module (with its map activation) on features.
        ratio: the resize ratio r drawn for this batch.
    """
    resized = [resize_spatial(x, ratio) for x in fusion_inputs]
    consistency = (resize_spatial(soft_maps, ratio) - map_fn(refuse_fn(resized))).abs().mean()
    return consistency + soft_maps.abs().mean()


def lse_pool(x: torch.Tensor, sharpness: float = LSE_SHARPNESS) -> torch.Tensor:
    """Log-sum-exp pooling of Online-CAM: ``(logsumexp(r x) - log N) / r`` over voxels.

    Tends to the max for large r and to the mean for small r.

    Args:
        x: `(B, N_ch, H, W, D)`.
        sharpness: r.

    Returns:
        `(B, N_ch)`.
    """
    flat = x.flatten(start_dim=2)
    return (torch.logsumexp(sharpness * flat, dim=2) - math.log(flat.shape[2])) / sharpness


def online_cam_logits(
    hidden: torch.Tensor,
    w2: torch.Tensor,
    classifier_columns: torch.Tensor,
    sharpness: float = LSE_SHARPNESS,
) -> torch.Tensor:
    """Online-CAM class logits of one scale, for L_OC^s of Eq. 1/19 (MProtoNet definition).

    ``q = lse_pool(h) W2^T`` (the mapping module's second conv, bypassing its BN and sigmoid),
    then ``logits = q w_cls[:, columns of s]^T``.

    Args:
        hidden: h_s, output of the mapping module's first Conv+BN+ReLU `(B, 128, H_s, W_s, D_s)`.
        w2: second conv weight `(K_s, 128, 1, 1, 1)` or `(K_s, 128)`.
        classifier_columns: the classifier weight's columns of this scale `(C, K_s)`.
        sharpness: r of the log-sum-exp pooling.

    Returns:
        `(B, C)`.
    """
    w2 = w2.reshape(w2.shape[0], -1)
    if w2.shape[1] != hidden.shape[1] or classifier_columns.shape[1] != w2.shape[0]:
        raise ValueError(
            f"Online-CAM shapes disagree: hidden {tuple(hidden.shape)}, w2 {tuple(w2.shape)}, "
            f"classifier columns {tuple(classifier_columns.shape)}."
        )
    return lse_pool(hidden, sharpness) @ w2.t() @ classifier_columns.t()


def scale_agreement_loss(
    class_maps: Sequence[torch.Tensor],
    sharpness: float = 1.0,
    teacher_views: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Cross-scale agreement of one class's maps (not in the paper; ``agreement_weight`` of Stage1Loss).

    The teacher is the geometric mean of the scales' maps on the finest grid raised to ``sharpness``,
    normalised and detached; each scale's map is pulled towards the teacher average-pooled onto its own
    grid by ``KL(q_s || m_s) = sum q_s (log q_s - log m_s)``. With ``sharpness`` 1, maps that already
    agree are a fixed point (the geometric mean of equal maps is the map), so the term aligns the scales
    without sharpening them; with ``sharpness`` n_scales the teacher is the product of the scales' maps
    (the bundle's class map), sharper than any of them. ``teacher_views`` join the geometric mean but are
    not pulled: maps of the same cases from another view of the input, brought back onto its grid (the
    flipped view of :class:`~scripts.losses.composite.Stage1Loss`), so the teacher sits where the views
    agree.

    Args:
        class_maps: per scale, the class map m_s `(B, h_s, w_s, d_s)`, non-negative (each case's map is
            normalised to sum 1 here; a case whose map is zero at some scale is left out).
        sharpness: exponent of the geometric mean (> 0) of all the maps the teacher averages.
        teacher_views: further maps `(B, h, w, d)` on any grids, in the teacher only (a case whose map is
            zero in one of them is left out too).

    Returns:
        Scalar: the mean over scales and cases with a non-zero map.
    """
    if len(class_maps) < 2:
        raise ValueError(f"scale agreement needs maps of at least two scales, got {len(class_maps)}.")
    if sharpness <= 0:
        raise ValueError(f"sharpness must be > 0, got {sharpness}.")
    every = [*class_maps, *teacher_views]
    shapes = [tuple(m.shape[1:]) for m in every]
    if any(len(shape) != 3 for shape in shapes) or len({m.shape[0] for m in every}) != 1:
        raise ValueError(f"class maps must be (B, h, w, d) with one batch size, got {[tuple(m.shape) for m in every]}.")
    finest = max(shapes, key=math.prod)
    sums = [m.flatten(1).sum(1) for m in every]
    present = torch.stack(sums).gt(0).all(0)  # (B,)
    distributions = [m / s.clamp_min(PRODUCT_FLOOR).view(-1, 1, 1, 1) for m, s in zip(every, sums)]
    with torch.no_grad():
        logs = [resize_to_input(d.unsqueeze(1), finest).clamp_min(PRODUCT_FLOOR).log() for d in distributions]
        teacher = (sharpness * torch.stack(logs).mean(0)).exp()  # (B, 1, *finest); >= 1e-12 ** sharpness
    losses = []
    for m in distributions[: len(class_maps)]:
        q = F.adaptive_avg_pool3d(teacher, m.shape[1:])[:, 0]
        q = q / q.flatten(1).sum(1).clamp_min(PRODUCT_FLOOR).view(-1, 1, 1, 1)
        kl = (q * (q.clamp_min(PRODUCT_FLOOR).log() - m.clamp_min(PRODUCT_FLOOR).log())).flatten(1).sum(1)
        losses.append(kl)
    per_case = torch.stack(losses).mean(0)
    return (per_case * present).sum() / present.sum().clamp_min(1)
