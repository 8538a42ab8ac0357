"""The two names ``monailabel.transform.post`` imports; calling either fails loudly."""

from __future__ import annotations

from typing import Any


def make_grid(*args: Any, **kwargs: Any) -> Any:
    """Not available: this is a stand-in (tests/stand_ins/torchvision)."""
    raise NotImplementedError("torchvision stand-in: make_grid is not available")


def save_image(*args: Any, **kwargs: Any) -> Any:
    """Not available: this is a stand-in (tests/stand_ins/torchvision)."""
    raise NotImplementedError("torchvision stand-in: save_image is not available")
