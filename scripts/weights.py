"""Does a checkpoint fit a network, and if not, which of the bundle's config stacks was it trained with?

A checkpoint is read with ``torch.load(weights_only=True)`` and compared with ``network.state_dict()``
key by key (:func:`fit`). The known config stacks are ``configs/inference.json`` alone (the default)
and with each architecture override of ``configs/quickstart.json``, ``configs/baselines/*.json`` and
``configs/ablations/*.json`` (the quick start's on top of a baseline or ablation too); each stack's
``network_def`` and its warm-up CNN (``warmup_network_def`` of ``configs/train.json``) are built on the
CPU (under a second each; the networks' initialisation does not run on the ``meta`` device), and
:func:`suggest_stack` names the first whose shapes the checkpoint matches.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import torch
from monai.bundle import ConfigParser
from torch import nn

__all__ = ["Fit", "fit", "known_stacks", "optional_state_keys", "read_state_dict", "suggest_stack"]

MODEL_KEY = "model"
"""The key MONAI's ``CheckpointLoader`` (``load_dict={"model": ...}``) accepts a state dict under."""


class Fit(NamedTuple):
    """How a state dict fits a network: keys only the network has, keys only the checkpoint has, and
    the first key (network order) whose shapes differ, as ``(key, checkpoint shape, network shape)``."""

    missing: list[str]
    unexpected: list[str]
    mismatch: tuple[str, tuple[int, ...], tuple[int, ...]] | None

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected and self.mismatch is None

    def describe(self) -> str:
        """``N missing and M unexpected keys; first mismatched shape: k (..) in the checkpoint, (..) in the network``"""
        text = f"{len(self.missing)} missing and {len(self.unexpected)} unexpected keys"
        if self.mismatch is not None:
            key, theirs, ours = self.mismatch
            text += f"; first mismatched shape: {key} {tuple(theirs)} in the checkpoint, {tuple(ours)} in the network"
        return text


def read_state_dict(checkpoint: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in a loaded checkpoint (itself, or under ``"model"``); None when it holds no tensors by name."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(MODEL_KEY), Mapping):
        checkpoint = checkpoint[MODEL_KEY]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in checkpoint.items()):
        return None
    return dict(checkpoint)


def optional_state_keys(network: nn.Module) -> set[str]:
    """State-dict keys ``network`` fills itself when a checkpoint lacks them: each module's ``optional_state``
    entries (the classifier's pruning mask, which checkpoints from before pruning do not have)."""
    return {
        f"{name}.{key}" if name else key
        for name, module in network.named_modules()
        for key in getattr(module, "optional_state", ())
    }


def fit(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], optional: Collection[str] = ()
) -> Fit:
    """Compare a checkpoint's ``state`` with a network's ``expected`` state dict (names and shapes); the
    ``optional`` keys (:func:`optional_state_keys`) may be missing."""
    mismatch = next(
        ((k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
         if k in state and state[k].shape != v.shape),
        None,
    )
    missing = [k for k in expected if k not in state and k not in optional]
    return Fit(missing, [k for k in state if k not in expected], mismatch)


def _network_fields(base: Mapping[str, Any]) -> set[str]:
    """Top-level settings ``network_def`` refers to (``"@encoder_width"`` → ``encoder_width``)."""
    return {v[1:] for v in base["network_def"].values() if isinstance(v, str) and v.startswith("@")}


def known_stacks(bundle_root: str | PathLike) -> dict[str, dict[str, Any]]:
    """Name (``configs/quickstart.json + configs/baselines/protopnet.json``, ``configs/inference.json alone``
    for the default) → the architecture settings those overrides put over ``configs/inference.json``; of
    stacks that end with the same settings only the first is kept (``configs/baselines/cnn_gradcam.json``
    and ``configs/ablations/e2.json`` train the default network)."""
    configs = Path(bundle_root) / "configs"
    base = json.loads((configs / "inference.json").read_text())
    fields = _network_fields(base)

    def settings(file: Path) -> dict[str, Any]:
        return {k: v for k, v in json.loads(file.read_text()).items() if k in fields}

    quickstart = settings(configs / "quickstart.json")
    candidates = {"configs/inference.json alone": {}, "configs/quickstart.json": quickstart}
    for file in sorted([*(configs / "baselines").glob("*.json"), *(configs / "ablations").glob("*.json")]):
        name = file.relative_to(configs.parent).as_posix()
        candidates |= {name: settings(file), f"configs/quickstart.json + {name}": quickstart | settings(file)}
    defaults = {k: base[k] for k in fields}
    stacks: dict[str, dict[str, Any]] = {}
    for name, overrides in candidates.items():
        if defaults | overrides not in [defaults | kept for kept in stacks.values()]:
            stacks[name] = overrides
    return stacks


def _stack_shapes(
    bundle_root: Path, overrides: Mapping[str, Any]
) -> Iterator[tuple[str, dict[str, torch.Size], set[str]]]:
    """``("network_def", shapes, optional keys)`` and the same for ``"warmup_network_def"`` of one stack."""
    configs = bundle_root / "configs"
    config = json.loads((configs / "inference.json").read_text())
    config["warmup_network_def"] = json.loads((configs / "train.json").read_text())["warmup_network_def"]
    config |= {**overrides, "pretrained_path": None, "device": "cpu", "bundle_root": str(bundle_root)}
    parser = ConfigParser(config)
    for key in ("network_def", "warmup_network_def"):
        network: nn.Module = parser.get_parsed_content(key, instantiate=True)
        yield key, {k: v.shape for k, v in network.state_dict().items()}, optional_state_keys(network)


def suggest_stack(state: Mapping[str, torch.Tensor], bundle_root: str | PathLike) -> str:
    """One clause naming the known config stacks whose network (or warm-up CNN) ``state`` fits, else the closest;
    of stacks whose networks have the same shapes, the first of :func:`known_stacks` is named."""
    root = Path(bundle_root)
    fits: dict[str, list[str]] = {"network_def": [], "warmup_network_def": []}
    seen: set[tuple[str, frozenset]] = set()  # stacks with one network's shapes are named once, by the first
    best, best_score = None, 0
    for name, overrides in known_stacks(root).items():
        for key, shapes, optional in _stack_shapes(root, overrides):
            signature = (key, frozenset((k, tuple(v)) for k, v in shapes.items()))
            if signature in seen:
                continue
            seen.add(signature)
            if fit(state, {k: torch.empty(s, device="meta") for k, s in shapes.items()}, optional).ok:
                fits[key].append(name)
            score = sum(k in shapes and shapes[k] == v.shape for k, v in state.items())
            if score > best_score:
                best, best_score = (name, key), score
    if fits["network_def"]:
        return f"it fits the network of {' or '.join(fits['network_def'])}: put that stack in --config_file"
    if fits["warmup_network_def"]:
        return (f"these are the weights of the CNN baseline (warmup_network_def of configs/train.json with "
                f"{' or '.join(fits['warmup_network_def'])}), not of a UM-ProtoShare")
    if best is None:
        return "no known config stack fits (none has a tensor of this name and shape)"
    name, key = best
    return f"no known config stack fits; closest: {key} of {name} ({best_score} of {len(state)} tensors fit)"
