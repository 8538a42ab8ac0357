"""Assertions and builders shared by several test files."""

from __future__ import annotations

import inspect
import itertools
import os
import signal
import subprocess
from pathlib import Path

import torch
from monai.bundle import ConfigParser
from torch import nn

from scripts.networks import PrototypeHead, UMProtoShare


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


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...), read from Linux's ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    # the command name in parentheses may hold spaces; the parent pid is the 2nd field after it
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def run_process_group(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command`` in a new session, capturing its output; past ``timeout`` seconds kill it and every descendant.

    A ``torchrun`` launcher's workers hold the output pipes too, and torch starts each worker in a
    session of its own, so neither killing only the launcher (what ``subprocess.run`` does on timeout)
    nor killing its process group would stop the test from waiting for them forever.
    """
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = descendants(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stdout, stderr = process.communicate()
        raise AssertionError(f"{command} ran past {timeout} s and was killed:\n{stdout[-4000:]}\n{stderr[-8000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


BASELINE_DIR = Path(__file__).resolve().parents[1] / "configs" / "baselines"
BASELINE_CONFIGS = sorted(path.stem for path in BASELINE_DIR.glob("*.json"))
"""Every override file of ``configs/baselines``: the one description of the Table 1 baselines."""


def baseline_parser(name: str, **overrides) -> ConfigParser:
    """``configs/train.json`` with ``configs/baselines/<name>.json`` on top, on the CPU, with ``overrides``."""
    parser = ConfigParser()
    parser.read_config([str(BASELINE_DIR.parent / "train.json"), str(BASELINE_DIR / f"{name}.json")])
    parser.update({"device": "cpu", **overrides})
    return parser


def is_cnn_baseline(name: str) -> bool:
    """Whether the baseline's model is the warm-up CNN itself (its config's ``fold_model``)."""
    return baseline_parser(name)["fold_model"] == "@warmup_network"


PROTOTYPE_BASELINES = [name for name in BASELINE_CONFIGS if not is_cnn_baseline(name)]


def tiny_sizes(name: str, width: int = 8, embed: int = 16, mapping: int = 12) -> dict:
    """Tiny widths for a baseline's config; a one-stage encoder (MAProtoNet's) keeps one block."""
    stages = len(baseline_parser(name).get_parsed_content("encoder_layers"))
    return {"encoder_layers": [1] * stages, "encoder_width": width, "embed_dim": embed, "mapping_dim": mapping}


def tiny_baseline(name: str, seed: int = 0, **overrides) -> nn.Module:
    """The model a baseline config trains (``fold_model``), at tiny widths, built after ``torch.manual_seed(seed)``."""
    parser = baseline_parser(name, **{**tiny_sizes(name), **overrides})
    torch.manual_seed(seed)
    return parser.get_parsed_content("fold_model")


def head_fields(**overrides) -> dict:
    """Keyword fields of a :class:`~scripts.networks.PrototypeHead` with UMProtoShare's defaults (their one home)."""
    head = inspect.signature(PrototypeHead).parameters
    fields = {
        name: parameter.default
        for name, parameter in inspect.signature(UMProtoShare).parameters.items()
        if name in head and head[name].kind is inspect.Parameter.KEYWORD_ONLY
    }
    return {**fields, **overrides}


def mirror_probabilities(model: nn.Module, image: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """softmax(logits / T) of the 8 mirror images of one case (1, C_in, H, W, D), computed here by hand
    (not with scripts.uncertainty): (8, C), the image as given first."""
    mirrors = [image.flip(axes) for n in range(4) for axes in itertools.combinations((2, 3, 4), n)]
    with torch.no_grad():
        return torch.stack([torch.softmax(model(m)[0] / temperature, 0) for m in mirrors])
