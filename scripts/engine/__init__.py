"""Training engine: the schedule as data, the staged iteration, and the ignite handlers named by the configs."""

from .balance import CLASS_BALANCE, ClassBalance, class_balance_weights, class_balanced_sampler
from .calibration import FoldCalibration, calibrate_network, validation_logits
from .distributed import BroadcastFromRank0, ShardedEpochMetric, distributed_forward
from .epoch_log import EpochLog, LossProgressBar, write_epoch_tensorboard
from .events import StageEvents, attach_stage_events
from .evaluation import HeldOutReport, StageValidationHandler, balanced_accuracy_from_logits
from .fingerprint import FirstBatchFingerprint
from .handlers import EpochSeeder, PushAndLastLayer, StageHandler, epoch_seed
from .iteration import StagedIteration, autocast, plain_tensor, train_last_layer_epoch
from .persistence import EpochCheckpoint, FinalModelWriter, RNGState, atomic_save
from .setup import (
    compiled,
    configure_backends,
    configure_determinism,
    ensure_synthetic_dataset,
    place,
    training_datalist,
)
from .stages import STAGE_GROUPS, STAGES, Schedule, parameter_groups

__all__ = [
    "CLASS_BALANCE",
    "STAGES",
    "STAGE_GROUPS",
    "BroadcastFromRank0",
    "ClassBalance",
    "EpochCheckpoint",
    "EpochLog",
    "EpochSeeder",
    "FinalModelWriter",
    "FoldCalibration",
    "FirstBatchFingerprint",
    "HeldOutReport",
    "LossProgressBar",
    "PushAndLastLayer",
    "RNGState",
    "Schedule",
    "ShardedEpochMetric",
    "StageEvents",
    "StageHandler",
    "StageValidationHandler",
    "StagedIteration",
    "atomic_save",
    "attach_stage_events",
    "autocast",
    "calibrate_network",
    "balanced_accuracy_from_logits",
    "class_balance_weights",
    "class_balanced_sampler",
    "compiled",
    "configure_backends",
    "configure_determinism",
    "distributed_forward",
    "ensure_synthetic_dataset",
    "epoch_seed",
    "parameter_groups",
    "place",
    "plain_tensor",
    "train_last_layer_epoch",
    "training_datalist",
    "validation_logits",
    "write_epoch_tensorboard",
]
