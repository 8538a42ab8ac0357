"""The end-of-epoch order (push → stage 3 → validation → checkpoint) does not depend on the attach order."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

import scripts.engine.handlers as handlers_module
import scripts.engine.persistence as persistence_module
from scripts.engine import (
    EpochCheckpoint,
    EpochLog,
    LastLayerHandler,
    PushHandler,
    Schedule,
    StageHandler,
    StageValidationHandler,
)
from scripts.push import PushResult

SCHEDULE = Schedule(warmup_epochs=1, stage1_epochs=2, push_every=1, stage3_epochs=2)
EXPECTED = [
    "epoch 1", "handover", "checkpoint",
    "epoch 2", "lr", "push", "stage3", "stage3", "validate", "checkpoint",
    "epoch 3", "lr", "push", "stage3", "stage3", "validate", "checkpoint",
]  # fmt: skip


class _Validator:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def run(self, epoch: int) -> None:
        self.calls.append("validate")


def _handlers(calls: list[str], tmp_path) -> list:
    """The schedule's handlers in the order of ``train#handlers``, on stand-ins that record their calls."""
    network = SimpleNamespace(set_trainable=lambda groups: None, load_backbone=lambda s: calls.append("handover") or [])
    cnn = SimpleNamespace(set_trainable=lambda groups: None, state_dict=dict)
    lr_scheduler = SimpleNamespace(step=lambda: calls.append("lr"))
    validation = StageValidationHandler(interval=1, schedule=SCHEDULE)
    validation.validator = _Validator(calls)  # any object with run(epoch), as in test_engine_handlers
    optimizer = SimpleNamespace(param_groups=[{"lr": 0.0}])
    push = PushHandler(network, SCHEDULE, [], ["LGG", "HGG"], tmp_path, write_files=False)
    stage3 = LastLayerHandler(network, SCHEDULE, [], optimizer, None)
    checkpoint = EpochCheckpoint(tmp_path / "checkpoint.pt", {"model": torch.nn.Linear(1, 1)}, resume=False)
    return [StageHandler(network, cnn, SCHEDULE, lr_scheduler), EpochLog(), push, stage3, validation, checkpoint]


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    calls: list[str] = []

    def push(*args, **kwargs) -> PushResult:
        calls.append("push")
        return PushResult(class_names=["LGG", "HGG"], records=[{"similarity": 1.0}])

    def stage3(*args, **kwargs) -> dict[str, float]:
        calls.append("stage3")
        return {"loss": 0.0, "seconds": 0.0}

    monkeypatch.setattr(handlers_module, "push_prototypes", push)
    monkeypatch.setattr(handlers_module, "train_last_layer_epoch", stage3)
    monkeypatch.setattr(persistence_module, "atomic_save", lambda obj, path: calls.append("checkpoint"))
    return calls


@pytest.mark.parametrize("order", [(0, 1, 2, 3, 4, 5), (5, 4, 3, 2, 1, 0), (3, 5, 0, 4, 2, 1)])
def test_push_then_stage3_then_validation_then_checkpoint_in_any_attach_order(calls, tmp_path, order):
    engine = Engine(lambda e, b: {"loss": 0.0, "terms": {}, "lr": 0.0, "batch_size": 1})
    engine.prepare_batch = None
    engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "device", torch.device("cpu")))
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: calls.append(f"epoch {e.state.epoch}"))
    handlers = _handlers(calls, tmp_path)
    for index in order:
        handlers[index].attach(engine)
    engine.run([0], max_epochs=SCHEDULE.max_epochs)
    assert calls == EXPECTED


def test_stage_events_are_registered_once(tmp_path):
    engine = Engine(lambda e, b: None)
    fired = []
    for _ in range(2):
        EpochCheckpoint(tmp_path / "c.pt", {"model": torch.nn.Linear(1, 1)}, save=False, resume=False).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: fired.append(e.state.epoch))
    engine.run([0], max_epochs=2)
    assert fired == [1, 2]
