"""Data: datalists, folds, validation, transforms, synthetic BraTS generator.

The names below are what configs use (``$scripts.data.ensure_datalist(...)``,
``scripts.data.preprocessing_transforms``, ...). They are loaded on first use, so that
``python -m scripts.data.datalist`` and ``python -m scripts.data.synthetic`` run their module
once, as ``__main__``, instead of importing it twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DataError": "errors",
    "foreground_mask": "foreground",
    "foreground_on_grid": "foreground",
    "FlattenBackgroundd": "transforms",
    "RecordForegroundd": "transforms",
    "SEQUENCES": "layouts",
    "LAYOUTS": "layouts",
    "detect_layout": "layouts",
    "find_case_files": "layouts",
    "check_case": "validate",
    "validate_cases": "validate",
    "assign_folds": "folds",
    "split_fold": "folds",
    "split_validation": "folds",
    "DEFAULT_CLASS_NAMES": "datalist",
    "build_datalist": "datalist",
    "write_datalist": "datalist",
    "load_datalist": "datalist",
    "ensure_datalist": "datalist",
    "WHOLE_TUMOUR_LABELS": "transforms",
    "whole_tumour": "transforms",
    "output_size": "transforms",
    "preprocessing_transforms": "transforms",
    "augmentation_transforms": "transforms",
    "RandChannelwised": "transforms",
    "make_dataset": "transforms",
    "GENERATOR_VERSION": "synthetic",
    "brats_affine": "synthetic",
    "generate_case": "synthetic",
    "generate_dataset": "synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__() -> list[str]:
    return __all__
