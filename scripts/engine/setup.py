"""Run set-up used by the configs: switches checked, datalist, synthetic data on first use, seeds and threads, torch back-end switches,
placement."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import monai
import torch
from torch import nn

from scripts.data import ensure_datalist, generate_dataset
from scripts.engine.fingerprint import arithmetic_environment, short_hash, volumes_fingerprint

__all__ = [
    "check_flags",
    "compiled",
    "configure_backends",
    "configure_determinism",
    "ensure_synthetic_dataset",
    "place",
    "training_datalist",
]

logger = logging.getLogger(__name__)

SYNTHETIC_FINGERPRINT = "voxels_fingerprint.txt"


def training_datalist(
    dataset_dir: str | PathLike,
    datalist_file: str | PathLike,
    class_names: Sequence[str],
    seed: int = 0,
    num_folds: int = 5,
    layout: str = "auto",
    skip_bad_cases: bool = False,
    check_voxels: bool = True,
) -> dict:
    """The datalist at ``datalist_file`` (built on first use by ``ensure_datalist``), checked against ``dataset_dir``.

    Raises:
        ValueError: the file was built from another dataset than ``dataset_dir`` (or a sub-folder of it).
    """
    datalist = ensure_datalist(
        dataset_dir,
        datalist_file,
        class_names,
        seed,
        num_folds,
        layout=layout,
        skip_bad_cases=skip_bad_cases,
        check_voxels=check_voxels,
    )
    wanted = Path(os.path.abspath(Path(dataset_dir).expanduser()))
    built_from = Path(datalist.get("dataset", ""))
    if built_from != wanted and wanted not in built_from.parents:
        raise ValueError(
            f"datalist {datalist_file} was built from {built_from}, not from dataset_dir {wanted}: delete it or "
            "give another --datalist_file."
        )
    return datalist


def ensure_synthetic_dataset(
    directory: str | PathLike,
    cases: int = 40,
    shape: Sequence[int] = (72, 72, 54),
    seed: int = 0,
    hgg_fraction: float = 0.5,
    ambiguous_fraction: float = 0.0,
    family: str = "quickstart",
) -> str:
    """A synthetic BraTS 2020 folder of the phantom ``family`` at ``directory``, generated unless its
    ``name_mapping.csv`` exists.

    ``generate_dataset`` writes ``name_mapping.csv`` last, so an interrupted generation is redone. The
    fingerprint of its voxels and affines (:func:`~scripts.engine.fingerprint.volumes_fingerprint`) is
    logged; it is computed once and kept in ``<directory>/`` :data:`SYNTHETIC_FINGERPRINT`.

    Returns:
        ``directory`` as a string (use it as ``dataset_dir``).

    Raises:
        ValueError: the folder holds another family's phantoms (folders written before families existed
            hold ``quickstart`` ones).
    """
    directory = Path(directory)
    if not (directory / "name_mapping.csv").is_file():
        logger.info("generating %d synthetic %s cases of %s voxels in %s", cases, family, tuple(shape), directory)
        generate_dataset(directory, cases, shape, seed, hgg_fraction, ambiguous_fraction, family=family)
    with open(directory / "synthetic_info.csv", newline="") as f:
        found = next(csv.DictReader(f), {}).get("family", "quickstart")
    if found != family:
        raise ValueError(
            f"{directory} holds {found!r} phantoms, not {family!r}: give the family its own synthetic_root "
            "or delete the folder."
        )
    stamp = directory / SYNTHETIC_FINGERPRINT
    if not stamp.is_file():  # computed once (seconds for the quick start's 80 cases), then read back
        stamp.write_text(volumes_fingerprint(directory) + "\n")
    logger.info("synthetic data fingerprint %s (voxels and affines of %s)", stamp.read_text().strip(), directory)
    return str(directory)


def configure_determinism(seed: int | None, num_threads: int | None = None) -> None:
    """Seed torch, NumPy and Python (MONAI ``set_determinism``) and fix torch's CPU thread count.

    A seeded CPU run repeats bit for bit on one machine at one thread count: ATen's parallel reductions and
    oneDNN's convolution weight gradients split their sums by thread, so a fixed ``num_threads`` (rather than
    the machine's core count or ``OMP_NUM_THREADS``) is needed for runs to agree anywhere. Across machines
    the kernels MKL and oneDNN pick (by CPU model, extensions and cache sizes) decide too: all that is logged
    here with a short hash (:func:`~scripts.engine.fingerprint.arithmetic_environment`), so two runs' logs
    say whether their arithmetic may differ. ``None`` keeps torch's default (``OMP_NUM_THREADS``, else one
    thread per core).
    """
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    monai.utils.set_determinism(seed=seed)
    logger.info(
        "seed %s, torch %s on %d CPU threads (%s), CPU capability %s",
        seed, torch.__version__, torch.get_num_threads(), "fixed" if num_threads is not None else "torch's default",
        torch.backends.cpu.get_cpu_capability(),
    )
    environment = arithmetic_environment()
    logger.info("arithmetic fingerprint %s: %s", short_hash(repr(sorted(environment.items()))),
                ", ".join(f"{k} {v}" for k, v in environment.items()))


def check_flags(flags: Mapping[str, Any]) -> None:
    """Refuse a switch that is not a bool, naming it: ``monai.bundle run`` passes ``--use_oc false`` (any spelling
    but ``True``/``False``) as the string ``'false'``, which Python reads as true, so the run would silently do
    the opposite.

    Args:
        flags: setting name → its resolved value.

    Raises:
        ValueError: the first setting whose value is not a bool.
    """
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(
                f"--{name} must be True or False, got {value!r} ({type(value).__name__}): write --{name} True or "
                f"--{name} False (other spellings reach the configuration as strings, and any non-empty string "
                "counts as true)."
            )


def configure_backends(cudnn_benchmark: bool = False, deterministic: bool = False) -> None:
    """cuDNN autotuning and deterministic algorithms (``deterministic`` wins over ``cudnn_benchmark``).

    Deterministic mode sets ``CUBLAS_WORKSPACE_CONFIG`` if unset and warns (rather than fails) on
    operations without a deterministic implementation, e.g. trilinear upsampling's CUDA backward.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic


def place(module: nn.Module, device: str | torch.device, channels_last_3d: bool = False) -> nn.Module:
    """``module`` moved to ``device`` (in place), with channels-last 3D weights if asked."""
    module.to(device)
    if channels_last_3d:
        module.to(memory_format=torch.channels_last_3d)
    return module


def compiled(module: nn.Module, enabled: bool = False, backend: str = "inductor") -> nn.Module:
    """``torch.compile(module, backend=backend)`` when ``enabled`` (the config's ``compile`` switch), else ``module``.

    Compilation happens on the first call; the compiled module shares ``module``'s parameters.
    """
    return torch.compile(module, backend=backend) if enabled else module
