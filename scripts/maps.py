"""From network output to maps on the input grid: the one resize, class attention maps (Eq. 26–28).

A leaf module (PyTorch only), so that metrics, push and every read-out in :mod:`scripts.explain`
resample and combine maps the same way. Conventions fixed here where the paper is silent: resampling
is (tri)linear with ``align_corners=False``; a scale or class with no supporting prototype gives zeros.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_SCALE_COMBINATION",
    "PRODUCT_FLOOR",
    "SCALE_COMBINATIONS",
    "class_attention_map",
    "owned_prototype_map",
    "resize_to_input",
]


_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


def resize_to_input(maps: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """The one resampling of maps to the input grid: (B, K, *spatial) -> (B, K, *out_size), float.

    (Bi/tri)linear with ``align_corners=False`` (``torch.nn.functional.interpolate``'s convention,
    which the MProtoNet reference inherits from Captum); maps already on ``out_size`` are returned as
    they are (the interpolation would be the identity).
    """
    out_size = tuple(int(s) for s in out_size)
    if maps.ndim != len(out_size) + 2 or len(out_size) not in _MODES:
        raise ValueError(
            f"maps must be (B, K, *spatial) with one spatial dim per entry of out_size {list(out_size)} "
            f"(1 to 3), got shape {tuple(maps.shape)}."
        )
    if tuple(maps.shape[2:]) == out_size:
        return maps.float()
    return F.interpolate(maps.float(), size=out_size, mode=_MODES[len(out_size)], align_corners=False)


def _mean_selected(maps: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Mean over the selected maps of each case; zeros where a case selects none.

    Args:
        maps: (B, K, h, w, d).
        selected: bool (B, K).

    Returns:
        (B, 1, h, w, d).
    """
    weights = selected.to(device=maps.device, dtype=maps.dtype)
    total = torch.einsum("bk,bk...->b...", weights, maps).unsqueeze(1)
    count = weights.sum(1).clamp_min(1).view(-1, 1, 1, 1, 1)
    return total / count


def _check_maps(maps: torch.Tensor, name: str) -> None:
    if maps.ndim != 5:
        raise ValueError(f"{name} must be (B, K, h, w, d), got shape {tuple(maps.shape)}.")


def _select_rows(table: torch.Tensor, target_class: torch.Tensor, batch: int) -> torch.Tensor:
    target_class = torch.as_tensor(target_class, device=table.device).long().reshape(-1)
    if target_class.numel() != batch:
        raise ValueError(f"target_class has {target_class.numel()} entries for a batch of {batch}.")
    if target_class.min() < 0 or target_class.max() >= table.shape[0]:
        raise ValueError(f"target_class {target_class.tolist()} outside [0, {table.shape[0]}).")
    return table[target_class]


SCALE_COMBINATIONS = ("sum", "density", "product")
"""How :func:`class_attention_map` combines the scales: ``sum`` (Eq. 28 as printed, maps as given),
``density`` (each scale's mean map times its voxel count, so an ℓ1-normalised map of any stride has
mean 1 and every scale weighs alike, then summed) or ``product`` (the product of the scales' maps:
high only where every scale agrees; each scale's normalisation becomes one constant factor)."""
DEFAULT_SCALE_COMBINATION = "product"
"""The bundle's class map (the configs' ``scale_combination``); ``sum`` is the paper's Eq. 28."""
PRODUCT_FLOOR = 1e-12
"""Floor of a map value before its logarithm in the ``product`` combination."""


def class_attention_map(
    maps_per_scale: Sequence[torch.Tensor],
    zeta: torch.Tensor,
    target_class: torch.Tensor,
    out_size: Sequence[int],
    combination: str = DEFAULT_SCALE_COMBINATION,
) -> torch.Tensor:
    """UM-ProtoShare class attention map over the supporting prototypes K+_(s,c) (Eq. 27–28).

    For each scale s, the maps of prototypes with ζ_{c,p} > 0 are averaged (unweighted), the mean is
    upsampled to ``out_size`` (trilinear, align_corners=False), and the scales are summed. A scale
    with no supporting prototype for c contributes zero. With ``combination="sum"`` the maps are
    used as given (Eq. 28); ℓ1-normalised maps (Eq. 13) then weigh a scale by its stride cubed, so
    the coarsest dominates. ``"density"`` multiplies scale s's mean map by its voxel count
    h_s·w_s·d_s first, so that every scale enters with mean 1. ``"product"`` multiplies the
    upsampled scale maps (values floored at :data:`PRODUCT_FLOOR`, in log space) over the scales
    that support c for that case (zeros where none does).

    Args:
        maps_per_scale: per scale, prototype maps (B, K_s, h_s, w_s, d_s).
        zeta: soft class-prototype coefficients (C, K_total), columns ordered by scale then k.
        target_class: class c of each case (normally the ground truth), (B,).
        out_size: (H, W, D) of the input grid.
        combination: one of :data:`SCALE_COMBINATIONS`.

    Returns:
        (B, H, W, D).
    """
    if combination not in SCALE_COMBINATIONS:
        raise ValueError(f"combination must be one of {SCALE_COMBINATIONS}, got {combination!r}.")
    for s, maps in enumerate(maps_per_scale):
        _check_maps(maps, f"maps_per_scale[{s}]")
    widths = [maps.shape[1] for maps in maps_per_scale]
    if zeta.ndim != 2 or zeta.shape[1] != sum(widths):
        raise ValueError(f"zeta must be (C, K_total = {sum(widths)}) for K_s = {widths}, got {tuple(zeta.shape)}.")
    batch = maps_per_scale[0].shape[0]
    supports = _select_rows(zeta, target_class, batch) > 0
    columns = torch.split(supports, widths, dim=1)
    total, supported = 0, 0
    for maps, cols in zip(maps_per_scale, columns):
        scale_map = resize_to_input(_mean_selected(maps, cols), out_size)
        if combination == "product":
            present = cols.any(dim=1).to(scale_map.dtype).view(-1, 1, 1, 1, 1)
            total = total + present * scale_map.clamp_min(PRODUCT_FLOOR).log()
            supported = supported + present
        else:
            total = total + (math.prod(maps.shape[2:]) if combination == "density" else 1) * scale_map
    if combination == "product":
        total = torch.where(supported > 0, total.exp(), torch.zeros_like(total))
    return total[:, 0]


def owned_prototype_map(
    maps: torch.Tensor, ownership: torch.Tensor, target_class: torch.Tensor, out_size: Sequence[int]
) -> torch.Tensor:
    """Class attention map of a class-specific model: mean of the class-c prototypes' maps (Eq. 26).

    Used for XProtoNet, MProtoNet and MAProtoNet (and ProtoPNet's similarity maps). The mean is
    upsampled to ``out_size`` (trilinear, align_corners=False); a class owning no prototype gives zeros.

    Args:
        maps: prototype maps (B, K, h, w, d).
        ownership: prototype-class identity (K, C); prototype k belongs to c where entry > 0.
        target_class: class c of each case (normally the ground truth), (B,).
        out_size: (H, W, D) of the input grid.

    Returns:
        (B, H, W, D).
    """
    _check_maps(maps, "maps")
    if ownership.ndim != 2 or ownership.shape[0] != maps.shape[1]:
        raise ValueError(f"ownership must be (K = {maps.shape[1]}, C), got {tuple(ownership.shape)}.")
    owned = _select_rows(ownership.T, target_class, maps.shape[0]) > 0
    return resize_to_input(_mean_selected(maps, owned), out_size)[:, 0]
