"""Which stage-1 objective learns and localises: each ``configs/objectives/*.json`` on the quick start, per seed.

Command (from the bundle root)::

    python -m benchmarks.objectives [--variants paper_sum,no_clustering,mean,max] [--seeds 0,1,2]
                                    [--base "['configs/train.json','configs/quickstart.json']"]
                                    [--out runs/objectives] [--num_threads 1]

Each (variant, seed) trains and evaluates fold 0 in a fresh process (``monai.bundle run training`` on
``base`` + the variant, ``--seed``), into ``<out>/<variant>/seed<s>``; a run whose ``metrics.json``
exists is not repeated; ``num_threads`` (torch's CPU threads per run) overrides the
base's (the quick start's 2). The quick start also evaluates its warm-up CNN with Grad-CAM (identical for
every variant of a seed), which the table shows once. Ends with :func:`scripts.compare.compare` over
the seeds (mean ± std), printed and written to ``<out>/comparison.json``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import fire

from scripts.compare import compare
from scripts.cv import config_list

DEFAULT_BASE = "['configs/train.json','configs/quickstart.json']"


def _names(values: str | Sequence) -> list[str]:
    return [str(v).strip() for v in (values.split(",") if isinstance(values, str) else values) if str(v).strip()]


def run_variant(base: Sequence[str], variant: str, seed: int, run_dir: Path, num_threads: int | None = None) -> Path:
    """Train and evaluate one (variant, seed) unless done; returns its fold-0 directory."""
    fold_dir = run_dir / "fold0"
    if not (fold_dir / "metrics.json").is_file():
        configs = [*base, f"configs/objectives/{variant}.json"]
        command = [
            sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(configs),
            "--seed", str(seed), "--output_dir", str(run_dir), "--progress_bar", "False",
        ] + ([] if num_threads is None else ["--num_threads", str(num_threads)])
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "log.txt", "w") as log:
            subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=True)
    return fold_dir


def main(
    variants: str | Sequence[str] = "paper_sum,no_clustering,mean,max",
    seeds: str | Sequence[int] = "0,1,2",
    base: str | Sequence[str] = DEFAULT_BASE,
    out: str = "runs/objectives",
    num_threads: int | None = None,
) -> None:
    """Run every variant on every seed, then print and write the comparison (see the module docstring)."""
    configs = config_list(base)
    out_dir = Path(out)
    runs: dict[str, list[str]] = {}
    cnn: list[str] = []
    for seed in (int(s) for s in _names(seeds)):
        for variant in _names(variants):
            fold_dir = run_variant(configs, variant, seed, out_dir / variant / f"seed{seed}", num_threads)
            runs.setdefault(variant, []).append(str(fold_dir))
            if len(cnn) < len(runs[variant]):
                cnn.append(str(fold_dir / "cnn_gradcam"))
    compare({**runs, "CNN + Grad-CAM": cnn}, out_dir / "comparison.json")


if __name__ == "__main__":
    fire.Fire(main)
