"""Builders shared by the evidence, inference and sharedness tests, and a check of the constructed model.

The constructed model's evidence is known by design: the stem keeps only the FLAIR value of each voxel
(centre tap 1 on the FLAIR input channel), the mapping module passes it on, and every scale-1 prototype's
raw map is σ(g·(FLAIR − t_k)) with its own threshold t_k near the tumour's z-scored FLAIR (about 3; normal
brain about 2.7), so all maps grow with FLAIR and peak where FLAIR is brightest: in the synthetic tumour's
oedema or core. No other sequence reaches the prototypes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import DataLoader, Dataset

from scripts.data import preprocessing_transforms
from scripts.data.synthetic import SEQUENCES, generate_case
from scripts.networks import UMProtoShare
from scripts.push import push_prototypes

CONSTRUCTED = {
    "encoder_layers": [1, 1],
    "encoder_width": 4,
    "prototypes_per_scale": [3, 0, 0],
    "fusion": "none",
    "embed_dim": 8,
    "mapping_dim": 8,
    "map_support": "brain",
    "map_support_margin": 0,
    "map_support_cells": "majority",
}
"""Architecture of the constructed model (config ids of inference.json)."""
GEOMETRY = {"roi_size": [48, 48, 48], "target_spacing": 2.0}
"""Preprocessing for the tests: 48 mm box at 2 mm, network grid 24x24x24."""
GAIN = 2.0
THRESHOLDS = (2.0, 2.2, 2.4)
"""FLAIR z-scores where the constructed maps turn on: bright FLAIR (oedema, LGG core) on the phantoms."""
CLASSIFIER = ((1.0, -0.5, 0.2), (-1.0, 0.8, 0.3))
"""Classifier weight (C=2, K=3) of the constructed model."""
ODD_AFFINE = np.array(
    [[0.0, -1.1, 0.0, 20.0], [0.9, 0.0, 0.0, -30.0], [0.0, 0.0, 1.3, 5.0], [0.0, 0.0, 0.0, 1.0]]
)
"""Axes swapped and flipped, anisotropic 0.9/1.1/1.3 mm voxels, shifted origin."""
ODD_SHAPE = (45, 52, 37)


def constructed_model() -> UMProtoShare:
    """A UM-ProtoShare (CONSTRUCTED) whose scale-1 raw maps are σ(g·(FLAIR − t_k)) (then Eq. 12–13); eval mode."""
    torch.manual_seed(0)
    model = UMProtoShare(**CONSTRUCTED).eval()
    state = model.state_dict()
    with torch.no_grad():
        stem = torch.zeros_like(state["backbone.encoder.conv1.weight"])
        stem[0, 3, 3, 3, 3] = 1.0
        hidden = torch.zeros_like(state["heads.scale1.mapping.hidden.0.weight"])
        hidden[0, 0] = 1.0
        out = torch.zeros_like(state["heads.scale1.mapping.out_conv.weight"])
        out[:, 0] = GAIN
        state["backbone.encoder.conv1.weight"] = stem
        state["heads.scale1.mapping.hidden.0.weight"] = hidden
        state["heads.scale1.mapping.out_conv.weight"] = out
        state["heads.scale1.mapping.out_norm.bias"] = -GAIN * torch.tensor(THRESHOLDS)
        state["classifier.weight"] = torch.tensor(CLASSIFIER)
        # A bias before the add-on's first ReLU makes the embedding's direction depend on FLAIR,
        # so that similarities differ between prototypes and cases.
        state["heads.scale1.addon.1.bias"] = torch.linspace(-2.0, 2.0, CONSTRUCTED["embed_dim"])
    model.load_state_dict(state)
    return model


def write_case(
    folder: Path,
    case_id: str,
    seed: int,
    high_grade: bool = True,
    shape: Sequence[int] = ODD_SHAPE,
    affine: np.ndarray = ODD_AFFINE,
) -> dict:
    """Write a synthetic case, BraTS names (four sequences, ``<case_id>_seg``), into ``folder``; return its item."""
    images, labels, _ = generate_case(np.random.default_rng(seed), high_grade, False, shape)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, volume in zip(SEQUENCES, images):
        paths.append(str(folder / f"{case_id}_{name}.nii.gz"))
        nib.save(nib.Nifti1Image(volume, affine), paths[-1])
    seg = folder / f"{case_id}_seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(seg))
    return {"case_id": case_id, "image": paths, "seg": str(seg), "label": int(high_grade)}


def push_on(model: UMProtoShare, items: list[dict], roi_size: Sequence[int], target_spacing: float):
    """A real push of ``model`` over ``items`` with the given preprocessing; returns the PushResult."""
    preprocessing = preprocessing_transforms(roi_size=roi_size, target_spacing=target_spacing)
    data = [{"case_id": i["case_id"], "image": i["image"], "label": i["label"]} for i in items]
    return push_prototypes(model, DataLoader(Dataset(data, preprocessing), batch_size=2), ["LGG", "HGG"])


def test_constructed_maps_follow_flair_only(tmp_path):
    item = write_case(tmp_path / "c", "c", seed=3)
    preprocessing = preprocessing_transforms(**GEOMETRY)
    image = torch.as_tensor(preprocessing(item)["image"])
    model = constructed_model()
    model.map_support = "volume"  # the brain support reads every sequence (its background) by design
    with torch.no_grad():
        maps = model.explain(image[None]).per_scale[0].maps[0]
        changed = image.clone()
        changed[:3] = torch.randn_like(changed[:3])
        same = model.explain(changed[None]).per_scale[0].maps[0]
    torch.testing.assert_close(same, maps)
    flair = image[3, ::2, ::2, ::2]  # the stem's stride-2 centre taps
    for k in range(maps.shape[0]):
        assert int(maps[k].argmax()) == int(flair.argmax())
