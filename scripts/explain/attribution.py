"""Class attention maps M(x) of every model family for AP and IDS (SPEC §6, Appendix F.2). No ignite.

:func:`class_map` dispatches on the model's configuration (for prototype models through
:func:`class_map_from_maps`, which inference calls too, so a served map is the map that was evaluated):

- ``UMProtoShare`` with ``prototype_sharing="shared"``: Eq. 27–28 (:func:`scripts.maps.class_attention_map`
  on the maps M_s, ζ of Eq. 7 from the classifier).
- ``UMProtoShare`` with ``prototype_sharing="class_specific"`` (A1, XProtoNet, MProtoNet, MAProtoNet,
  ProtoPNet): Eq. 26 (:func:`scripts.maps.owned_prototype_map`) on each prototype scale's maps,
  summed over scales as in Eq. 28 (one scale for every configured model). The maps are each model's
  ``ScaleExplanation.maps``: Eq. 13 maps (A1), occurrence maps (XProtoNet, MProtoNet, MAProtoNet), or
  ProtoPNet's per-voxel similarity maps.
- ``BackboneCNN``: Grad-CAM (``monai.visualize.GradCAM``) at each scale's last add-on layer (its final
  activation, ReLU'd Grad-CAM of the target logit), upsampled to the input (trilinear,
  align_corners=False), min-max normalised per case and scale, then averaged over scales; or
  Occlusion (``monai.visualize.OcclusionSensitivity``, window 11, stride 5, baseline 0, raw logit of
  the target class).

Every map is on the input grid, (B, H, W, D), and larger means more important. MONAI's default
Grad-CAM post-processing maps (min, max) to (1, 0), flipping the order; it is replaced by a per-case
min-max to [0, 1] that keeps the most important voxel the largest (a constant map becomes zeros).

Occlusion, exactly: windows of 11 voxels on every spatial axis start at 0, 5, 10, … and, where the
axis is not covered exactly, one more window ends at the last voxel (MONAI's sliding-window grid,
``overlap = 1 − (stride + 0.5)/window = 0.5`` so that ``int(11 · (1 − overlap)) = 5``). Each window
sets all input channels to 0 at once; the voxel's attribution is the target logit of the intact image
minus the mean target logit over the occluded copies whose window covers the voxel (the Captum
convention the MProtoNet reference uses, except that its windows span one channel at a time). The
result is min-max normalised per case like Grad-CAM. An axis shorter than the window is an error.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from monai.networks.utils import eval_mode
from monai.utils import convert_to_tensor, look_up_option
from monai.visualize import GradCAM, OcclusionSensitivity
from torch import Tensor, nn

from scripts.data.foreground import brain_mask
from scripts.maps import DEFAULT_SCALE_COMBINATION, class_attention_map, owned_prototype_map
from scripts.metrics import min_max_normalize
from scripts.networks import BackboneCNN, Explanation, UMProtoShare, unwrap
from scripts.prototypes import soft_class_coefficients

__all__ = [
    "CLASS_MAP_METHODS",
    "OCCLUSION_STRIDE",
    "OCCLUSION_WINDOW",
    "class_map",
    "class_map_from_maps",
    "grad_cam_layers",
    "grad_cam_map",
    "normalise_per_case",
    "occlusion_map",
    "prototype_class_map",
    "scale_class_maps",
]

CLASS_MAP_METHODS = ("prototype_maps", "grad_cam", "occlusion")
"""``prototype_maps`` (prototype models), ``grad_cam`` (CNN), ``occlusion`` (any model)."""

_METHODS_BY_FAMILY = {UMProtoShare: ("prototype_maps", "occlusion"), BackboneCNN: ("grad_cam", "occlusion")}
"""Model class → its methods, the first being the default."""

OCCLUSION_WINDOW = 11
"""Occlusion window on every spatial axis (Appendix F.2)."""
OCCLUSION_STRIDE = 5
"""Occlusion stride on every spatial axis (Appendix F.2)."""


def _check_inputs(images: Tensor, target: Tensor | Sequence[int]) -> Tensor:
    """Target as a long tensor (B,) on the images' device; images must be (B, C, H, W, D)."""
    if images.ndim != 5:
        raise ValueError(f"images must be (B, C, H, W, D), got shape {tuple(images.shape)}.")
    target = torch.as_tensor(target, device=images.device).long().reshape(-1)
    if target.numel() != images.shape[0]:
        raise ValueError(f"target has {target.numel()} entries for a batch of {images.shape[0]} images.")
    return target


def normalise_per_case(maps: Tensor) -> Tensor:
    """Min-max of each case to [0, 1], the maximum becoming 1 (a constant case becomes zeros); (B, ...) → (B, ...)."""
    return torch.stack([min_max_normalize(case) for case in maps])


def scale_class_maps(
    model: UMProtoShare, maps_per_scale: Mapping[int, Tensor], target: Tensor | Sequence[int], size: Sequence[int]
) -> list[Tensor]:
    """Each prototype scale's class attention map on the input grid: Eq. 27 (ζ > 0 of a shared model) or
    Eq. 26 (the prototypes the class owns, class-specific models); zeros where the scale has none.

    Args:
        model: the UMProtoShare whose maps these are (its classifier and ownership decide the prototypes).
        maps_per_scale: prototype scale → its maps (B, K_s, h_s, w_s, d_s), as in ``model.explain``.
        target: class c of each case, (B,).
        size: (H, W, D) of the input grid.

    Returns:
        Per scale, ascending, (B, H, W, D).
    """
    target = torch.as_tensor(target).long().reshape(-1)
    if model.ownership is not None:
        owned = model.ownership * model.active_columns[:, None]  # a pruned prototype is no class's any more
        return [owned_prototype_map(maps, owned[model.columns(s)], target, size)
                for s, maps in sorted(maps_per_scale.items())]
    zeta = soft_class_coefficients(model.classifier.effective_weight)
    return [class_attention_map([maps], zeta[:, model.columns(s)], target, size)
            for s, maps in sorted(maps_per_scale.items())]


def class_map_from_maps(
    model: UMProtoShare,
    maps_per_scale: Mapping[int, Tensor],
    target: Tensor | Sequence[int],
    size: Sequence[int],
    combination: str = DEFAULT_SCALE_COMBINATION,
) -> Tensor:
    """The class attention map of a prototype model from its prototype maps: the one computation that
    evaluation (:func:`prototype_class_map`) and inference (:mod:`scripts.explain.case_files`) share.

    A shared model combines its scales as ``combination`` says (Eq. 27–28,
    :func:`scripts.maps.class_attention_map`); a class-specific one sums its scales' Eq. 26 maps
    (one scale for every configured model).

    Args:
        model, maps_per_scale, target, size: see :func:`scale_class_maps`.
        combination: :data:`scripts.maps.SCALE_COMBINATIONS` (shared models only).

    Returns:
        (B, H, W, D).
    """
    if model.ownership is not None:
        return torch.stack(scale_class_maps(model, maps_per_scale, target, size)).sum(dim=0)
    scales = sorted(maps_per_scale)
    target = torch.as_tensor(target).long().reshape(-1)
    zeta = soft_class_coefficients(model.classifier.effective_weight)
    return class_attention_map([maps_per_scale[s] for s in scales], zeta, target, size, combination)


def prototype_class_map(
    model: UMProtoShare,
    images: Tensor,
    target: Tensor | Sequence[int],
    combination: str = DEFAULT_SCALE_COMBINATION,
    explanation: Explanation | None = None,
) -> Tensor:
    """Class attention map of a prototype model from its explanation (:func:`class_map_from_maps`).

    Args:
        model: a UMProtoShare (any configuration); run in eval mode.
        images: (B, C_in, H, W, D).
        target: class c of each case (normally the ground truth), (B,).
        combination: how a shared model's scales are added (:data:`scripts.maps.SCALE_COMBINATIONS`).
        explanation: ``model.explain(images)`` in eval mode when already computed (one forward pass for
            several read-outs); None runs it here.

    Returns:
        (B, H, W, D).
    """
    target = _check_inputs(images, target)
    if explanation is None:
        with eval_mode(model):
            explanation = model.explain(images)
    maps = {entry.scale: entry.maps for entry in explanation.per_scale}
    return class_map_from_maps(model, maps, target, list(images.shape[2:]), combination)


def grad_cam_layers(model: BackboneCNN) -> list[str]:
    """Module names of each scale's last add-on layer (its final activation), ascending scale."""
    return [f"heads.scale{s}.addon.{len(model.heads[f'scale{s}'].addon) - 1}" for s in model.scales]


def grad_cam_map(model: nn.Module, images: Tensor, target: Tensor | Sequence[int], layers: Sequence[str]) -> Tensor:
    """Grad-CAM of the target logit at each of ``layers``, upsampled, normalised per case, averaged.

    Runs ``monai.visualize.GradCAM`` (weights = spatial mean of the gradient, ReLU of the weighted
    sum, trilinear upsampling) on a copy of ``model`` in eval mode, so that the hooks GradCAM
    registers (it keeps no handles) never reach ``model``; ``model`` itself is left untouched.

    Args:
        model: classifier whose forward gives logits (B, C).
        images: (B, C_in, H, W, D).
        target: class whose logit is explained, per case, (B,).
        layers: module names (``model.named_modules()``) whose output is explained.

    Returns:
        (B, H, W, D), each case in [0, 1].
    """
    target = _check_inputs(images, target)
    if not layers:
        raise ValueError("grad_cam_map needs at least one layer name.")
    names = dict(model.named_modules())
    missing = [name for name in layers if name not in names]
    if missing:
        raise ValueError(f"layers {missing} are not modules of {type(model).__name__}.")
    twin = copy.deepcopy(model).eval()
    cam = GradCAM(twin, target_layers=list(layers), postprocessing=normalise_per_case)
    maps = torch.zeros(images.shape[0], *images.shape[2:], device=images.device)
    with torch.enable_grad():
        for c in target.unique().tolist():
            rows = target == c
            inputs = images[rows].detach().clone().requires_grad_(True)
            per_layer = [cam(inputs, class_idx=c, layer_idx=i)[:, 0] for i in range(len(layers))]
            maps[rows] = torch.stack(per_layer).mean(dim=0).detach().to(maps.dtype)
    return maps


def occlusion_map(
    model: nn.Module,
    images: Tensor,
    target: Tensor | Sequence[int],
    window: int = OCCLUSION_WINDOW,
    stride: int = OCCLUSION_STRIDE,
    batch_size: int = 16,
) -> Tensor:
    """Occlusion sensitivity of the target logit (window, stride, baseline 0), normalised per case.

    See the module docstring for the window grid and the sign; ``batch_size`` occluded copies go
    through ``model`` per forward pass.

    Args:
        model: classifier whose forward gives logits (B, C).
        images: (B, C_in, H, W, D), every spatial size >= ``window``.
        target: class whose logit is explained, per case, (B,).
        window: window size on every spatial axis.
        stride: stride on every spatial axis, 1 <= stride <= window - 1.
        batch_size: occluded copies per forward pass.

    Returns:
        (B, H, W, D), each case in [0, 1].
    """
    target = _check_inputs(images, target)
    if not 1 <= stride < window:
        raise ValueError(f"occlusion needs 1 <= stride < window, got stride {stride} and window {window}.")
    if min(images.shape[2:]) < window:
        raise ValueError(f"images {tuple(images.shape[2:])} are smaller than the occlusion window {window}.")
    overlap = 1.0 - (stride + 0.5) / window
    occlusion = OcclusionSensitivity(
        model, mask_size=window, n_batch=batch_size, verbose=False, mode=0.0, overlap=overlap, activate=False
    )
    maps = []
    with eval_mode(model):
        for image, c in zip(images, target.tolist()):
            intact = model(image[None])[0, c]
            occluded = occlusion(image[None])[0][0, c]
            maps.append(intact - convert_to_tensor(occluded, track_meta=False))
    return normalise_per_case(torch.stack(maps).float())


def class_map(
    model: nn.Module,
    images: Tensor,
    target: Tensor | Sequence[int],
    method: str | None = None,
    combination: str = DEFAULT_SCALE_COMBINATION,
    brain_only: bool = False,
    explanation: Explanation | None = None,
) -> Tensor:
    """Class attention map M(x) of the target class on the input grid, for AP and IDS (SPEC §6).

    Args:
        model: a UMProtoShare (any configuration) or a BackboneCNN, optionally DDP/DataParallel-wrapped.
        images: (B, C_in, H, W, D).
        target: class c of each case, normally the ground truth, (B,).
        method: one of :data:`CLASS_MAP_METHODS` allowed for the model: ``prototype_maps`` (default)
            or ``occlusion`` for a UMProtoShare; ``grad_cam`` (default) or ``occlusion`` for a CNN.
        combination: how ``prototype_maps`` adds a shared model's scales
            (:data:`scripts.maps.SCALE_COMBINATIONS`).
        brain_only: set the map to its minimum outside the brain (:func:`scripts.data.foreground.brain_mask` of
            each image), for every method alike.
        explanation: for ``prototype_maps``, ``model.explain(images)`` (eval mode) when already computed.

    Returns:
        (B, H, W, D); larger is more important.
    """
    model = unwrap(model)
    family = next((cls for cls in _METHODS_BY_FAMILY if isinstance(model, cls)), None)
    if family is None:
        raise TypeError(f"class_map needs a UMProtoShare or a BackboneCNN, got {type(model).__name__}.")
    allowed = _METHODS_BY_FAMILY[family]
    method = allowed[0] if method is None else look_up_option(method, CLASS_MAP_METHODS)
    if method not in allowed:
        raise ValueError(f"method '{method}' does not apply to a {family.__name__}; use one of {allowed}.")
    if method == "prototype_maps":
        maps = prototype_class_map(model, images, target, combination, explanation)
    elif method == "grad_cam":
        maps = grad_cam_map(model, images, target, grad_cam_layers(model))
    else:
        maps = occlusion_map(model, images, target)
    if not brain_only:
        return maps
    brain = torch.stack([brain_mask(image) for image in images]).to(maps.device)
    floor = maps.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
    return torch.where(brain, maps, floor)
