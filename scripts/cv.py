"""Cross-validation runner and Table 1 (SPEC §6): ``python -m scripts.cv``.

Run every fold of a config stack (train, then evaluate), each step in a fresh process::

    python -m scripts.cv --config_file "['configs/train.json','configs/baselines/mprotonet.json']" \\
        --output_dir runs/mprotonet [--folds 0,1,2,3,4] [--any_setting value ...]

A fold whose ``metrics.json`` exists is skipped; a fold whose ``model.pt`` exists is only evaluated; any
other fold is trained (``run``, resuming from its checkpoint when one exists) and then evaluated
(unless that run evaluated it too). The
evaluation stack is the given stack followed by ``configs/evaluate.json``; extra ``--key value``
settings go to both steps. ``summary.json`` (fractions) and ``summary.md`` (%) give the mean ± std
over the folds of every metric; the standard deviation is the population one (``ddof`` 0) unless
``--ddof 1`` is given.

Collect runs into a Table-1-style markdown (rows: models/ablations; columns BAC, IDS, AP in %)::

    python -m scripts.cv table --runs "UM-ProtoShare=runs/train,MProtoNet=runs/mprotonet" --out table.md
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import fire
import numpy as np
from monai.bundle import ConfigParser

from scripts.evaluate import METRICS_JSON, write_json

__all__ = [
    "METRICS",
    "TABLE_COLUMNS",
    "config_list",
    "format_summary",
    "format_table",
    "parse_folds",
    "parse_runs",
    "run",
    "run_fold",
    "summarize",
    "table",
]

logger = logging.getLogger(__name__)

METRICS = (
    "bac", "accuracy", "sensitivity", "specificity", "roc_auc", "ap", "ids", "ap_eq28", "tumour_in_support",
    "topk_peak_in_brain", "topk_peak_in_tumour_correct", "topk_peak_tumour_distance_correct", "prototype_source_agrees",
    "prototype_separates", "topk_separating_correct",
    "ece_raw", "ece",
    "brier_raw", "brier", "nll_raw", "nll",
)
"""Keys of a fold's ``metrics.json`` that the summary averages (fractions, in %, but for :data:`UNSCALED`)."""
UNSCALED = frozenset({"nll_raw", "nll", "topk_peak_tumour_distance_correct"})
"""Summary rows printed as they are (negative log-likelihoods and distances in voxels are not fractions)."""
TABLE_COLUMNS = {"bac": "BAC", "ids": "IDS", "ap": "AP", "ece": "ECE"}
"""Table 1 columns: metric key → header."""
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
EVALUATE_CONFIG = "configs/evaluate.json"


def config_list(config_file: str | Sequence[str]) -> list[str]:
    """A config stack given as a list, a Python-literal list string or one path."""
    if isinstance(config_file, str):
        text = config_file.strip()
        return [str(f) for f in ast.literal_eval(text)] if text.startswith("[") else [text]
    return [str(f) for f in config_file]


def _resolve(config_files: Sequence[str], key: str, settings: Mapping[str, Any]) -> Any:
    """One value of a config stack with ``settings`` applied (only what ``key`` refers to is evaluated)."""
    parser = ConfigParser()
    parser.read_config(list(config_files))
    parser.update(dict(settings))
    return parser.get_parsed_content(key)


def parse_folds(folds: int | str | Sequence[int] | None, num_folds: int) -> list[int]:
    """Fold indices from ``None`` (all), an int, ``"0,2"`` or a sequence; each in ``[0, num_folds)``."""
    if folds is None:
        return list(range(num_folds))
    if isinstance(folds, str):
        parsed = [int(f) for f in folds.replace(" ", "").split(",") if f]
    elif isinstance(folds, int):
        parsed = [folds]
    else:
        parsed = [int(f) for f in folds]
    bad = [f for f in parsed if not 0 <= f < num_folds]
    if not parsed or bad or len(set(parsed)) != len(parsed):
        raise ValueError(f"folds must be distinct indices in [0, {num_folds}), got {folds!r}.")
    return parsed


def _cli(settings: Mapping[str, Any]) -> list[str]:
    """``--key value`` pairs that ``monai.bundle run`` (fire) parses back to the same values."""
    args = []
    for key, value in settings.items():
        args += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return args


def _launch(config_files: Sequence[str], settings: Mapping[str, Any], what: str) -> None:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", json.dumps(list(config_files))]
    command += _cli(settings)
    logger.info("%s: %s", what, " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{what} failed with exit code {completed.returncode}: {' '.join(command)}")


def run_fold(
    config_files: Sequence[str],
    fold: int,
    output_dir: str | PathLike,
    evaluate_config: str = EVALUATE_CONFIG,
    **settings: Any,
) -> str:
    """Train (or resume) and evaluate one fold in fresh processes, unless already done.

    Returns:
        ``"skipped"`` (``metrics.json`` exists), ``"evaluated"`` (``model.pt`` existed) or ``"trained"``.
    """
    config_files = list(config_files)
    evaluate_files = [*config_files, evaluate_config]
    settings = {**settings, "fold": int(fold), "output_dir": str(output_dir)}
    fold_dir = Path(_resolve(config_files, "fold_dir", settings))
    if (fold_dir / METRICS_JSON).is_file():
        logger.info("fold %d: %s exists, skipped", fold, fold_dir / METRICS_JSON)
        return "skipped"
    status = "evaluated"
    if not Path(_resolve(evaluate_files, "model_file", settings)).is_file():
        _launch(config_files, settings, f"fold {fold} training")
        status = "trained"
    if not (fold_dir / METRICS_JSON).is_file():  # a stack whose "run" also evaluates has written it
        _launch(evaluate_files, settings, f"fold {fold} evaluation")
    return status


def summarize(fold_metrics: Mapping[int, Mapping[str, Any]], ddof: int = 0) -> dict[str, Any]:
    """Mean ± std over folds of every metric in :data:`METRICS` (folds where it is null are left out).

    Args:
        fold_metrics: fold index → that fold's ``metrics.json`` content.
        ddof: 0 for the population standard deviation, 1 for the sample one.

    Returns:
        ``{"folds": [...], "ddof": ddof, "metrics": {name: {"mean", "std", "n", "values"}}}``; mean and
        std are NaN where no fold has the metric (and std where fewer than ddof + 1 do).
    """
    if not fold_metrics:
        raise ValueError("summarize needs the metrics of at least one fold.")
    folds = sorted(fold_metrics)
    metrics = {}
    for name in METRICS:
        values = [fold_metrics[f].get(name) for f in folds]
        finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
        metrics[name] = {
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=ddof)) if finite.size > ddof else math.nan,
            "n": int(finite.size),
            "values": values,
        }
    return {"folds": folds, "ddof": int(ddof), "metrics": metrics}


def _percent(entry: Mapping[str, Any], scale: float = 100.0) -> str:
    mean, std = entry.get("mean"), entry.get("std")
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None or not math.isfinite(std):
        return f"{scale * mean:.2f}"
    return f"{scale * mean:.2f} ± {scale * std:.2f}"


def format_summary(summary: Mapping[str, Any], title: str = "Cross-validation summary") -> str:
    """Markdown: one row per metric, mean ± std and each fold's value, in % (NLL and the distance as they are)."""
    folds = summary["folds"]
    lines = [
        f"# {title}",
        "",
        f"Folds {', '.join(str(f) for f in folds)}; mean ± std over folds (ddof {summary['ddof']}), in % "
        "(NLL in nats, the peaks' distance in voxels).",
        "",
        "| Metric | Mean ± std | " + " | ".join(f"Fold {f}" for f in folds) + " |",
        "|---|---|" + "---|" * len(folds),
    ]
    for name, entry in summary["metrics"].items():
        scale = 1.0 if name in UNSCALED else 100.0
        cells = ["n/a" if v is None or not math.isfinite(v) else f"{scale * v:.2f}" for v in entry["values"]]
        label = name.upper() if len(name) <= 3 else name
        lines.append(f"| {label} | {_percent(entry, scale)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(
    config_file: str | Sequence[str],
    output_dir: str | None = None,
    folds: int | str | Sequence[int] | None = None,
    evaluate_config: str = EVALUATE_CONFIG,
    ddof: int = 0,
    **settings: Any,
) -> dict[str, Any]:
    """Train and evaluate ``folds`` (default: all) of a config stack; write and print the summary.

    Args:
        config_file: the training stack, e.g. ``"['configs/train.json','configs/ablations/a1.json']"``.
        output_dir: where the folds go; default the stack's ``output_dir``.
        folds: e.g. ``0,1,2,3,4``; default ``range(num_folds)``.
        evaluate_config: the evaluation overlay appended to the stack.
        ddof: standard deviation's delta degrees of freedom.
        settings: further config settings for both steps (``--device cpu``, ``--save_maps true``, ...).

    Returns:
        The summary (also in ``<output_dir>/summary.json`` and ``summary.md``).
    """
    config_files = config_list(config_file)
    if output_dir is None:
        output_dir = str(_resolve(config_files, "output_dir", settings))
    num_folds = int(_resolve(config_files, "num_folds", settings))
    fold_metrics = {}
    for fold in parse_folds(folds, num_folds):
        run_fold(config_files, fold, output_dir, evaluate_config, **settings)
        fold_dir = Path(_resolve(config_files, "fold_dir", {**settings, "fold": fold, "output_dir": output_dir}))
        fold_metrics[fold] = json.loads((fold_dir / METRICS_JSON).read_text())
    summary = {**summarize(fold_metrics, ddof), "config_file": config_files}
    write_json(Path(output_dir) / SUMMARY_JSON, summary)
    text = format_summary(summary, f"Cross-validation summary: {' + '.join(config_files)}")
    (Path(output_dir) / SUMMARY_MD).write_text(text)
    print(text)
    return summary


def parse_runs(runs: str | Mapping[str, str]) -> dict[str, str]:
    """``"name=dir,name2=dir2"`` (or a mapping) → ordered ``{name: dir}``."""
    if isinstance(runs, Mapping):
        return {str(k): str(v) for k, v in runs.items()}
    parsed = {}
    for entry in str(runs).split(","):
        name, sep, directory = entry.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise ValueError(f"runs must be name=dir pairs separated by commas, got {entry!r} in {runs!r}.")
        parsed[name.strip()] = directory.strip()
    return parsed


def format_table(summaries: Mapping[str, Mapping[str, Any]]) -> str:
    """Table-1-style markdown: one row per run, BAC, IDS, AP and the calibrated ECE as mean ± std in %."""
    lines = [
        "| Model | " + " | ".join(f"{header} (%)" for header in TABLE_COLUMNS.values()) + " |",
        "|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for name, summary in summaries.items():
        cells = (_percent(summary["metrics"].get(k, {})) for k in TABLE_COLUMNS)  # n/a: summarised before ECE existed
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table(runs: str | Mapping[str, str], out: str | None = None) -> str:
    """Read ``<dir>/summary.json`` of each run and write (and print) the Table-1 markdown to ``out``."""
    summaries = {}
    for name, directory in parse_runs(runs).items():
        path = Path(directory) / SUMMARY_JSON
        if not path.is_file():
            raise FileNotFoundError(f"run {name!r}: {path} not found; run python -m scripts.cv for it first.")
        summaries[name] = json.loads(path.read_text())
    text = format_table(summaries)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    print(text)
    return text


def _printed_only(function: Any) -> Any:
    """``function`` returning None, so that fire does not print its result a second time."""

    @functools.wraps(function)
    def command(*args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)

    return command


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m scripts.cv [run options]`` or ``python -m scripts.cv table --runs ... --out ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(message)s")
    if argv[:1] == ["table"]:
        fire.Fire(_printed_only(table), command=argv[1:], name="scripts.cv table")
    else:
        fire.Fire(_printed_only(run), command=argv, name="scripts.cv")


if __name__ == "__main__":
    main()
