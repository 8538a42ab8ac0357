"""One fact, one computation: prediction.json, maps.json, report.png and report.html agree on every peak
and in-brain flag; inference's class map is evaluation's; the true grade reaches every output.

Bundle runs of configs/inference.json on constructed models (tests/test_evidence_fixtures.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from monai.bundle import run
from test_evidence_fixtures import CONSTRUCTED, GAIN, GEOMETRY, THRESHOLDS, constructed_model, write_case

from scripts.data import find_cases, preprocessing_transforms
from scripts.explain.attribution import class_map
from scripts.explain.evidence import to_original_space
from scripts.explain.report import OUTSIDE
from scripts.networks import UMProtoShare

SETTINGS = {"device": "cpu", **CONSTRUCTED, **GEOMETRY}
INVERTED = 2
"""The prototype whose constructed map falls with FLAIR: it peaks in the background, outside the brain."""


def _serve(model: torch.nn.Module, input_dir: Path, output_dir: Path, **overrides) -> None:
    checkpoint = output_dir.parent / f"{output_dir.name}_model" / "model.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoint)
    run(config_file="configs/inference.json", logging_file=False, input_dir=str(input_dir),
        output_dir=str(output_dir), ckpt_path=str(checkpoint), datalist_file=str(output_dir / "none.json"),
        **{**SETTINGS, **overrides})


def _outside_model(map_support: str = "volume") -> UMProtoShare:
    """The constructed model with prototype INVERTED's map σ(−g·(FLAIR − t)): largest where FLAIR is lowest
    (the background, with the paper's whole-volume maps)."""
    model = constructed_model()
    model.map_support = map_support
    with torch.no_grad():
        model.heads.scale1.mapping.out_conv.weight[INVERTED, 0] = -GAIN
        model.heads.scale1.mapping.out_norm.bias[INVERTED] = GAIN * THRESHOLDS[INVERTED]
    return model


def test_brain_supported_maps_never_peak_outside_the_brain_in_any_output(tmp_path):
    case = write_case(tmp_path / "cases" / "c1", "c1", seed=11)
    out = tmp_path / "out"
    _serve(_outside_model("brain"), Path(case["image"][0]).parent, out, top_prototypes_per_scale=3, map_support="brain")
    prediction = json.loads((out / "c1" / "prediction.json").read_text())
    sidecar = json.loads((out / "c1" / "maps.json").read_text())["maps"]
    channels = np.stack([nib.load(f).get_fdata() for f in case["image"]])
    brain = (channels > channels.reshape(4, -1).min(1)[:, None, None, None] + 1e-6).any(0)
    assert len(sidecar) == 3 + 3  # class map, its brain-only copy, scale 1; three prototypes
    for name, entry in sidecar.items():
        assert entry["peak_in_brain"], name
        volume = nib.load(str(out / "c1" / name)).get_fdata()
        assert volume.max() == pytest.approx(1.0) and not volume[~brain].any(), name
    assert all(e["peak_in_brain"] for e in prediction["prototypes"] if "map_file" in e)
    assert prediction["map_support_file"] == "map_support.nii.gz" and 0 < prediction["brain_in_support"] <= 1


def test_map_support_file_shows_where_the_maps_may_lie_and_every_peak_is_inside_it(tmp_path):
    # a 2-voxel band (network grid) leaves part of the brain out; the file is that region on the input files' grid
    case = write_case(tmp_path / "cases" / "c1", "c1", seed=11)
    out = tmp_path / "out"
    _serve(_outside_model("brain"), Path(case["image"][0]).parent, out, top_prototypes_per_scale=3, map_support="brain",
           map_support_margin=2)
    prediction = json.loads((out / "c1" / "prediction.json").read_text())
    assert prediction["map_support_file"] == "map_support.nii.gz"
    support = nib.load(str(out / "c1" / "map_support.nii.gz")).get_fdata()
    channels = np.stack([nib.load(f).get_fdata() for f in case["image"]])
    brain = (channels > channels.reshape(4, -1).min(1)[:, None, None, None] + 1e-6).any(0)
    assert set(np.unique(support)) == {0.0, 1.0} and not support[~brain].any()
    share = support[brain].mean()
    assert 0.3 < share < 0.95 and prediction["brain_in_support"] == pytest.approx(share)
    for name, entry in json.loads((out / "c1" / "maps.json").read_text())["maps"].items():
        assert support[tuple(entry["peak_voxel"])] == 1.0, name


def _html_payload(page: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="slices">(.*?)</script>', page, re.S).group(1))


def test_four_outputs_agree_on_a_peak_outside_the_brain(tmp_path):
    case = write_case(tmp_path / "cases" / "c1", "c1", seed=11)
    out = tmp_path / "out"
    _serve(_outside_model(), Path(case["image"][0]).parent, out, top_prototypes_per_scale=3, map_support="volume")
    folder = out / "c1"
    prediction = json.loads((folder / "prediction.json").read_text())
    sidecar = json.loads((folder / "maps.json").read_text())["maps"]
    entries = {e["k"]: e for e in prediction["prototypes"]}
    # whole-volume maps: no support file, no share, no note
    assert prediction["map_support_file"] is None and prediction["brain_in_support"] is None
    assert not (folder / "map_support.nii.gz").exists()
    # the input's own brain: any sequence above its minimum
    channels = np.stack([nib.load(f).get_fdata() for f in case["image"]])
    brain = (channels > channels.reshape(4, -1).min(1)[:, None, None, None] + 1e-6).any(0)
    for k, entry in entries.items():
        written = nib.load(str(folder / entry["map_file"]))
        volume = written.get_fdata()
        peak = list(np.unravel_index(int(volume.argmax()), volume.shape))
        assert entry["peak_voxel"] == sidecar[entry["map_file"]]["peak_voxel"] == peak
        assert entry["peak_in_brain"] == sidecar[entry["map_file"]]["peak_in_brain"] == bool(brain[tuple(peak)])
        assert entry["peak_in_brain"] == (k != INVERTED), k
    # report.html: the table's column and the viewer's flag and crosshair voxel
    page = (folder / "report.html").read_text(encoding="utf-8")
    table = {int(row[1]): row[-1] for row in re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>.*?<td>(yes|NO)</td></tr>",
                                                          page)}
    assert table == {k: "yes" if e["peak_in_brain"] else "NO" for k, e in entries.items()}
    overlays = {o["id"]: o for o in _html_payload(page)["overlays"]}
    affine = nib.load(case["image"][0]).affine
    canonical = nib.as_closest_canonical(nib.load(case["image"][0])).affine
    for k, entry in entries.items():
        overlay = overlays[f"s1_k{k}"]
        assert overlay["in_brain"] == entry["peak_in_brain"]
        # the crosshair's voxel in the RAS display is the JSON's voxel: through world mm, nibabel's canonical affine
        world = affine @ np.array([*entry["peak_voxel"], 1.0])
        expected = np.linalg.solve(canonical, world)[:3]
        assert overlay["peak"] == [int(round(v)) for v in expected]
    # report.png: the flag colour appears (the out-of-brain marker and title), which an all-in-brain page lacks
    assert _flag_pixels(folder / "report.png") > 20


def _flag_pixels(png: Path) -> int:
    """Pixels of report.png within 0.06 of the out-of-brain flag's colour in every channel."""
    page = imread(png)[..., :3]
    return int((np.abs(page - np.array(to_rgb(OUTSIDE))) < 0.06).all(-1).sum())


def test_no_flag_colour_on_a_page_whose_peaks_are_all_in_the_brain(tmp_path):
    case = write_case(tmp_path / "cases" / "c2", "c2", seed=11)
    out = tmp_path / "out"
    _serve(constructed_model(), Path(case["image"][0]).parent, out, top_prototypes_per_scale=3)
    prediction = json.loads((out / "c2" / "prediction.json").read_text())
    assert all(e["peak_in_brain"] for e in prediction["prototypes"] if "map_file" in e)
    assert _flag_pixels(out / "c2" / "report.png") == 0


def test_a_class_specific_models_inference_map_is_its_evaluation_map(tmp_path):
    torch.manual_seed(1)
    settings = {"prototype_sharing": "class_specific", "prototypes_per_scale": [4, 0, 0], "map_init_coverage": None,
                "map_support": "volume"}  # as the class-specific baselines
    model = UMProtoShare(**{**CONSTRUCTED, **settings}).eval()
    with torch.no_grad():  # signs that do not follow the ownership: ζ > 0 picks other prototypes than Eq. 26
        model.classifier.weight.copy_(torch.tensor([[0.9, -0.4, 0.3, 0.5], [-0.2, 0.7, 0.6, -0.8]]))
    case = write_case(tmp_path / "cases" / "c3", "c3", seed=12)
    out = tmp_path / "out"
    _serve(model, Path(case["image"][0]).parent, out, **settings, scale_combination="product")
    prediction = json.loads((out / "c3" / "prediction.json").read_text())
    predicted = prediction["predicted_index"]
    preprocessing = preprocessing_transforms(**GEOMETRY)
    image = preprocessing({"image": case["image"]})["image"]
    with torch.no_grad():  # what scripts/evaluate/fold.py computes, for the predicted class
        evaluated = class_map(model, image.as_tensor()[None], [predicted], combination="product")
    expected = to_original_space(evaluated, image, preprocessing)[0].numpy()
    sidecar = json.loads((out / "c3" / "maps.json").read_text())["maps"]
    name = prediction["evidence_maps"]["class"]
    written = nib.load(str(out / "c3" / name)).get_fdata() * sidecar[name]["raw_max"]
    np.testing.assert_allclose(written, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))


def test_true_grade_from_name_mapping_beside_a_case_folder(tmp_path):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    case = write_case(root / "BraTS20_Training_007", "BraTS20_Training_007", seed=11)
    out = tmp_path / "out"
    for grade in ("LGG", "HGG"):
        (root / "name_mapping.csv").write_text(f"Grade,BraTS_2020_subject_ID\n{grade},BraTS20_Training_007\n")
        _serve(constructed_model(), Path(case["image"][0]).parent, out / grade)
        prediction = json.loads((out / grade / "BraTS20_Training_007" / "prediction.json").read_text())
        agrees = prediction["predicted_class"] == grade
        assert prediction["true_class"] == grade and prediction["prediction_agrees"] is agrees
        page = (out / grade / "BraTS20_Training_007" / "report.html").read_text(encoding="utf-8")
        shown = re.search(r'<p id="grade"[^>]*>(.*?)</p>', page).group(1)
        assert f"true grade {grade}" in shown and ("agrees" if agrees else "DISAGREES") in shown


def test_no_true_grade_when_nothing_gives_one(tmp_path):
    case = write_case(tmp_path / "cases" / "c4", "c4", seed=11)
    _serve(constructed_model(), Path(case["image"][0]).parent, tmp_path / "out")
    prediction = json.loads((tmp_path / "out" / "c4" / "prediction.json").read_text())
    assert prediction["true_class"] is None and prediction["prediction_agrees"] is None
    assert 'id="grade"' not in (tmp_path / "out" / "c4" / "report.html").read_text(encoding="utf-8")


def test_true_grade_from_a_cohort_or_the_datalist_entry_with_the_same_files(tmp_path):
    case = write_case(tmp_path / "cases" / "c5", "c5", seed=11)
    folder = Path(case["image"][0]).parent
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,c5\n")
    assert find_cases(folder, grades_from=cohort, check_voxels=False).items[0]["label_name"] == "HGG"
    datalist = tmp_path / "datalist.json"
    other = write_case(tmp_path / "elsewhere" / "c5", "c5", seed=12)  # the same id, other files
    entries = [{"case_id": "c5", "image": case["image"], "label": 0, "fold": 0},
               {"case_id": "c5", "image": other["image"], "label": 1, "fold": 1}]
    datalist.write_text(json.dumps({"class_names": ["LGG", "HGG"], "num_folds": 2, "training": entries[:1]}))
    assert find_cases(folder, datalist_file=datalist, check_voxels=False).items[0]["label_name"] == "LGG"
    datalist.write_text(json.dumps({"class_names": ["LGG", "HGG"], "num_folds": 2, "training": entries[1:]}))
    assert find_cases(folder, datalist_file=datalist, check_voxels=False).items[0]["label_name"] is None
