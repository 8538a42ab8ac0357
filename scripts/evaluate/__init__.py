"""Held-out fold evaluation (SPEC §6): metrics, class maps, AP, IDS, files, missing-sequence robustness.
"""

from __future__ import annotations

from scripts.faces import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "CASES_CSV": "fold",
        "DELETION_PNG": "fold",
        "FoldEvaluator": "fold",
        "FoldPredictions": "fold",
        "MAPS_DIR": "fold",
        "METRICS_JSON": "fold",
        "MISSING_JSON": "fold",
        "RELIABILITY_PNG": "fold",
        "load_fold_weights": "fold",
        "predict_fold": "fold",
        "missing_sequence_bac": "missing",
        "missing_subsets": "missing",
        "replace_missing": "missing",
        "plot_deletion_curve": "outputs",
        "read_case_table": "outputs",
        "save_volume": "outputs",
        "write_case_table": "outputs",
        "write_json": "outputs",
    },
)
