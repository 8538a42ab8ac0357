"""Seeded CPU runs repeat bit for bit at a given ``num_threads``, whatever ``OMP_NUM_THREADS`` says.

Each run is a fresh ``monai.bundle run training`` process on the micro settings (own cache and datalist),
as two machines would run it. The thread count is part of the result: ATen's parallel reductions and
oneDNN's convolution weight gradients split their sums by thread, so 1 and 2 threads give other weights.
"""

from __future__ import annotations

import json
import os
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


def _train(root: Path, dataset_dir: Path, omp_threads: int, num_threads: int) -> Path:
    """Train the micro run in a fresh process under ``OMP_NUM_THREADS=omp_threads``; returns its fold folder."""
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
    return root / "out" / "fold0"


def test_same_num_threads_gives_identical_runs_whatever_the_environment(data_synthetic_root, tmp_path):
    one = _train(tmp_path / "omp1", data_synthetic_root, omp_threads=1, num_threads=2)
    three = _train(tmp_path / "omp3", data_synthetic_root, omp_threads=3, num_threads=2)
    weights = [torch.load(fold / "model.pt", weights_only=True) for fold in (one, three)]
    assert_identical(weights[0], weights[1])
    for name in ("heldout_bac.json", "push.json"):
        assert (one / name).read_text() == (three / name).read_text(), name
    # the thread count itself is part of the result (what makes the equality above worth checking)
    single = _train(tmp_path / "single", data_synthetic_root, omp_threads=2, num_threads=1)
    other = torch.load(single / "model.pt", weights_only=True)
    assert any(not torch.equal(other[key], weights[0][key]) for key in other)
