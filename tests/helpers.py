"""Assertions shared by several test files."""

from __future__ import annotations

import os
import signal
import subprocess

import torch


def assert_identical(a, b, path: str = "") -> None:
    """Assert that two nested structures of tensors, dicts, lists and values are equal, bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_identical(a[key], b[key], f"{path}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{path}/{i}")
    else:
        assert a == b, path


def run_process_group(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` in a new session, capturing its output; past ``timeout`` seconds kill the whole group.

    A ``torchrun`` launcher's workers hold the output pipes too, so killing only the launcher (what
    ``subprocess.run`` does on timeout) could leave the test waiting for them forever.
    """
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{command} ran past {timeout} s and was killed:\n{stdout[-4000:]}\n{stderr[-8000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
