"""Bad arguments to configs/inference.json: exit 2 before any work, one line naming the argument (and the
case and file), no traceback unless ``--debug True``, and ``errors.json`` in the output folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser, run
from test_evidence_fixtures import write_case

from scripts.weights import fit, read_state_dict, suggest_stack

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_STACK = ["configs/train.json", "configs/quickstart.json"]
CONV1_MISMATCH = "backbone.encoder.conv1.weight (8, 4, 7, 7, 7) in the checkpoint, (64, 4, 7, 7, 7) in the network"
"""Quick-start width 8 against the default width 64; 4 input sequences, a 7-voxel stem kernel (both configs)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """One good case folder, quick-start UM-ProtoShare and CNN weights, and a dict saved as a checkpoint."""
    root = tmp_path_factory.mktemp("cli")
    case = write_case(root / "case_a", "case_a", seed=3)
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in QUICKSTART_STACK])
    parser["bundle_root"] = str(ROOT)
    quickstart = parser.get_parsed_content("network_def").state_dict()
    torch.save(quickstart, root / "quickstart.pt")
    torch.save(parser.get_parsed_content("warmup_network_def").state_dict(), root / "cnn.pt")
    torch.save({"x": 1}, root / "dict.pt")
    default = ConfigParser()
    default.read_config(str(ROOT / "configs" / "inference.json"))
    default_keys = set(default.get_parsed_content("network_def").state_dict())
    return SimpleNamespace(root=root, case=case, quickstart_keys=set(quickstart), default_keys=default_keys)


def _infer(out: Path, **overrides) -> int:
    """Run configs/inference.json in this process; its exit code."""
    with pytest.raises(SystemExit) as stopped:
        run(**{"config_file": "configs/inference.json", "logging_file": False, "output_dir": str(out), "device": "cpu",
               **overrides})
    return stopped.value.code


def _failure(out: Path) -> dict:
    summary = json.loads((out / "errors.json").read_text())
    assert summary["done"] == [] and len(summary["failed"]) == 1
    return summary["failed"][0]


def _last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_quickstart_weights_without_their_config_name_the_fit_and_the_stack(files, tmp_path):
    """A real process: exit 2, no traceback, and the last line counts the keys and names the stack."""
    checkpoint = files.root / "quickstart.pt"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
               "--input_dir", str(files.root / "case_a"), "--output_dir", str(tmp_path / "out"),
               "--ckpt_path", str(checkpoint), "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    missing = len(files.default_keys - files.quickstart_keys)  # the default's deeper encoder and wider heads
    unexpected = len(files.quickstart_keys - files.default_keys)
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --ckpt_path {checkpoint}: does not fit the network: {missing} missing and {unexpected} unexpected "
        f"keys; first mismatched shape: {CONV1_MISMATCH}; it fits the network of configs/quickstart.json: "
        "put that stack in --config_file")
    assert _failure(tmp_path / "out")["file"] == str(checkpoint)
    assert not (tmp_path / "out" / "case_a").exists()


def test_the_cnn_baselines_weights_are_named_as_such(files, tmp_path, capsys):
    checkpoint = files.root / "cnn.pt"
    assert _infer(tmp_path / "out", input_dir=str(files.root / "case_a"), ckpt_path=str(checkpoint)) == 2
    line = _last_line(capsys)
    assert line.startswith(f"error: --ckpt_path {checkpoint}: does not fit the network: ")
    assert line.endswith("these are the weights of the CNN baseline (warmup_network_def of configs/train.json with "
                         "configs/quickstart.json), not of a UM-ProtoShare")
    assert "--ckpt_path" in _failure(tmp_path / "out")["reason"]


def test_a_checkpoint_without_weights(files, tmp_path, capsys):
    checkpoint = files.root / "dict.pt"
    assert _infer(tmp_path / "out", input_dir=str(files.root / "case_a"), ckpt_path=str(checkpoint)) == 2
    assert _last_line(capsys) == f"error: --ckpt_path {checkpoint}: holds no network weights (found ['x'])"
    assert _failure(tmp_path / "out")["file"] == str(checkpoint)


def test_a_nifti_file_as_input_dir(files, tmp_path, capsys):
    t2 = files.case["image"][2]
    code = _infer(tmp_path / "out", input_dir=t2, ckpt_path=str(files.root / "quickstart.pt"),
                  config_file=["configs/inference.json", "configs/quickstart.json"])
    assert code == 2
    assert _last_line(capsys) == (f"error: --input_dir {t2}: case 'case_a': is one NIfTI file; give its case folder, "
                                  f"or the case's four files with --input_files: {t2}")
    assert _failure(tmp_path / "out")["case_id"] == "case_a"


def test_input_files_with_one_file(files, tmp_path, capsys):
    t1 = files.case["image"][0]
    code = _infer(tmp_path / "out", input_files=[t1], ckpt_path=str(files.root / "quickstart.pt"),
                  config_file=["configs/inference.json", "configs/quickstart.json"])
    assert code == 2
    line = _last_line(capsys)
    assert line.startswith(f"error: --input_files ['{t1}']: case 'case_a': names 1 file(s); give four")
    assert _failure(tmp_path / "out")["case_id"] == "case_a"


@pytest.mark.parametrize("kept, missing", [(("t1", "t1ce", "flair"), "t2 sequence"),
                                           (("t1",), "t1ce, t2, flair sequences")])
def test_a_case_folder_missing_sequences_names_the_case_and_every_one(files, tmp_path, capsys, kept, missing):
    folder = tmp_path / "patient_7"  # the case id comes from the folder, not from the files' names
    folder.mkdir()
    for file in files.case["image"]:
        if Path(file).name.removesuffix(".nii.gz").rsplit("_", 1)[1] in kept:
            shutil.copy(file, folder)
    code = _infer(tmp_path / "out", input_dir=str(folder), ckpt_path=str(files.root / "quickstart.pt"),
                  config_file=["configs/inference.json", "configs/quickstart.json"])
    assert code == 2
    first_missing = missing.split(",")[0].split()[0]
    expected_file = folder / f"case_a_{first_missing}.nii.gz"  # named as the folder's other files are
    line = _last_line(capsys)
    assert line.startswith(f"error: --input_dir {folder}: case 'patient_7': missing {missing} (no ")
    assert line.endswith(f": {expected_file}")
    failure = _failure(tmp_path / "out")
    assert failure["case_id"] == "patient_7" and failure["file"] == str(expected_file)


def test_debug_shows_the_traceback(files, tmp_path, capsys):
    code = _infer(tmp_path / "out", input_dir=files.case["image"][2], ckpt_path=str(files.root / "quickstart.pt"),
                  config_file=["configs/inference.json", "configs/quickstart.json"], debug=True)
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "DataError" in err
    assert err.strip().splitlines()[-1].startswith(f"error: --input_dir {files.case['image'][2]}: ")


def test_fit_counts_keys_and_finds_the_first_mismatch():
    ours = {"a": torch.zeros(2), "b": torch.zeros(3, 4), "c": torch.zeros(1), "d": torch.zeros(5)}
    theirs = {"b": torch.zeros(4, 4), "d": torch.zeros(6), "e": torch.zeros(1)}
    result = fit(theirs, ours)
    assert result.missing == ["a", "c"] and result.unexpected == ["e"]
    assert result.mismatch == ("b", (4, 4), (3, 4))
    assert not result.ok and fit(ours, ours).ok
    assert read_state_dict({"model": ours}) == ours and read_state_dict([1]) is None


def test_suggest_stack_names_a_baseline_on_the_quick_start():
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in ["configs/inference.json", "configs/baselines/maprotonet.json"]])
    for key, value in json.loads((ROOT / "configs" / "quickstart.json").read_text()).items():
        if key in ("encoder_width", "embed_dim", "mapping_dim"):  # maprotonet's own encoder_layers stay
            parser[key] = value
    state = parser.get_parsed_content("network_def").state_dict()
    assert suggest_stack(state, ROOT) == ("it fits the network of configs/quickstart.json + "
                                          "configs/baselines/maprotonet.json: put that stack in --config_file")
