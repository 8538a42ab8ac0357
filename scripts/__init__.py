"""UM-ProtoShare MONAI bundle: custom components named by the configs.

After ``$import scripts`` a config can name any module or package below (``scripts.cli``,
``scripts.networks.UMProtoShare``, ...); each is imported on first use (:mod:`scripts.faces`). The
layers, from the ground up: ``data`` (inputs, the brain mask), ``prototypes`` and ``maps`` (what the
network, the losses and the read-outs share), ``networks`` and ``losses``, ``metrics`` and ``push``,
``engine`` and ``explain``, then the workflows (``evaluate``, ``inference``, ``prune``, ``cv``, ...).
"""

from __future__ import annotations

from scripts.faces import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        name: name
        for name in (
            "calibration",
            "cli",
            "compare",
            "confidence",
            "counterfactual",
            "cv",
            "data",
            "engine",
            "evaluate",
            "explain",
            "inference",
            "losses",
            "maps",
            "metrics",
            "networks",
            "prototypes",
            "prune",
            "push",
            "stack_4d",
            "uncertainty",
            "weights",
        )
    },
)
