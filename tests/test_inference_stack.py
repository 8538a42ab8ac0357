"""Serving a model trained under an override stack with the same stack on inference.json, and its TorchScript export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run
from test_evidence_fixtures import ODD_AFFINE, push_on, write_case

from scripts.data import output_size
from scripts.data.synthetic import brats_affine
from scripts.push import save_push

STACK = ["configs/inference.json", "configs/quickstart.json"]
OVERLAYS = sorted(str(p) for p in Path("configs/ablations").glob("*.json")) + ["configs/quickstart.json"]
QUICKSTART_SHAPE = (72, 72, 54)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_id_is_defined_or_unused_by_inference(overlay):
    inference = json.loads(Path("configs/inference.json").read_text())
    text = Path("configs/inference.json").read_text()
    for key in json.loads(Path(overlay).read_text()):
        used = re.search(rf"@{re.escape(key)}\b", text) is not None
        assert key in inference or not used, f"{overlay} sets {key!r}, which inference.json uses but does not define"


def test_quickstart_settings_reach_inference_preprocessing_and_network():
    parser = ConfigParser()
    parser.read_config(STACK)
    network = parser.get_parsed_content("network_def")
    assert network.heads["scale1"].mapping.out_conv.in_channels == 16  # quickstart mapping_dim
    assert network.backbone.encoder.conv1.out_channels == 8  # quickstart encoder_width
    preprocessing = parser.get_parsed_content("preprocessing")
    size = output_size(*(parser.get_parsed_content(k) for k in ("roi_size", "source_spacing", "target_spacing")))
    names = [type(t).__name__ for t in preprocessing.transforms]
    assert size == QUICKSTART_SHAPE and "Resized" not in names  # the 72x72x54 mm box kept at the phantoms' 1 mm


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A quickstart-architecture model (random weights, real push) served through the stack on one odd case."""
    root = tmp_path_factory.mktemp("stack")
    parser = ConfigParser()
    parser.read_config(STACK)
    torch.manual_seed(0)
    model = parser.get_parsed_content("network_def").eval()
    train = [write_case(root / "train" / f"t{i}", f"t{i}", seed=30 + i, high_grade=bool(i % 2), shape=QUICKSTART_SHAPE,
                        affine=brats_affine(QUICKSTART_SHAPE)) for i in range(2)]
    push = push_on(model, train, roi_size=list(QUICKSTART_SHAPE), target_spacing=parser.get_parsed_content("target_spacing"))
    fold = root / "fold0"
    fold.mkdir()
    torch.save(model.state_dict(), fold / "model.pt")
    save_push(push, fold)
    case = write_case(root / "input" / "odd", "odd", seed=40, shape=(61, 70, 47))
    run(config_file=STACK, logging_file=False, bundle_root=str(root), input_files=case["image"], case_id="new",
        output_dir=str(root / "out"), ckpt_path=str(fold / "model.pt"), device="cpu")
    image = parser.get_parsed_content("preprocessing")({"image": case["image"]})["image"]
    return root, model, case, torch.as_tensor(image)[None]


def test_stacked_inference_writes_every_scale_on_the_input_grid(served):
    root, model, case, image = served
    prediction = json.loads((root / "out" / "new" / "prediction.json").read_text())
    assert image.shape[2:] == QUICKSTART_SHAPE
    with torch.no_grad():
        logits = model(image)[0]
    for c, name in enumerate(prediction["class_names"]):
        assert prediction["logits"][name] == pytest.approx(float(logits[c]), abs=1e-5)
        total = sum(p["contribution"][name] for p in prediction["prototypes"])
        assert total == pytest.approx(float(logits[c]), abs=1e-5)
    assert sorted(prediction["evidence_maps"]) == ["class", "class_brain", "scale1", "scale2", "scale3"]
    assert len(prediction["prototypes"]) == 30 and sum("map_file" in p for p in prediction["prototypes"]) == 6
    for name in prediction["evidence_maps"].values():
        written = nib.load(str(root / "out" / "new" / name))
        assert written.shape == (61, 70, 47)
        np.testing.assert_allclose(written.affine, ODD_AFFINE, atol=1e-5)
    assert not (root / "runs").exists()  # the quickstart's dataset_dir (a data generator) was never evaluated


def test_torchscript_export_of_the_stack_gives_the_served_logits(served, tmp_path):
    root, model, _, image = served
    ckpt_export(net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(root / "fold0" / "model.pt"),
                meta_file="configs/metadata.json", config_file=STACK)
    exported = torch.jit.load(str(tmp_path / "model.ts")).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(image), model(image))
    prediction = json.loads((root / "out" / "new" / "prediction.json").read_text())
    served_logits = torch.tensor([prediction["logits"][name] for name in prediction["class_names"]])
    torch.testing.assert_close(exported(image)[0], served_logits, rtol=1e-5, atol=1e-5)
