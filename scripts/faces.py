"""The one face every package of ``scripts`` shows: a table of its public names, each loaded on first use.

A package's ``__init__`` holds a docstring and a table ``name -> submodule`` and nothing else::

    __all__, __getattr__, __dir__ = exports(__name__, {"UMProtoShare": "model", ...})

``scripts.networks.UMProtoShare`` (in code or in a config) imports ``scripts.networks.model`` then;
importing the package alone imports nothing, so ``python -m scripts.data.synthetic`` and the like run
their module once, as ``__main__``, and a config pays only for what it names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["exports"]


def exports(
    package: str, table: Mapping[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` of ``package`` from ``table`` (name -> submodule).

    A name equal to its submodule's stands for the submodule itself (``scripts.cli``).
    """
    names = sorted(table)

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f".{table[name]}", package)
        return module if name == table[name] else getattr(module, name)

    def __dir__() -> list[str]:
        return names

    return names, __getattr__, __dir__
