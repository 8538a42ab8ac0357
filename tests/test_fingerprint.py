"""Fingerprints of the arithmetic environment, the phantoms and the first training batch."""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine

from scripts.engine.fingerprint import (
    FirstBatchFingerprint,
    arithmetic_environment,
    short_hash,
    tensors_fingerprint,
    volumes_fingerprint,
)


def test_short_hash_is_the_sha256_prefix():
    assert short_hash("ab", b"c") == hashlib.sha256(b"abc").hexdigest()[:12]


def test_arithmetic_environment_names_the_build_the_cpu_and_the_kernel_caps(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    environment = arithmetic_environment()
    assert environment["torch"] == torch.__version__
    assert environment["capability"] == torch.backends.cpu.get_cpu_capability()
    assert environment["threads"] == str(torch.get_num_threads())
    assert environment["ONEDNN_MAX_CPU_ISA"] == "AVX512_CORE"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        text = cpuinfo.read_text()
        assert environment["cpu"] == re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
        assert ("avx512f" in environment["cpu_flags"].split(",")) == (" avx512f " in f" {text} ")


def _write(path: Path, voxels: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(voxels, np.diag([1.0, 1.0, 1.0, 1.0])), path)


def test_volumes_fingerprint_follows_voxels_not_compression(tmp_path):
    voxels = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    _write(tmp_path / "a_t1.nii.gz", voxels)
    before = volumes_fingerprint(tmp_path)
    raw = gzip.decompress((tmp_path / "a_t1.nii.gz").read_bytes())
    (tmp_path / "a_t1.nii.gz").write_bytes(gzip.compress(raw, compresslevel=1, mtime=12345))  # other bytes
    assert volumes_fingerprint(tmp_path) == before
    voxels[1, 2, 3] += 1
    _write(tmp_path / "a_t1.nii.gz", voxels)
    assert volumes_fingerprint(tmp_path) != before


def test_tensors_fingerprint_is_order_free_and_sees_one_bit():
    a, b = torch.arange(6.0), torch.ones(2, 2)
    assert tensors_fingerprint({"a": a, "b": b}) == tensors_fingerprint({"b": b, "a": a})
    flipped = a.clone()
    flipped.view(torch.int32)[3] ^= 1  # the last mantissa bit of one value
    assert tensors_fingerprint({"a": flipped, "b": b}) != tensors_fingerprint({"a": a, "b": b})
    assert tensors_fingerprint({"a": a.reshape(2, 3)}) != tensors_fingerprint({"a": a})


def test_first_batch_fingerprint_logs_the_first_batch_only(caplog):
    network = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))  # a 0-d buffer too
    batches = [{"image": torch.full((1, 2), float(i)), "label": torch.tensor([i])} for i in range(3)]
    handler = FirstBatchFingerprint(network)
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    with caplog.at_level(logging.INFO, logger="scripts.engine.fingerprint"):
        engine.run(batches, max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if "first training batch" in r.getMessage()]
    expected = (f"fingerprints: first training batch {tensors_fingerprint(batches[0])}, "
                f"initial weights {tensors_fingerprint(network.state_dict())}")
    assert lines == [expected]


def test_a_kernel_cap_changes_the_logged_arithmetic_fingerprint(monkeypatch, restore_backends):
    from scripts.engine.setup import configure_determinism

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("scripts.engine.setup")
    logger.addHandler(handler)
    saved_level, threads = logger.level, torch.get_num_threads()
    logger.setLevel(logging.INFO)
    try:
        configure_determinism(0)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        configure_determinism(0)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
        torch.set_num_threads(threads)
    hashes = [re.search(r"arithmetic fingerprint (\w+)", r.getMessage()).group(1) for r in records
              if "arithmetic fingerprint" in r.getMessage()]
    assert len(hashes) == 2 and hashes[0] != hashes[1]
