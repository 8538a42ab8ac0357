"""configs/inference.json end to end on a constructed model with known evidence, plus bad inputs and input layouts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import mirror_probabilities
from matplotlib.image import imread
from monai.bundle import ConfigWorkflow, run
from test_evidence_fixtures import CONSTRUCTED, GEOMETRY, ODD_AFFINE, ODD_SHAPE, constructed_model, push_on, write_case

from scripts.calibration import Calibration
from scripts.data import DataError, find_cases, preprocessing_transforms
from scripts.data.synthetic import brats_affine
from scripts.explain.evidence import DRIVING_THRESHOLD
from scripts.networks import UMProtoShare
from scripts.prototypes import SEPARATION_FLOOR
from scripts.push import save_push
from scripts.uncertainty import FLIP_SPREAD_CAUTION

SETTINGS = {"device": "cpu", **CONSTRUCTED, **GEOMETRY}
CALIBRATION = Calibration(temperature=4.0, method="platt_targets", cases=10, separated=True)
"""Beside the served weights: every probability served is softmax(logits / 4)."""


def _serve(root: Path, input_dir: Path, output_dir: Path, **overrides) -> None:
    settings = {"ckpt_path": str(root / "fold0" / "model.pt"), "datalist_file": str(root / "datalist.json"), **SETTINGS}
    run(config_file="configs/inference.json", logging_file=False, input_dir=str(input_dir), output_dir=str(output_dir),
        **{**settings, **overrides})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A constructed model pushed on four training cases, served on one good and three bad cases."""
    root = tmp_path_factory.mktemp("served")
    train = [write_case(root / "train" / f"t{i}", f"t{i}", seed=20 + i, high_grade=bool(i % 2), shape=(48, 48, 36),
                        affine=brats_affine((48, 48, 36))) for i in range(4)]
    (root / "datalist.json").write_text(json.dumps({"class_names": ["LGG", "HGG"], "num_folds": 2, "training": [
        {"case_id": i["case_id"], "image": i["image"], "label": i["label"], "fold": i["label"]} for i in train]}))
    model = constructed_model()
    push = push_on(model, train, **GEOMETRY)
    (root / "fold0").mkdir()
    torch.save(model.state_dict(), root / "fold0" / "model.pt")
    save_push(push, root / "fold0")
    CALIBRATION.save(root / "fold0")
    cases = root / "cases"
    good = write_case(cases / "good", "good", seed=11)
    bad = {name: write_case(cases / name, name, seed=12) for name in ("fourd", "nan", "missing")}
    flair = nib.load(bad["fourd"]["image"][3])
    nib.save(nib.Nifti1Image(np.stack([np.asarray(flair.dataobj)] * 2, -1), flair.affine), bad["fourd"]["image"][3])
    t2 = nib.load(bad["nan"]["image"][2])
    values = np.asarray(t2.dataobj).astype(np.float32)
    values[10, 10, 10] = np.nan
    nib.save(nib.Nifti1Image(values, t2.affine), bad["nan"]["image"][2])
    Path(bad["missing"]["image"][3]).unlink()
    with pytest.raises(SystemExit) as stopped:  # three bad cases: the run exits 1 after serving the good one
        _serve(root, cases, root / "out")
    out = root / "out" / "good"
    return SimpleNamespace(root=root, model=model, push=push, good=good, bad=bad, out=out, exit_code=stopped.value.code,
                           prediction=json.loads((out / "prediction.json").read_text()))



def test_a_case_goes_through_the_network_once_plus_its_8_mirror_images(served, tmp_path, monkeypatch):
    """The evidence's 8 mirror passes give the flip average and the flip spread; the evaluator adds one plain
    forward, never 8 more (as a second flip-averaging inferer would)."""
    images = []
    forward = UMProtoShare.forward
    monkeypatch.setattr(UMProtoShare, "forward", lambda self, x, *a, **k: images.append(x.shape[0]) or forward(self, x, *a, **k))
    _serve(served.root, served.good["image"][0].rsplit("/", 1)[0], tmp_path)
    assert sum(images) == 1 + 8
    assert json.loads((tmp_path / "good" / "prediction.json").read_text())["flip_average"] is True

def test_evidence_maps_on_the_input_grid_peak_in_the_tumour(served):
    prediction = served.prediction
    tumour = nib.load(served.good["seg"]).get_fdata() > 0
    top = [p["map_file"] for p in prediction["prototypes"] if "map_file" in p]
    files = [*prediction["evidence_maps"].values(), *top]
    assert len(files) == 3 + 2  # the class map, inside the brain only, scale 1; two top prototypes
    for name in files:
        written = nib.load(str(served.out / name))
        assert written.shape == ODD_SHAPE
        np.testing.assert_allclose(written.affine, ODD_AFFINE, atol=1e-5)
        volume = written.get_fdata()
        peak = np.unravel_index(int(volume.argmax()), volume.shape)
        assert tumour[peak], name
    for entry in prediction["prototypes"]:
        if "map_file" in entry:
            assert tumour[tuple(entry["peak_voxel"])]
            world = ODD_AFFINE @ np.array([*entry["peak_voxel"], 1.0])
            np.testing.assert_allclose(entry["peak_world_mm"], world[:3], atol=0.01)


def test_contributions_sum_to_the_models_logits(served):
    image = preprocessing_transforms(**GEOMETRY)({"image": served.good["image"]})["image"]
    with torch.no_grad():
        logits = served.model(torch.as_tensor(image)[None])[0]
    prediction = served.prediction
    for c, name in enumerate(prediction["class_names"]):
        assert prediction["logits"][name] == pytest.approx(float(logits[c]), abs=1e-5)
        total = sum(entry["contribution"][name] for entry in prediction["prototypes"])
        assert total == pytest.approx(float(logits[c]), abs=1e-5)
    assert prediction["calibration"] == CALIBRATION.to_dict()
    mirrored = mirror_probabilities(served.model, torch.as_tensor(image)[None], 4.0)  # the default flip average
    assert prediction["flip_average"] is True
    for c, name in enumerate(prediction["class_names"]):
        assert prediction["raw_probabilities"][name] == pytest.approx(float(torch.softmax(logits, 0)[c]), abs=1e-5)
        assert prediction["probabilities"][name] == pytest.approx(float(mirrored[:, c].mean()), abs=1e-6)
    predicted = prediction["class_names"].index(prediction["predicted_class"])
    spread = float(mirrored[:, predicted].std(unbiased=False))
    assert prediction["flip_spread"] == pytest.approx(spread, abs=1e-6)
    assert any("orientation" in w for w in prediction["warnings"]) == (spread > FLIP_SPREAD_CAUTION)


def test_prototypes_sorted_with_their_push_source_and_sequence_evidence(served):
    prediction = served.prediction
    predicted = prediction["predicted_class"]
    assert prediction["evidence_ranking"] == "relative"  # the default, with a push record holding class means
    voting = [entry["class_weights"][predicted] > 0 for entry in prediction["prototypes"]]
    assert voting == sorted(voting, reverse=True)  # the predicted class's voters first
    for group in (True, False):  # each group by w·(S − S̄)
        relative = [e["relative_contribution"][predicted] for e, v in zip(prediction["prototypes"], voting) if v == group]
        assert relative == sorted(relative, reverse=True)
    for entry in prediction["prototypes"]:
        record = served.push.records[entry["column"]]
        assert entry["source"]["case_id"] == record["case_id"] and entry["source"]["class_name"] == record["class_name"]
        means = record["class_similarity"]  # the push set's class means reach the served evidence
        assert entry["source"]["class_similarity"] == means and set(means) == {"LGG", "HGG"}
        favoured = max(entry["class_weights"], key=entry["class_weights"].get)
        other = "LGG" if favoured == "HGG" else "HGG"
        assert entry["separation"] == pytest.approx(means[favoured] - means[other])
        assert entry["separates_classes"] == (entry["separation"] >= SEPARATION_FLOOR)
        w = entry["class_weights"]
        assert entry["contribution"][predicted] == pytest.approx(w[predicted] * entry["similarity"], abs=1e-6)
        # S̄: the two classes' push-set means weighted alike; the relative contribution w·(S − S̄) per class
        assert entry["reference_similarity"] == pytest.approx((means["LGG"] + means["HGG"]) / 2, abs=1e-6)
        for name in ("LGG", "HGG"):
            expected = w[name] * (entry["similarity"] - entry["reference_similarity"])
            assert entry["relative_contribution"][name] == pytest.approx(expected, abs=1e-6)
        # the constructed model reads FLAIR only: the others' evidence is zero up to the summation order
        # (channels-last convolutions, the inference config's default, sum in another order)
        assert [entry["sequence_evidence"][s] for s in ("T1", "T1-CE", "T2")] == pytest.approx([0.0] * 3, abs=1e-6)
        flair = entry["sequence_evidence"]["FLAIR"]
        assert flair < 0 and entry["driving_sequence"] == ("FLAIR" if flair <= -DRIVING_THRESHOLD else None)


def test_bad_cases_are_reported_and_the_good_case_is_served(served):
    assert served.exit_code == 1
    summary = json.loads((served.root / "out" / "errors.json").read_text())
    assert [d["case_id"] for d in summary["done"]] == ["good"]
    failed = {f["case_id"]: f for f in summary["failed"]}
    assert set(failed) == {"fourd", "nan", "missing"}
    assert failed["fourd"]["file"] == served.bad["fourd"]["image"][3] and "3-D" in failed["fourd"]["reason"]
    assert failed["nan"]["file"] == served.bad["nan"]["image"][2] and "non-finite" in failed["nan"]["reason"]
    assert failed["missing"]["file"].endswith("missing_flair.nii.gz") and "flair" in failed["missing"]["reason"]
    assert not (served.root / "out" / "fourd").exists()


def test_report_page_has_a_row_per_top_prototype(served):
    page = imread(served.out / "report.png")
    assert page.ndim == 3 and page.shape[1] > page.shape[0] > 400  # two rows of six panels
    assert page[..., :3].std() > 0.05  # not blank


def test_only_bad_cases_give_a_summary_and_no_crash(served, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        _serve(served.root, served.root / "cases" / "nan", tmp_path / "out")
    assert stopped.value.code == 1
    summary = json.loads((tmp_path / "out" / "errors.json").read_text())
    assert summary["done"] == [] and summary["failed"][0]["case_id"] == "nan"


def test_workflow_has_the_properties_monai_label_reads(served):
    workflow = ConfigWorkflow(config_file="configs/inference.json", workflow_type="infer", logging_file=False,
                              input_dir=str(served.root / "cases" / "good"), **SETTINGS)
    workflow.initialize()
    assert workflow.check_properties() == []


def test_find_cases_reads_lists_csv_and_case_folders(served, tmp_path):
    good = served.good
    listed = find_cases(input_files=good["image"], check_voxels=False)
    assert listed.items[0]["case_id"] == "good" and listed.items[0]["image"] == good["image"]
    table = served.root / "cases.csv"
    relative = [str(Path(p).relative_to(served.root)) for p in good["image"]]
    table.write_text("case_id,t1,t1ce,t2,flair\nc1," + ",".join(relative) + "\n")
    from_csv = find_cases(table, check_voxels=False)
    assert from_csv.items[0]["case_id"] == "c1" and from_csv.items[0]["image"] == good["image"]
    root = Path(good["image"][0]).parent
    single = find_cases(root, check_voxels=False)
    assert [c["case_id"] for c in single.items] == ["good"] and not single.errors
    with pytest.raises(ValueError, match="exactly one"):
        find_cases(root, good["image"])
    with pytest.raises(DataError, match="does not exist"):
        find_cases(tmp_path / "nowhere")


def test_maps_open_on_zero_to_one_with_a_sidecar_and_a_brain_only_class_map(served):
    sidecar = json.loads((served.out / "maps.json").read_text())
    predicted = served.prediction["predicted_class"]
    assert set(sidecar["maps"]) == {*served.prediction["evidence_maps"].values(),
                                    *(p["map_file"] for p in served.prediction["prototypes"] if "map_file" in p)}
    for name, entry in sidecar["maps"].items():
        written = nib.load(str(served.out / name))
        volume = written.get_fdata()
        assert volume.min() >= 0 and volume.max() == pytest.approx(1.0, abs=1e-6), name
        assert (float(written.header["cal_min"]), float(written.header["cal_max"])) == (0.0, 1.0)
        assert entry["raw_max"] > 0 and "raw max" in written.header["descrip"].item().decode()
        assert list(np.unravel_index(int(volume.argmax()), volume.shape)) == entry["peak_voxel"]
    channels = np.stack([nib.load(f).get_fdata() for f in served.good["image"]])
    brain = (channels > channels.reshape(4, -1).min(1)[:, None, None, None] + 1e-6).any(0)
    whole = nib.load(str(served.out / f"evidence_{predicted}.nii.gz")).get_fdata()
    inside = nib.load(str(served.out / f"evidence_{predicted}_brain.nii.gz")).get_fdata()
    assert not inside[~brain].any() and inside[brain].max() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(inside[brain], whole[brain] / whole[brain].max(), atol=1e-6)


def test_html_report_beside_the_png(served):
    page = (served.out / "report.html").read_text(encoding="utf-8")
    assert "predicted " + served.prediction["predicted_class"] in page and page.count("<tr><td>") == len(
        served.prediction["prototypes"])
    for entry in served.prediction["prototypes"]:  # each row shows the push set's class means and the verdict
        means = entry["source"]["class_similarity"]
        separation = entry["separation"]
        verdict = "yes" if entry["separates_classes"] else "NO: matches the other class " + (
            "better" if separation <= -SEPARATION_FLOOR else "as well")
        cells = f"<td>LGG {means['LGG']:.2f}, HGG {means['HGG']:.2f}</td><td>{verdict}</td>"
        assert cells in page
        relative = entry["relative_contribution"]  # S̄ and w·(S − S̄) after Δy, in the prediction.json order
        cells = f"<td>{entry['reference_similarity']:.3f}</td><td>{relative['LGG']:+.3f}</td><td>{relative['HGG']:+.3f}</td>"
        assert cells in page
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\d+)</td>", page)
    assert rows == [(str(e["scale"]), str(e["k"])) for e in served.prediction["prototypes"]]
    predicted = served.prediction["predicted_class"]
    assert f"Sorted: those voting for {predicted} (w &gt; 0) first, each by its contribution to {predicted}" in page


def test_a_missing_input_dir_is_one_line_exit_2_and_errors_json(served, tmp_path):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--input_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out"),
               "--ckpt_path", str(served.root / "fold0" / "model.pt"), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"error: --input_dir {tmp_path / 'nowhere'}: does not exist"
    summary = json.loads((tmp_path / "out" / "errors.json").read_text())
    assert summary["done"] == [] and "--input_dir" in summary["failed"][0]["reason"]


@pytest.mark.parametrize("problem", ["missing", "not_a_checkpoint"])
def test_a_bad_ckpt_path_is_one_line_exit_2_and_errors_json(served, tmp_path, capsys, problem):
    checkpoint = tmp_path / "model.pt"
    if problem == "not_a_checkpoint":
        checkpoint.write_bytes((served.root / "fold0" / "model.pt").read_bytes()[:100])  # truncated
    with pytest.raises(SystemExit) as stopped:
        _serve(served.root, served.root / "cases" / "good", tmp_path / "out", ckpt_path=str(checkpoint))
    assert stopped.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    reason = "does not exist" if problem == "missing" else "is not a PyTorch checkpoint"
    assert line.startswith(f"error: --ckpt_path {checkpoint}: {reason}")
    assert "--ckpt_path" in json.loads((tmp_path / "out" / "errors.json").read_text())["failed"][0]["reason"]
    assert not (tmp_path / "out" / "good").exists()


def test_an_input_dir_without_cases_is_one_line_exit_2(served, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stopped:
        _serve(served.root, tmp_path / "empty", tmp_path / "out")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: --input_dir {tmp_path / 'empty'}: ")


@pytest.mark.parametrize("margin", [0.0, 50.0])
def test_bf16_serving_gives_the_fp32_prediction(served, tmp_path, margin):
    cases = tmp_path / "cases"
    shutil.copytree(Path(served.good["image"][0]).parent, cases / "good")
    _serve(served.root, cases, tmp_path / "out", precision="bf16", bf16_recheck_margin=margin)
    low = json.loads((tmp_path / "out" / "good" / "prediction.json").read_text())
    assert low["predicted_class"] == served.prediction["predicted_class"]
    if margin == 0:  # bf16 alone: it really ran, close to fp32
        assert low["logits"] != served.prediction["logits"]
        for name, probability in served.prediction["probabilities"].items():
            assert low["probabilities"][name] == pytest.approx(probability, abs=0.01)
    else:  # the case lies under the margin: run again in fp32, every output fp32's
        assert low["logits"] == served.prediction["logits"]
        assert low["probabilities"] == served.prediction["probabilities"]
