"""Data: datalists, folds, validation, the cases to grade, transforms, synthetic BraTS generator.

The names below are what configs use (``$scripts.data.ensure_datalist(...)``,
``scripts.data.preprocessing_transforms``, ...). Each is loaded on first use
(:mod:`scripts.faces`).
"""

from __future__ import annotations

from scripts.faces import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "CSV_IMAGE_COLUMNS": "cases",
        "InferenceCases": "cases",
        "find_cases": "cases",
        "known_grades": "cases",
        "DEFAULT_CLASS_NAMES": "datalist",
        "build_datalist": "datalist",
        "ensure_datalist": "datalist",
        "load_datalist": "datalist",
        "write_datalist": "datalist",
        "DataError": "errors",
        "assign_folds": "folds",
        "split_fold": "folds",
        "split_validation": "folds",
        "brain_mask": "foreground",
        "foreground_mask": "foreground",
        "foreground_on_grid": "foreground",
        "LAYOUTS": "layouts",
        "SEQUENCES": "layouts",
        "detect_layout": "layouts",
        "find_case_files": "layouts",
        "GENERATOR_VERSION": "synthetic",
        "brats_affine": "synthetic",
        "generate_case": "synthetic",
        "generate_dataset": "synthetic",
        "FlattenBackgroundd": "transforms",
        "RandChannelwised": "transforms",
        "RecordForegroundd": "transforms",
        "WHOLE_TUMOUR_LABELS": "transforms",
        "augmentation_transforms": "transforms",
        "make_dataset": "transforms",
        "output_size": "transforms",
        "preprocessing_transforms": "transforms",
        "whole_tumour": "transforms",
        "check_case": "validate",
        "validate_cases": "validate",
    },
)
