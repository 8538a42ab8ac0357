"""Preprocessing geometry and normalisation, the disk cache, and the eight augmentations."""

from __future__ import annotations

import math
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from monai.transforms import (
    RandAdjustContrast,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmooth,
    RandomizableTrait,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolution,
    RandZoomd,
)

from scripts.data import (
    FlattenBackgroundd,
    RandChannelwised,
    RecordForegroundd,
    augmentation_transforms,
    build_datalist,
    generate_dataset,
    make_dataset,
    output_size,
    preprocessing_transforms,
    whole_tumour,
)

SMALL = {"roi_size": (40, 40, 32), "source_spacing": 1.0, "target_spacing": 2.0}  # -> 20 x 20 x 16


@pytest.fixture(scope="module")
def data_items(data_synthetic_root):
    return build_datalist(data_synthetic_root, num_folds=2, check_voxels=False)["training"]


def _world(affine: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    return affine[:3, :3] @ voxel + affine[:3, 3]


def test_whole_tumour_merges_labels_1_2_4():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    assert whole_tumour(labels).tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_output_size_of_the_spec_grid():
    assert output_size((192, 192, 144), 1.0, 1.5) == (128, 128, 96)


def test_preprocessing_gives_configured_size_and_z_scores_each_sequence(data_items):
    out = preprocessing_transforms(**SMALL)(data_items[0])
    assert set(out) == {"image", "case_id", "label"}  # no mask unless asked for
    assert out["image"].shape == (4, 20, 20, 16) and out["image"].dtype == torch.float32
    assert torch.allclose(out["image"].mean(dim=(1, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(out["image"].std(dim=(1, 2, 3), unbiased=False), torch.ones(4), atol=1e-4)
    assert out["case_id"] == data_items[0]["case_id"] and out["label"] == data_items[0]["label"]


def test_preprocessing_spec_size_from_a_full_size_case(tmp_path):
    generate_dataset(tmp_path, cases=1, seed=5)
    case = tmp_path / "BraTS20_Training_001" / "BraTS20_Training_001"
    item = {"case_id": "c", "image": [f"{case}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")],
            "mask": f"{case}_seg.nii.gz"}
    out = preprocessing_transforms(with_mask=True)(item)
    assert out["image"].shape == (4, 128, 128, 96) and out["mask"].shape == (1, 128, 128, 96)
    affine = out["image"].affine.numpy()
    assert np.allclose(np.diag(affine)[:3], 1.5) and nib.aff2axcodes(affine) == ("R", "A", "S")  # from LPS input


def test_mask_lands_on_the_tumour(data_items):
    for item in data_items[:4]:
        out = preprocessing_transforms(with_mask=True, **SMALL)(item)
        mask, image = out["mask"][0], out["image"]
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0} and mask.sum() > 0
        # centroid of the whole tumour in world (mm) coordinates, before and after
        seg = nib.load(item["mask"])
        before = _world(seg.affine, np.argwhere(seg.get_fdata() > 0).mean(0))
        after = _world(out["mask"].affine.numpy(), np.argwhere(mask.numpy() > 0).mean(0))
        assert np.linalg.norm(before - after) < 2.0  # under one 2 mm voxel
        # FLAIR and T2 are brighter in the tumour (oedema, core) than in the rest of the brain
        brain = (image[3] > image[3].min()) & (mask == 0)
        assert image[3][mask > 0].mean() > image[3][brain].mean() + 0.5
        assert image[2][mask > 0].mean() > image[2][brain].mean()


def test_preprocessing_centres_the_brain_even_when_it_is_off_centre(data_items, tmp_path):
    item = dict(data_items[0])
    moved = []
    for path in item["image"]:
        volume = nib.load(path)
        # a margin of background first (the phantom brain nearly fills its grid), then the brain moved off centre
        padded = np.pad(np.asanyarray(volume.dataobj), 6)
        shifted = np.roll(padded, (5, -4, 3), axis=(0, 1, 2))  # background is 0
        moved.append(str(tmp_path / path.rsplit("/", 1)[1]))
        nib.save(nib.Nifti1Image(shifted, volume.affine), moved[-1])
    for paths in (item["image"], moved):
        image = preprocessing_transforms(**SMALL)({"image": paths})["image"]
        brain = np.argwhere((image[0] > image[0].min()).numpy())
        centre = (brain.min(0) + brain.max(0)) / 2
        assert np.all(np.abs(centre - (np.array(image.shape[1:]) - 1) / 2) <= 1.0)


def test_mask_is_not_opened_without_with_mask(data_items, monkeypatch):
    opened = []
    load = nib.load
    monkeypatch.setattr(nib, "load", lambda name, *a, **k: opened.append(str(name)) or load(name, *a, **k))
    preprocessing_transforms(**SMALL)(data_items[0])
    assert sorted(opened) == sorted(data_items[0]["image"])


def test_cached_second_pass_does_not_read_nifti(data_items, tmp_path):
    case_dir = tmp_path / "case"
    shutil.copytree(data_items[0]["image"][0].rsplit("/", 1)[0], case_dir)
    item = {**data_items[0], "image": [str(case_dir / p.rsplit("/", 1)[1]) for p in data_items[0]["image"]]}
    pre = preprocessing_transforms(**SMALL)
    first = make_dataset([item], pre, cache_dir=str(tmp_path / "cache"))[0]
    shutil.rmtree(case_dir)  # a second pass that read NIfTI would fail now
    again = make_dataset([item], preprocessing_transforms(**SMALL), cache_dir=str(tmp_path / "cache"))[0]
    assert torch.equal(torch.as_tensor(again["image"]), torch.as_tensor(first["image"]))
    augmented = make_dataset([item], pre, augmentation_transforms(), cache_dir=str(tmp_path / "cache"))[0]
    assert augmented["image"].shape == first["image"].shape
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1  # augmentation runs after the cache


def test_fresh_and_cached_cases_collate_into_one_batch(data_items, tmp_path):
    cache = str(tmp_path / "cache")
    make_dataset([data_items[0]], preprocessing_transforms(**SMALL), cache_dir=cache)[0]  # cached now
    dataset = make_dataset(data_items[:2], preprocessing_transforms(**SMALL), cache_dir=cache)
    fresh, cached = dataset[1], dataset[0]
    assert type(fresh["image"]) is type(cached["image"])
    batch = list_data_collate([cached, fresh])
    assert batch["image"].shape[0] == 2


def test_cache_key_follows_preprocessing_settings_not_fold(data_items, tmp_path):
    cache = str(tmp_path / "cache")
    make_dataset([data_items[0]], preprocessing_transforms(**SMALL), cache_dir=cache)[0]
    make_dataset([{**data_items[0], "fold": 9}], preprocessing_transforms(**SMALL), cache_dir=cache)[0]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    other = {**SMALL, "roi_size": (32, 32, 32)}
    out = make_dataset([data_items[0]], preprocessing_transforms(**other), cache_dir=cache)[0]
    assert out["image"].shape == (4, 16, 16, 16)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_preprocessing_has_no_random_step():
    pre = preprocessing_transforms(with_mask=True).flatten().transforms
    assert not any(isinstance(t, RandomizableTrait) for t in pre)


def test_augmentation_has_the_eight_nnunet_operations_with_spec_parameters():
    ops = augmentation_transforms().transforms
    rotate, zoom, record, noise, blur, bright, contrast, low_res, gamma_inv, gamma, flatten, *flips = ops
    # the background is made constant again between the spatial and intensity ops and the flips
    assert isinstance(record, RecordForegroundd) and isinstance(flatten, FlattenBackgroundd)
    assert isinstance(rotate, RandAffined) and rotate.prob == 0.2
    assert np.allclose(rotate.rand_affine.rand_affine_grid.rotate_range, [math.pi / 6] * 3)  # +-30 degrees
    assert isinstance(zoom, RandZoomd) and zoom.prob == 0.2
    assert (zoom.rand_zoom.min_zoom, zoom.rand_zoom.max_zoom) == ((0.7,), (1.4,))  # one factor, all axes
    assert isinstance(noise, RandGaussianNoised) and noise.prob == 0.1
    assert noise.rand_gaussian_noise.std == 0.1 and noise.rand_gaussian_noise.sample_std
    assert isinstance(blur, RandChannelwised) and (blur.prob, blur.prob_per_channel) == (0.2, 0.5)
    assert isinstance(blur.transform, RandGaussianSmooth) and blur.transform.sigma_x == (0.5, 1.0)
    assert blur.transform.sigma_z == (0.5, 1.0)
    assert isinstance(bright, RandScaleIntensityd) and bright.prob == 0.15
    assert bright.scaler.factors == (-0.25, 0.25) and bright.scaler.channel_wise
    assert isinstance(contrast, RandScaleIntensityFixedMeand) and contrast.prob == 0.15
    assert contrast.scaler.factors == (-0.25, 0.25) and contrast.scaler.preserve_range and contrast.scaler.fixed_mean
    assert isinstance(low_res, RandChannelwised) and (low_res.prob, low_res.prob_per_channel) == (0.25, 0.5)
    assert isinstance(low_res.transform, RandSimulateLowResolution) and low_res.transform.zoom_range == (0.5, 1.0)
    for op, prob, inverted in ((gamma_inv, 0.1, True), (gamma, 0.3, False)):
        assert isinstance(op, RandChannelwised) and (op.prob, op.prob_per_channel) == (prob, 1.0)
        assert isinstance(op.transform, RandAdjustContrast) and op.transform.gamma == (0.7, 1.5)
        assert op.transform.invert_image is inverted and op.transform.retain_stats
    assert [type(f) for f in flips] == [RandFlipd] * 3 and all(f.prob == 0.5 for f in flips)
    assert [f.flipper.spatial_axis for f in flips] == [0, 1, 2]


OPS = {
    "rotate": "rotate_prob", "scale": "scale_prob", "noise": "noise_prob", "blur": "blur_prob",
    "brightness": "brightness_prob", "contrast": "contrast_prob", "low_resolution": "low_resolution_prob",
    "gamma_inverted": "gamma_inverted_prob", "gamma": "gamma_prob", "flip": "flip_prob",
}


@pytest.fixture(scope="module")
def data_preprocessed(data_items):
    return preprocessing_transforms(**SMALL)(data_items[1])


def _augment(image: torch.Tensor, seed: int = 0, **probs) -> torch.Tensor:
    settings = {p: 0.0 for p in OPS.values()} | {"blur_prob_per_channel": 1.0, "low_resolution_prob_per_channel": 1.0}
    aug = augmentation_transforms(**(settings | probs))
    aug.set_random_state(seed)
    return aug({"image": image.clone()})["image"]


def test_augmentation_with_all_probabilities_zero_is_the_identity(data_preprocessed):
    image = data_preprocessed["image"]
    assert torch.equal(torch.as_tensor(_augment(image)), torch.as_tensor(image))


@pytest.mark.parametrize("op", sorted(OPS))
def test_each_augmentation_changes_the_image_and_keeps_its_shape(data_preprocessed, op):
    image = data_preprocessed["image"]
    out = _augment(image, **{OPS[op]: 1.0})
    assert out.shape == image.shape
    assert not torch.allclose(torch.as_tensor(out), torch.as_tensor(image), atol=1e-3)


def test_default_augmentation_is_seeded(data_preprocessed):
    image = data_preprocessed["image"]
    runs = [augmentation_transforms().set_random_state(seed)({"image": image.clone()})["image"] for seed in (1, 1, 2)]
    assert runs[0].shape == image.shape
    assert torch.equal(torch.as_tensor(runs[0]), torch.as_tensor(runs[1]))
    assert not torch.equal(torch.as_tensor(runs[0]), torch.as_tensor(runs[2]))


def test_channelwise_wrapper_picks_channels_independently(data_preprocessed):
    image = data_preprocessed["image"]
    smooth = RandGaussianSmooth((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), prob=1.0)
    unchanged = RandChannelwised("image", smooth, prob=1.0, prob_per_channel=0.0)({"image": image})["image"]
    assert torch.equal(torch.as_tensor(unchanged), torch.as_tensor(image))
    wrapper = RandChannelwised("image", smooth, prob=1.0, prob_per_channel=0.5).set_random_state(0)
    changed = set()
    for _ in range(8):
        out = wrapper({"image": image})["image"]
        changed |= {tuple(not torch.equal(out[c], image[c]) for c in range(4))}
    assert len(changed) > 2  # different subsets of channels on different calls
    every = RandChannelwised("image", smooth, prob=1.0, prob_per_channel=1.0)({"image": image})["image"]
    for c in range(4):  # each channel smoothed on its own, as the wrapped transform does to one channel
        assert torch.allclose(torch.as_tensor(every[c : c + 1]), torch.as_tensor(smooth(image[c : c + 1])), atol=1e-6)
