"""MONAI transforms from NIfTI files to network input (SPEC section 5), training augmentation, datasets.

``preprocessing_transforms`` is deterministic (cached on disk by ``make_dataset``);
``augmentation_transforms`` is random and for training only.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Hashable, Mapping, Sequence
from enum import Enum
from functools import partial
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import Dataset, ImageReader, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Lambdad,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrast,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmooth,
    RandomizableTransform,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolution,
    RandZoomd,
    Resized,
    ResizeWithPadOrCropd,
    SelectItemsd,
    Spacingd,
)

from .foreground import foreground_mask

__all__ = [
    "CACHED_KEYS",
    "CACHED_TENSOR_KEYS",
    "FOREGROUND_KEY",
    "WHOLE_TUMOUR_LABELS",
    "FlattenBackgroundd",
    "RandChannelwised",
    "RecordForegroundd",
    "augmentation_transforms",
    "make_dataset",
    "output_size",
    "preprocessing_transforms",
    "whole_tumour",
]

WHOLE_TUMOUR_LABELS = (1, 2, 4)
"""BraTS labels merged into the whole-tumour mask: 1 necrosis/non-enhancing, 2 oedema, 4 enhancing."""
CACHED_KEYS = ("case_id", "image", "mask", "label")
"""Item keys that identify a cached preprocessed case."""


def whole_tumour(label_map: torch.Tensor, labels: Sequence[int] = WHOLE_TUMOUR_LABELS) -> torch.Tensor:
    """Binary whole-tumour mask, 1.0 where ``label_map`` is one of ``labels``; shape unchanged."""
    values = torch.as_tensor(labels, dtype=label_map.dtype, device=label_map.device)
    return torch.isin(label_map, values).to(torch.float32)


def output_size(roi_size: Sequence[int], source_spacing: float, target_spacing: float) -> tuple[int, ...]:
    """Grid size after resampling ``roi_size`` voxels of ``source_spacing`` mm to ``target_spacing`` mm."""
    return tuple(round(n * source_spacing / target_spacing) for n in roi_size)


def preprocessing_transforms(
    with_mask: bool = False,
    roi_size: Sequence[int] = (192, 192, 144),
    source_spacing: float = 1.0,
    target_spacing: float = 1.5,
    image_key: str = "image",
    mask_key: str = "mask",
    tumour_labels: Sequence[int] = WHOLE_TUMOUR_LABELS,
    keep_keys: Sequence[str] = ("case_id", "label"),
) -> Compose:
    """Files to tensors: load, RAS, crop/pad centred on the brain, resample, z-score (SPEC section 5).

    The item's ``image`` (four paths, [T1, T1-CE, T2, FLAIR]) is loaded with nibabel as a
    ``(4, H, W, D)`` stack, oriented to RAS and resampled to ``source_spacing`` mm (a no-op for BraTS);
    the bounding box of voxels > 0 in any sequence (the skull-stripped brain) is cropped and padded
    (with 0) or cropped symmetrically to ``roi_size``, so the brain's box sits in the centre; the
    result is resized to ``output_size(roi_size, source_spacing, target_spacing)`` (trilinear), and
    each sequence is z-scored over the whole volume, background included. Defaults give
    ``(4, 128, 128, 96)`` at 1.5 mm. With ``with_mask`` (evaluation only) ``mask`` is loaded too,
    reduced to the whole tumour (``tumour_labels``) and given the same geometry with nearest
    neighbour (``nearest-exact``), as ``(1, ...)`` float 0/1. The output keeps ``image``, ``mask``
    when loaded, and ``keep_keys`` that the item has.
    """
    keys = [image_key, mask_key] if with_mask else [image_key]
    spacing_modes = ["bilinear", "nearest"][: len(keys)]
    size = output_size(roi_size, source_spacing, target_spacing)
    transforms = [LoadImaged(keys, reader="NibabelReader", image_only=True, ensure_channel_first=True)]
    if with_mask:
        transforms.append(Lambdad(mask_key, func=partial(whole_tumour, labels=tuple(tumour_labels))))
    transforms += [
        Orientationd(keys, axcodes="RAS", labels=None),
        Spacingd(keys, pixdim=source_spacing, mode=spacing_modes),
        CropForegroundd(keys, source_key=image_key, allow_smaller=True),
        ResizeWithPadOrCropd(keys, spatial_size=tuple(roi_size)),
    ]
    if size != tuple(roi_size):
        transforms.append(Resized(keys, spatial_size=size, mode=["trilinear", "nearest-exact"][: len(keys)]))
    transforms += [
        NormalizeIntensityd(image_key, nonzero=False, channel_wise=True),
        EnsureTyped(keys, dtype=torch.float32),
        SelectItemsd([*keys, *keep_keys], allow_missing_keys=True),
    ]
    return Compose(transforms)


FOREGROUND_KEY = "foreground"
"""Item key under which :class:`RecordForegroundd` keeps the brain mask for :class:`FlattenBackgroundd`."""


class RecordForegroundd(MapTransform):
    """Store the brain mask of ``image`` (C, H, W, D) under ``foreground_key``, (1, H, W, D) bool.

    Placed after the spatial augmentations (which keep the constant background constant: border
    padding, interpolation of a constant) and before the intensity ones (noise, blur), which do not.
    """

    def __init__(self, keys: KeysCollection, foreground_key: str = FOREGROUND_KEY) -> None:
        super().__init__(keys)
        self.foreground_key = foreground_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        key = self.first_key(d)
        d[self.foreground_key] = foreground_mask(torch.as_tensor(d[key])[None])[0]
        return d


class FlattenBackgroundd(MapTransform):
    """Set every voxel outside the stored brain mask to its channel's minimum, then drop the mask.

    After noise, blur or low-resolution simulation the background is no longer constant; a
    skull-stripped scan's is, and the network's brain mask (``map_support="brain"``) relies on it. The
    minimum over the whole augmented channel lies at or below every brain voxel, so the brain found in
    the augmented image is the stored one (a brain voxel equal to the minimum, possible only under
    noise, drops out). The monotone intensity transforms (brightness, contrast, gamma) keep a constant
    background constant by themselves; this makes it hold for all of them.
    """

    def __init__(self, keys: KeysCollection, foreground_key: str = FOREGROUND_KEY) -> None:
        super().__init__(keys)
        self.foreground_key = foreground_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        brain = torch.as_tensor(d.pop(self.foreground_key)).bool()
        for key in self.key_iterator(d):
            image = d[key]
            floor = image.flatten(1).amin(dim=1).view(-1, *([1] * (image.ndim - 1)))
            d[key] = torch.where(brain, image, floor.to(image.dtype))
        return d


class RandChannelwised(RandomizableTransform, MapTransform):
    """Apply a random array transform to each channel separately, as nnU-Net's per-channel augmentations.

    With probability ``prob`` per sample, each channel is transformed with probability
    ``prob_per_channel``, drawing its own parameters; ``transform`` itself should have ``prob=1``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        transform: RandomizableTransform,
        prob: float,
        prob_per_channel: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.transform = transform
        self.prob_per_channel = prob_per_channel
        self.transform.set_random_state(state=self.R)

    def set_random_state(self, seed: int | None = None, state=None) -> RandChannelwised:
        """Seed this transform and share its generator with the wrapped one."""
        super().set_random_state(seed, state)
        self.transform.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Transform the selected channels of each key's ``(C, H, W, D)`` tensor."""
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            channels = [image[c : c + 1] for c in range(image.shape[0])]
            chosen = self.R.random_sample(len(channels)) < self.prob_per_channel
            d[key] = torch.cat([self.transform(ch) if pick else ch for ch, pick in zip(channels, chosen)])
        return d


def _factor_range(multipliers: tuple[float, float]) -> tuple[float, float]:
    """MONAI's ``v * (1 + factor)`` range for a multiplier range: (0.75, 1.25) -> (-0.25, 0.25)."""
    return multipliers[0] - 1.0, multipliers[1] - 1.0


def augmentation_transforms(
    image_key: str = "image",
    rotate_degrees: float = 30.0,
    rotate_prob: float = 0.2,
    scale_range: tuple[float, float] = (0.7, 1.4),
    scale_prob: float = 0.2,
    noise_std: float = 0.1,
    noise_prob: float = 0.1,
    blur_sigma: tuple[float, float] = (0.5, 1.0),
    blur_prob: float = 0.2,
    blur_prob_per_channel: float = 0.5,
    brightness_range: tuple[float, float] = (0.75, 1.25),
    brightness_prob: float = 0.15,
    contrast_range: tuple[float, float] = (0.75, 1.25),
    contrast_prob: float = 0.15,
    low_resolution_zoom: tuple[float, float] = (0.5, 1.0),
    low_resolution_prob: float = 0.25,
    low_resolution_prob_per_channel: float = 0.5,
    gamma_range: tuple[float, float] = (0.7, 1.5),
    gamma_inverted_prob: float = 0.1,
    gamma_prob: float = 0.3,
    flip_prob: float = 0.5,
) -> Compose:
    """The eight nnU-Net augmentations (SPEC section 5) on ``image`` ``(C, H, W, D)``, training only.

    In nnU-Net's order: (i) rotation, each axis uniform in +-``rotate_degrees``, and isotropic
    scaling in ``scale_range`` (``RandZoomd``: nnU-Net scales all axes by one factor, ``RandAffine``
    would draw one per axis), each with its own probability; (ii) Gaussian noise, sigma uniform in
    [0, ``noise_std``]; (iii) Gaussian blur, sigma per axis in ``blur_sigma``, each channel with
    ``blur_prob_per_channel``; (iv) multiplicative brightness and (v) contrast about the mean
    (range preserved), one factor per channel; (vi) low-resolution simulation (nearest down,
    trilinear up), each channel with ``low_resolution_prob_per_channel`` as nnU-Net; (vii) gamma
    on the inverted then the plain image, per channel, mean and std retained; (viii) a flip on each
    axis. Out-of-volume voxels take the border value (the background after z-scoring). The background
    is set back to one constant per channel before the flips (:class:`FlattenBackgroundd`), so the
    brain mask of an augmented image is that of the image after (i).
    """
    key = image_key
    rotate = math.radians(rotate_degrees)
    gamma = [RandAdjustContrast(1.0, gamma_range, invert_image=invert, retain_stats=True) for invert in (True, False)]
    return Compose(
        [
            RandAffined(key, prob=rotate_prob, rotate_range=[rotate] * 3, padding_mode="border"),
            RandZoomd(
                key, prob=scale_prob, min_zoom=scale_range[0], max_zoom=scale_range[1], mode="trilinear",
                padding_mode="edge", keep_size=True,
            ),
            RecordForegroundd(key),
            RandGaussianNoised(key, prob=noise_prob, mean=0.0, std=noise_std, sample_std=True),
            RandChannelwised(
                key, RandGaussianSmooth(blur_sigma, blur_sigma, blur_sigma, prob=1.0), prob=blur_prob,
                prob_per_channel=blur_prob_per_channel,
            ),
            RandScaleIntensityd(key, factors=_factor_range(brightness_range), prob=brightness_prob, channel_wise=True),
            RandScaleIntensityFixedMeand(
                key, factors=_factor_range(contrast_range), fixed_mean=True, preserve_range=True,
                prob=contrast_prob, channel_wise=True,
            ),
            RandChannelwised(
                key, RandSimulateLowResolution(prob=1.0, zoom_range=low_resolution_zoom), prob=low_resolution_prob,
                prob_per_channel=low_resolution_prob_per_channel,
            ),
            RandChannelwised(key, gamma[0], prob=gamma_inverted_prob),
            RandChannelwised(key, gamma[1], prob=gamma_prob),
            FlattenBackgroundd(key),
            *(RandFlipd(key, prob=flip_prob, spatial_axis=axis) for axis in range(3)),
        ]
    )


def _settings(obj: Any, depth: int = 0) -> Any:
    """JSON-ready description of a transform's configuration: class names and setting values.

    Run-time state is left out (readers, which remember the last files read, are described by
    class; thread-local flags are skipped) and nesting stops at depth 4, so the description is the
    same before and after use.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, (list, tuple, set)):
        return [_settings(v, depth) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _settings(v, depth) for k, v in sorted(obj.items(), key=str)}
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return np.asarray(obj).tolist()
    if isinstance(obj, partial):
        return [_settings(obj.func), _settings(obj.args), _settings(obj.keywords)]
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    name = type(obj).__qualname__
    if not hasattr(obj, "__dict__"):
        return f"{name}:{obj}"
    if isinstance(obj, ImageReader) or depth > 3:
        return name
    fields = {k: v for k, v in sorted(vars(obj).items()) if not isinstance(v, threading.local)}
    return {"type": name, **{k: _settings(v, depth + 1) for k, v in fields.items()}}


def _transform_hash(transforms: Sequence) -> bytes:
    """Cache key part for the deterministic transforms that ``PersistentDataset`` caches."""
    text = json.dumps(_settings(list(transforms)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest().encode()


def _case_hash(item: Mapping) -> bytes:
    """Cache key of an item: its case id, files and label, not its fold or other bookkeeping."""
    return pickle_hashing({k: item[k] for k in CACHED_KEYS if k in item})


CACHED_TENSOR_KEYS = ("image", "mask")


def make_dataset(
    items: Sequence[dict],
    preprocessing: Compose,
    augmentation: Compose | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """Dataset applying ``preprocessing`` then ``augmentation``; the preprocessed case cached on disk.

    With ``cache_dir``, a ``PersistentDataset`` stores each case's preprocessing output under a key
    built from its case id, file paths and label plus the preprocessing settings, so later epochs
    and later runs read one ``.pt`` per case instead of the NIfTI files; augmentation runs after
    the cache on every access. Files changed in place keep their old cache entry: clear
    ``cache_dir`` then.
    """
    transforms = list(preprocessing.flatten().transforms)
    if cache_dir is not None:
        # The cache keeps plain tensors (MetaTensors do not load with weights_only=True): drop the
        # metadata on fresh cases too, so that a batch mixing cached and fresh cases collates.
        transforms.append(EnsureTyped(keys=CACHED_TENSOR_KEYS, track_meta=False, allow_missing_keys=True))
    if augmentation is not None:
        transforms += list(augmentation.flatten().transforms)
    transform = Compose(transforms)
    if cache_dir is None:
        return Dataset(list(items), transform)
    return PersistentDataset(list(items), transform, cache_dir, hash_func=_case_hash, hash_transform=_transform_hash)
