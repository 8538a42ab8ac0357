"""Run set-up helpers: back-end switches, placement, synthetic data on first use, the datalist check."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from scripts.engine import (
    check_flags,
    configure_backends,
    ensure_synthetic_dataset,
    place,
    plain_tensor,
    training_datalist,
)
from scripts.engine.fingerprint import volumes_fingerprint
from scripts.engine.setup import SYNTHETIC_FINGERPRINT
from scripts.networks.precision import autocast

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_deterministic_mode_wins_over_cudnn_benchmark(restore_backends):
    configure_backends(cudnn_benchmark=True, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark
    configure_backends(cudnn_benchmark=True, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def test_a_switch_given_as_a_string_is_refused_by_name():
    check_flags({"use_map": True, "use_oc": False})
    with pytest.raises(ValueError, match=r"--use_oc must be True or False, got 'false' \(str\)"):
        check_flags({"use_map": True, "use_oc": "false"})
    with pytest.raises(ValueError, match="--amp must be True or False, got 0"):
        check_flags({"amp": 0})


def test_the_training_config_checks_its_switches_before_anything_runs():
    """``monai.bundle run ... --use_oc false`` (lower case) reaches the config as the string 'false': the first step
    of ``initialize`` names it, and the defaults pass."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json")])
    first = parser["initialize"][0]
    assert first.startswith("$scripts.engine.check_flags(") and "'use_oc': @use_oc" in first
    parser.ref_resolver.reset()
    parser.get_parsed_content("initialize#0")
    parser["use_oc"] = "false"
    parser.parse()
    with pytest.raises(RuntimeError) as failure:  # MONAI wraps the expression's error
        parser.get_parsed_content("initialize#0")
    assert isinstance(failure.value.__cause__, ValueError) and "--use_oc must be True or False" in str(failure.value.__cause__)


def test_channels_last_placement_and_inputs():
    conv = place(torch.nn.Conv3d(4, 2, 3), "cpu", channels_last_3d=True)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    images = plain_tensor(torch.randn(2, 4, 6, 6, 6), channels_last_3d=True)
    assert images.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(conv(images), conv.to(memory_format=torch.contiguous_format)(images.contiguous()), atol=1e-6)


def test_autocast_runs_bf16_on_the_cpu_only_when_enabled():
    a = torch.randn(3, 3)
    with autocast(torch.device("cpu"), enabled=True):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), enabled=False):
        assert (a @ a).dtype == torch.float32


def test_synthetic_dataset_is_generated_once(tmp_path):
    directory = tmp_path / "MICCAI_BraTS2020_TrainingData"
    assert ensure_synthetic_dataset(directory, cases=2, shape=(16, 16, 16)) == str(directory)
    mapping = directory / "name_mapping.csv"
    stamp = mapping.stat().st_mtime_ns
    ensure_synthetic_dataset(directory, cases=2, shape=(16, 16, 16))
    assert mapping.stat().st_mtime_ns == stamp and len(list(directory.glob("BraTS20_Training_*"))) == 2


def test_synthetic_dataset_logs_its_voxel_fingerprint(tmp_path, caplog):
    directory = tmp_path / "MICCAI_BraTS2020_TrainingData"
    with caplog.at_level("INFO", logger="scripts.engine.setup"):
        ensure_synthetic_dataset(directory, cases=2, shape=(16, 16, 16))
    expected = volumes_fingerprint(directory)  # computed here after the fact, from the files
    assert f"synthetic data fingerprint {expected} " in caplog.text
    same = tmp_path / "again" / "MICCAI_BraTS2020_TrainingData"  # the same seed elsewhere: the same voxels
    ensure_synthetic_dataset(same, cases=2, shape=(16, 16, 16))
    assert (same / SYNTHETIC_FINGERPRINT).read_text().strip() == expected
    other = tmp_path / "other" / "MICCAI_BraTS2020_TrainingData"
    ensure_synthetic_dataset(other, cases=2, shape=(16, 16, 16), seed=1)
    assert (other / SYNTHETIC_FINGERPRINT).read_text().strip() != expected


def test_datalist_built_from_another_dataset_is_refused(data_synthetic_root, tmp_path):
    datalist_file = tmp_path / "datalist.json"
    datalist = training_datalist(data_synthetic_root, datalist_file, ["LGG", "HGG"], check_voxels=False)
    assert len(datalist["training"]) == 12
    nested = training_datalist(data_synthetic_root.parent, datalist_file, ["LGG", "HGG"])  # archives nest one level
    assert nested["dataset"] == datalist["dataset"]
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ValueError, match="not from dataset_dir"):
        training_datalist(other, datalist_file, ["LGG", "HGG"])
