"""Fingerprints that tell, when two seeded runs differ, whether the data or the arithmetic differs.

- :func:`arithmetic_environment`: what decides the floating-point path of a CPU run besides the seed: the
  torch, MKL and oneDNN builds, the CPU (model, the AVX-512/AMX extensions oneDNN and MKL dispatch on,
  cache sizes, which set their blocking) and the environment variables that cap their kernels;
- :func:`volumes_fingerprint`: the voxels and affines of a folder's NIfTI files (not their compressed bytes);
- :class:`FirstBatchFingerprint`: the first training batch (after augmentation) and the initial weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

from scripts.networks.precision import cpu_info

__all__ = ["FirstBatchFingerprint", "arithmetic_environment", "short_hash", "tensors_fingerprint",
           "volumes_fingerprint"]

logger = logging.getLogger(__name__)

KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ONEDNN_DEFAULT_FPMATH_MODE", "ATEN_CPU_CAPABILITY",
              "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE")
"""Environment variables that change which kernels run."""


def short_hash(*parts: bytes | str) -> str:
    """First 12 hex digits of the SHA-256 of ``parts`` in order."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()[:12]


def _caches() -> str:
    """``L1d 32K L2 1024K L3 32768K`` of CPU 0 (empty off Linux)."""
    sizes = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind, size = ((index / n).read_text().strip() for n in ("level", "type", "size"))
        except OSError:
            continue
        if kind != "Instruction":
            sizes.append(f"L{level}{'d' if kind == 'Data' else ''} {size}")
    return " ".join(sizes)


def arithmetic_environment() -> dict[str, str]:
    """What, besides the seed and the code, decides a CPU run's numbers (see the module doc)."""
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version (\S+)", config)
    onednn = re.search(r"MKL-DNN (v\S+)", config)
    model, flags = cpu_info()
    environment = {
        "torch": torch.__version__,
        "mkl": mkl.group(1) if mkl else "none",
        "onednn": onednn.group(1) if onednn else "none",
        "onednn_enabled": str(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
        "cpu": model,
        "cpu_flags": ",".join(flags),
        "caches": _caches(),
    }
    environment |= {name: os.environ[name] for name in KERNEL_ENV if name in os.environ}
    return environment


def volumes_fingerprint(directory: str | PathLike) -> str:
    """:func:`short_hash` of every NIfTI file under ``directory`` (sorted by path): its relative path,
    voxel dtype, shape and bytes and its affine — so it survives recompression."""
    root = Path(directory)
    parts: list[bytes | str] = []
    for path in sorted(p for p in root.rglob("*") if p.name.endswith((".nii", ".nii.gz"))):
        image = nib.load(path)
        voxels = np.ascontiguousarray(np.asanyarray(image.dataobj))
        parts += [path.relative_to(root).as_posix(), str(voxels.dtype), str(voxels.shape), voxels.tobytes(),
                  np.asarray(image.affine, dtype=np.float64).tobytes()]
    return short_hash(*parts)


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """:func:`short_hash` of named tensors (sorted by name): name, dtype, shape, bytes."""
    parts: list[bytes | str] = []
    for name in sorted(tensors):
        value = tensors[name].detach().as_subclass(torch.Tensor).cpu().contiguous()
        raw = value.reshape(-1).view(torch.uint8).numpy().tobytes()  # reshape: a 0-d tensor has no byte view
        parts += [name, str(value.dtype), str(tuple(value.shape)), raw]
    return short_hash(*parts)


class FirstBatchFingerprint:
    """Trainer handler logging, before the first iteration, the fingerprint of its batch (``image`` and
    ``label`` as the network gets them, augmentation included) and of ``network``'s weights."""

    def __init__(self, network: nn.Module, keys: tuple[str, ...] = ("image", "label")) -> None:
        self.network = network
        self.keys = keys

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        tensors = {k: torch.as_tensor(batch[k]) for k in self.keys if k in batch}
        logger.info("fingerprints: first training batch %s, initial weights %s", tensors_fingerprint(tensors),
                    tensors_fingerprint(self.network.state_dict()))
