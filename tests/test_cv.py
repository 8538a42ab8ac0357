"""Cross-validation runner: skipping finished folds, mean ± std over folds, the Table 1 command."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from scripts.cv import main, parse_folds, parse_runs, run, summarize

# three hand-made folds; roc_auc undefined in fold 2
FOLDS = {
    0: {"bac": 0.8, "accuracy": 0.9, "sensitivity": 0.95, "specificity": 0.65, "roc_auc": 0.9, "ap": 0.5, "ids": 0.1},
    1: {"bac": 0.9, "accuracy": 0.9, "sensitivity": 0.9, "specificity": 0.9, "roc_auc": 0.8, "ap": 0.6, "ids": 0.2},
    2: {"bac": 0.7, "accuracy": 0.8, "sensitivity": 0.8, "specificity": 0.6, "roc_auc": None, "ap": 0.7, "ids": 0.3},
}


def _finished_run(tmp_path: Path) -> tuple[list[str], Path]:
    """An output folder whose folds 0-2 hold metrics.json, and a stack whose training could not start."""
    overlay = tmp_path / "unreachable.json"
    overlay.write_text(json.dumps({"dataset_dir": str(tmp_path / "no_such_dataset"), "device": "cpu"}))
    output_dir = tmp_path / "out"
    for fold, metrics in FOLDS.items():
        (output_dir / f"fold{fold}").mkdir(parents=True)
        (output_dir / f"fold{fold}" / "metrics.json").write_text(json.dumps({**metrics, "fold": fold}))
    return ["configs/train.json", str(overlay)], output_dir


def test_summary_mean_and_std_over_folds():
    summary = summarize(FOLDS)
    bac = summary["metrics"]["bac"]
    assert bac["mean"] == pytest.approx(0.8) and bac["n"] == 3
    assert bac["std"] == pytest.approx(math.sqrt((0.0 + 0.01 + 0.01) / 3))  # population std: 0.08165
    assert summarize(FOLDS, ddof=1)["metrics"]["bac"]["std"] == pytest.approx(0.1)  # sqrt(0.02 / 2)
    auc = summary["metrics"]["roc_auc"]
    assert auc["n"] == 2 and auc["mean"] == pytest.approx(0.85) and auc["std"] == pytest.approx(0.05)
    assert auc["values"] == [0.9, 0.8, None]
    assert summary["metrics"]["ids"]["mean"] == pytest.approx(0.2)
    single = summarize({4: FOLDS[0]}, ddof=1)["metrics"]["ap"]
    assert single["mean"] == 0.5 and math.isnan(single["std"])
    with pytest.raises(ValueError, match="at least one fold"):
        summarize({})


def test_runner_skips_finished_folds_and_writes_the_summary(tmp_path, capsys):
    stack, output_dir = _finished_run(tmp_path)
    files = sorted(output_dir.rglob("*"))
    stamps = {path: path.stat().st_mtime_ns for path in files}
    summary = run(stack, str(output_dir), folds="0,1,2")
    assert sorted(output_dir.rglob("fold*/*")) == sorted(p for p in files if p.is_file())  # nothing trained
    assert {path: path.stat().st_mtime_ns for path in files} == stamps
    assert summary["folds"] == [0, 1, 2] and summary["config_file"] == stack
    written = json.loads((output_dir / "summary.json").read_text())
    assert written["metrics"]["bac"]["mean"] == pytest.approx(0.8)
    markdown = (output_dir / "summary.md").read_text()
    assert "| BAC | 80.00 ± 8.16 | 80.00 | 90.00 | 70.00 |" in markdown
    assert "| roc_auc | 85.00 ± 5.00 | 90.00 | 80.00 | n/a |" in markdown
    assert markdown in capsys.readouterr().out


def test_runner_would_train_an_unfinished_fold(tmp_path):
    stack, output_dir = _finished_run(tmp_path)
    with pytest.raises(RuntimeError, match="fold 3 training failed"):
        run(stack, str(output_dir), folds=[0, 3])  # fold 3 has no metrics: training starts, and fails on the data
    assert not (output_dir / "summary.json").exists()


def test_fold_selection():
    assert parse_folds(None, 5) == [0, 1, 2, 3, 4]
    assert parse_folds("0, 2", 5) == parse_folds((0, 2), 5) == [0, 2]
    assert parse_folds(3, 5) == [3]
    for bad in ("5", "1,1", [], "-1"):
        with pytest.raises(ValueError, match="folds must be"):
            parse_folds(bad, 5)


def test_table_collects_runs_in_order(tmp_path):
    for name, (bac, ids, ap) in {"umps": (0.884, 0.051, 0.8872), "mprotonet": (0.87, 0.068, 0.82)}.items():
        (tmp_path / name).mkdir()
        metrics = {
            "bac": {"mean": bac, "std": 0.028},
            "ids": {"mean": ids, "std": 0.013},
            "ap": {"mean": ap, "std": float("nan")},
            **({"ece": {"mean": 0.0412, "std": 0.01}} if name == "umps" else {}),  # MProtoNet: summarised before ECE
        }
        (tmp_path / name / "summary.json").write_text(json.dumps({"metrics": metrics}))
    out = tmp_path / "tables" / "table1.md"
    runs = f"UM-ProtoShare={tmp_path / 'umps'},MProtoNet={tmp_path / 'mprotonet'}"
    main(["table", "--runs", runs, "--out", str(out)])
    lines = out.read_text().splitlines()
    assert lines[0] == "| Model | BAC (%) | IDS (%) | AP (%) | ECE (%) |"
    assert lines[2] == "| UM-ProtoShare | 88.40 ± 2.80 | 5.10 ± 1.30 | 88.72 | 4.12 ± 1.00 |"
    assert lines[3] == "| MProtoNet | 87.00 ± 2.80 | 6.80 ± 1.30 | 82.00 | n/a |"
    with pytest.raises(FileNotFoundError, match="missing"):
        main(["table", "--runs", f"x={tmp_path / 'missing'}"])
    with pytest.raises(ValueError, match="name=dir"):
        parse_runs("just_a_dir")
    assert list(parse_runs("b=1,a=2")) == ["b", "a"]


@pytest.mark.slow
def test_runner_trains_evaluates_then_skips_a_micro_fold(data_synthetic_root, tmp_path):
    """The whole path in fresh processes (about a minute on 2 CPU cores): train, evaluate, then skip."""
    from test_engine_micro import MICRO

    overlay = tmp_path / "micro.json"
    settings = {
        **MICRO,
        "stage1_epochs": 1,
        "push_every": 1,
        "stage3_epochs": 1,
        "dataset_dir": str(data_synthetic_root),
        "datalist_file": str(tmp_path / "datalist.json"),
        "cache_dir": str(tmp_path / "cache"),
    }
    overlay.write_text(json.dumps(settings))
    stack = ["configs/train.json", str(overlay)]
    summary = run(stack, str(tmp_path / "out"), folds="0", ids_steps=10)
    metrics_file = tmp_path / "out" / "fold0" / "metrics.json"
    assert len(json.loads(metrics_file.read_text())["deletion_curve"]) == 11
    assert summary["metrics"]["bac"]["n"] == 1
    stamp = os.stat(metrics_file).st_mtime_ns
    run(stack, str(tmp_path / "out"), folds="0")
    assert os.stat(metrics_file).st_mtime_ns == stamp
