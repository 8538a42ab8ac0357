"""The micro training configuration shared by the end-to-end and resume tests (train.json + overrides)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

MICRO = {
    "device": "cpu",
    "roi_size": [48, 48, 48],
    "target_spacing": 2.0,
    "batch_size": 4,
    "num_workers": 0,
    "check_voxels": False,
    "encoder_layers": [1, 1],
    "encoder_width": 4,
    "embed_dim": 8,
    "mapping_dim": 8,
    "warmup_epochs": 1,
    "stage1_epochs": 4,
    "push_every": 2,
    "stage3_epochs": 2,
    "lr_warmup_epochs": 1,
    "progress_bar": False,
    "val_fraction": 0.0,
}
"""Network input 24x24x24 from the 48x48x36 synthetic cases; warm-up 1, stage 1 for 4 epochs with pushes
after epochs 3 and 5 (each followed by 2 stage-3 epochs); every training case trains (no validation split:
the calibration is then the identity; tests that need one set ``val_fraction``)."""


def micro_workflow(
    workdir: Path,
    dataset_dir: Path,
    run_id: str = "training",
    config_file: str | list[str] = "configs/train.json",
    workflow_type: str | None = "train",
    **overrides: Any,
) -> ConfigWorkflow:
    """A workflow of ``config_file`` (train.json) on the micro settings; outputs under ``workdir/out``, cache
    and datalist shared with sibling runs."""
    settings = {
        **MICRO,
        "dataset_dir": str(dataset_dir),
        "datalist_file": str(workdir.parent / "datalist.json"),
        "cache_dir": str(workdir.parent / "cache"),
        "output_dir": str(workdir / "out"),
        **overrides,
    }
    return ConfigWorkflow(
        config_file=config_file, workflow_type=workflow_type, run_id=run_id, logging_file=False, **settings
    )


def run_micro(workdir: Path, dataset_dir: Path, *args: Any, **overrides: Any) -> ConfigWorkflow:
    """:func:`micro_workflow` (same arguments) initialised, run and finalised; returns it (its ``parser`` stays)."""
    workflow = micro_workflow(workdir, dataset_dir, *args, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def test_micro_settings_cover_every_stage(data_synthetic_root, tmp_path):
    workflow = micro_workflow(tmp_path / "run", data_synthetic_root)
    workflow.initialize()
    schedule = workflow.parser.get_parsed_content("schedule")
    assert [schedule.stage_of(e) for e in range(1, schedule.max_epochs + 1)] == ["warmup"] + ["stage1"] * 4
    assert schedule.push_epochs() == [3, 5] and schedule.stage3_epochs == 2
    assert workflow.check_properties() == []
