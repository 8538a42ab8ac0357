"""Held-out fold evaluation (SPEC §6): metrics, class maps, AP, IDS, files, missing-sequence robustness."""

from .fold import (
    CASES_CSV,
    DELETION_PNG,
    MAPS_DIR,
    METRICS_JSON,
    MISSING_JSON,
    RELIABILITY_PNG,
    FoldEvaluator,
    FoldPredictions,
    load_fold_weights,
    predict_fold,
)
from .missing import missing_sequence_bac, missing_subsets, replace_missing
from .outputs import plot_deletion_curve, read_case_table, save_volume, write_case_table, write_json

__all__ = [
    "CASES_CSV",
    "DELETION_PNG",
    "MAPS_DIR",
    "METRICS_JSON",
    "MISSING_JSON",
    "RELIABILITY_PNG",
    "FoldEvaluator",
    "FoldPredictions",
    "load_fold_weights",
    "missing_sequence_bac",
    "missing_subsets",
    "plot_deletion_curve",
    "predict_fold",
    "read_case_table",
    "replace_missing",
    "save_volume",
    "write_case_table",
    "write_json",
]
