"""Training engine: the schedule as data, the staged iteration, and the ignite handlers named by the configs.
"""

from __future__ import annotations

from scripts.faces import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "CLASS_BALANCE": "balance",
        "ClassBalance": "balance",
        "class_balance_weights": "balance",
        "class_balanced_sampler": "balance",
        "FoldCalibration": "calibration",
        "calibrate_network": "calibration",
        "validation_logits": "calibration",
        "BroadcastFromRank0": "distributed",
        "ShardedEpochMetric": "distributed",
        "distributed_forward": "distributed",
        "EpochLog": "epoch_log",
        "LossProgressBar": "epoch_log",
        "write_epoch_tensorboard": "epoch_log",
        "HeldOutReport": "evaluation",
        "StageValidationHandler": "evaluation",
        "balanced_accuracy_from_logits": "evaluation",
        "StageEvents": "events",
        "attach_stage_events": "events",
        "FirstBatchFingerprint": "fingerprint",
        "EpochSeeder": "handlers",
        "LastLayerHandler": "handlers",
        "PushHandler": "handlers",
        "StageHandler": "handlers",
        "epoch_seed": "handlers",
        "StagedIteration": "iteration",
        "plain_tensor": "iteration",
        "train_last_layer_epoch": "iteration",
        "EpochCheckpoint": "persistence",
        "FinalModelWriter": "persistence",
        "RNGState": "persistence",
        "atomic_save": "persistence",
        "compiled": "setup",
        "configure_backends": "setup",
        "configure_determinism": "setup",
        "ensure_synthetic_dataset": "setup",
        "place": "setup",
        "training_datalist": "setup",
        "STAGES": "stages",
        "STAGE_GROUPS": "stages",
        "Schedule": "stages",
        "parameter_groups": "stages",
    },
)
