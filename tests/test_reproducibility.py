"""Seeded CPU runs repeat bit for bit at a given ``num_threads``, whatever ``OMP_NUM_THREADS`` says.

Each run is a fresh ``monai.bundle run training`` process on the micro settings (own cache and datalist),
as two machines would run it. Whether another thread count gives other weights depends on the BLAS and
oneDNN builds (it does with torch 2.13.0+cpu), not on this code, so it is not asserted here. Each run logs
the fingerprints that tell data from arithmetic (scripts/engine/fingerprint.py); equal runs log equal ones.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from test_engine_micro import MICRO

from scripts.engine import configure_determinism
from tests.helpers import assert_identical, run_process_group


@pytest.fixture
def restore_threads():
    """Put torch's thread count back after the test."""
    saved = torch.get_num_threads()
    yield
    torch.set_num_threads(saved)


def test_configure_determinism_seeds_and_fixes_the_thread_count(restore_threads):
    configure_determinism(3, num_threads=1)
    first = torch.rand(4)
    assert torch.get_num_threads() == 1
    configure_determinism(3, num_threads=2)
    assert torch.get_num_threads() == 2 and torch.equal(torch.rand(4), first)
    configure_determinism(4)  # None keeps the thread count
    assert torch.get_num_threads() == 2 and not torch.equal(torch.rand(4), first)


def _train(root: Path, dataset_dir: Path, omp_threads: int, num_threads: int) -> tuple[Path, str]:
    """Train the micro run in a fresh process under ``OMP_NUM_THREADS=omp_threads``; returns its fold folder
    and its log."""
    root.mkdir()
    override = {
        **MICRO,
        "stage1_epochs": 2,  # warm-up, two stage-1 epochs, a push, one stage-3 epoch
        "stage3_epochs": 1,
        "train#trainer#train_handlers": "$[h for h in @train#handlers if type(h).__name__ != 'PrototypeGallery']",
        "num_threads": num_threads,
        "dataset_dir": str(dataset_dir),
        "datalist_file": str(root / "datalist.json"),
        "cache_dir": str(root / "cache"),
        "output_dir": str(root / "out"),
    }
    (root / "micro.json").write_text(json.dumps(override))
    configs = ["configs/train.json", str(root / "micro.json")]
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(configs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "MKL_NUM_THREADS": str(omp_threads)}
    done = run_process_group(command, env, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    return root / "out" / "fold0", done.stdout + done.stderr


def _logged(log: str, pattern: str) -> str:
    found = re.findall(pattern, log)
    assert len(found) == 1, (pattern, log[-4000:])
    return found[0]


def test_same_num_threads_gives_identical_runs_whatever_the_environment(data_synthetic_root, tmp_path):
    one, one_log = _train(tmp_path / "omp1", data_synthetic_root, omp_threads=1, num_threads=2)
    three, three_log = _train(tmp_path / "omp3", data_synthetic_root, omp_threads=3, num_threads=2)
    weights = [torch.load(fold / "model.pt", weights_only=True) for fold in (one, three)]
    assert_identical(weights[0], weights[1])
    for name in ("heldout_bac.json", "push.json"):
        assert (one / name).read_text() == (three / name).read_text(), name
    # the fingerprints say so too: same arithmetic (2 threads both), same first batch and initial weights
    for pattern in (r"arithmetic fingerprint (\w+): .*threads 2,", r"fingerprints: first training batch (\w+, .*)"):
        assert _logged(one_log, pattern) == _logged(three_log, pattern)
    batch, weights_hash = _logged(one_log, r"first training batch (\w+), initial weights (\w+)")
    assert len(batch) == len(weights_hash) == 12 and batch != weights_hash
