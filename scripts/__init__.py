"""UM-ProtoShare MONAI bundle: custom components named by the configs.

After ``$import scripts`` a config can name ``scripts.cli``, ``scripts.data``, ``scripts.engine``, ``scripts.evaluate``, ``scripts.explain``,
``scripts.losses``, ``scripts.metrics``, ``scripts.networks``, ``scripts.push`` and ``scripts.compare``; each is imported on first
use, so that ``python -m scripts.data.datalist`` (and the like) do not import their module twice.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = ("cli", "compare", "data", "engine", "evaluate", "explain", "losses", "metrics", "networks", "push")
__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> ModuleType:
    if name not in _SUBMODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return importlib.import_module(f".{name}", __name__)


def __dir__() -> list[str]:
    return __all__
