"""Handlers on bare ignite engines: checkpoint/resume, reseeding, epoch logging, validation timing, BAC."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.transforms import RandGaussianNoised

from scripts.engine import (
    EpochCheckpoint,
    EpochLog,
    EpochSeeder,
    HeldOutReport,
    RNGState,
    Schedule,
    StageValidationHandler,
    balanced_accuracy_from_logits,
    epoch_seed,
    write_epoch_tensorboard,
)


def _counting_engine(model: torch.nn.Module) -> Engine:
    """Each iteration adds 1 to the weight, so the weight counts the iterations run."""

    def step(engine, batch):
        with torch.no_grad():
            model.weight.add_(1.0)
        return {"loss": 0.0, "terms": {}, "lr": 0.0, "batch_size": 1}

    return Engine(step)


def test_checkpoint_resume_continues_after_the_saved_epoch(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    first = _counting_engine(model)
    EpochCheckpoint(path, {"model": model}).attach(first)
    first.run([0, 1], max_epochs=3)  # stopped after epoch 3 of 5
    assert path.is_file() and model.weight.item() == 6.0

    resumed_model = torch.nn.Linear(1, 1, bias=False)
    second = _counting_engine(resumed_model)
    EpochCheckpoint(path, {"model": resumed_model}).attach(second)
    epochs = []
    second.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs.append(e.state.epoch))
    second.run([0, 1], max_epochs=5)
    assert epochs == [4, 5] and resumed_model.weight.item() == 10.0  # 6 restored + 2 epochs x 2 iterations
    assert second.state.max_epochs == 5
    saved = torch.load(path, weights_only=True)
    assert saved["trainer"]["iteration"] == 10 and torch.equal(saved["model"]["weight"], resumed_model.weight.detach())


def test_checkpoint_beyond_max_epochs_is_an_error(tmp_path):
    path = tmp_path / "checkpoint_last.pt"
    model = torch.nn.Linear(1, 1)
    engine = _counting_engine(model)
    EpochCheckpoint(path, {"model": model}).attach(engine)
    engine.run([0], max_epochs=4)
    shorter = _counting_engine(model)
    EpochCheckpoint(path, {"model": model}).attach(shorter)
    with pytest.raises(ValueError, match="beyond this run's max_epochs 2"):
        shorter.run([0], max_epochs=2)


def test_checkpoint_objects_may_not_name_the_trainer(tmp_path):
    with pytest.raises(ValueError, match="trainer"):
        EpochCheckpoint(tmp_path / "c.pt", {"trainer": torch.nn.Linear(1, 1)})


def test_rng_state_roundtrip_through_a_weights_only_file(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = RNGState()
    torch.save(state.state_dict(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(10), np.random.seed(20), torch.manual_seed(30)
    state.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_epoch_seeder_makes_each_epoch_depend_on_seed_and_epoch_only():
    dataset = Dataset([{"x": torch.zeros(1, 4)}], RandGaussianNoised("x", prob=1.0))
    draws: dict[tuple[int, int, int], tuple] = {}

    def run(seed: int, start_state: int) -> None:
        torch.manual_seed(start_state), np.random.seed(start_state), dataset.transform.set_random_state(start_state)
        engine = Engine(lambda e, b: None)
        EpochSeeder(seed, [dataset]).attach(engine)

        @engine.on(Events.EPOCH_STARTED)
        def draw(e):
            draws[(seed, e.state.epoch, start_state)] = (
                torch.rand(1).item(), np.random.rand(), random.random(), dataset[0]["x"].sum().item()
            )

        engine.run([0], max_epochs=2)

    run(seed=7, start_state=0)
    run(seed=7, start_state=99)
    run(seed=8, start_state=0)
    assert draws[(7, 1, 0)] == draws[(7, 1, 99)] and draws[(7, 2, 0)] == draws[(7, 2, 99)]
    assert draws[(7, 1, 0)] != draws[(7, 2, 0)]
    assert all(a != b for a, b in zip(draws[(7, 1, 0)], draws[(8, 1, 0)]))
    assert epoch_seed(7, 1) == epoch_seed(7, 1) != epoch_seed(7, 1, rank=1)


def test_epoch_log_writes_batch_weighted_means_per_stage():
    outputs = iter(
        [
            {"loss": 1.0, "terms": {"cls": 2.0}, "lr": 0.1, "batch_size": 3},
            {"loss": 5.0, "terms": {"cls": 4.0}, "lr": 0.2, "batch_size": 1},
        ]
    )
    engine = Engine(lambda e, b: next(outputs))
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: setattr(e.state, "stage", "stage1"))
    EpochLog().attach(engine)
    engine.state.metrics["stale"] = 1.0
    engine.run([0, 1], max_epochs=1)
    metrics = engine.state.metrics
    assert metrics["stage1/loss"] == pytest.approx((3 * 1.0 + 1 * 5.0) / 4)
    assert metrics["stage1/cls"] == pytest.approx((3 * 2.0 + 1 * 4.0) / 4)
    assert metrics["lr"] == 0.2 and "stale" not in metrics
    assert metrics["time/data"] >= 0 and metrics["time/stage1"] > 0


class _Writer:
    """Records TensorBoard calls (the writer is not under test)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def add_scalar(self, tag, value, step):
        self.calls.append(("scalar", tag, value, step))

    def add_text(self, tag, text, step):
        self.calls.append(("text", tag, text, step))

    def flush(self):
        pass


def test_tensorboard_writer_logs_numbers_and_the_stage():
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.stage = 3, "stage1"
    engine.state.metrics = {"stage1/clst": -0.5, "lr": 1e-3, "note": "text is skipped"}
    writer = _Writer()
    write_epoch_tensorboard(engine, writer)
    expected = [("scalar", "stage1/clst", -0.5, 3), ("scalar", "lr", 1e-3, 3), ("text", "stage", "stage1", 3)]
    assert writer.calls == expected


class _Validator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_validation_runs_every_interval_after_the_warmup():
    schedule = Schedule(warmup_epochs=3, stage1_epochs=6, push_every=2, stage3_epochs=1)
    handler = StageValidationHandler(interval=2, schedule=schedule)
    handler.validator = _Validator()  # any object with run(epoch); MONAI's type check is bypassed on purpose
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=schedule.max_epochs)
    assert handler.validator.epochs == [5, 7, 9] == schedule.push_epochs()
    with pytest.raises(ValueError, match="at least 1"):
        StageValidationHandler(interval=0, schedule=schedule)


def test_bac_from_logits_hand_computed():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [1.0, 2.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 0, 1, 1])
    # class 0 recall 2/3 (third row right, second wrong), class 1 recall 2/2
    assert balanced_accuracy_from_logits(logits, labels) == pytest.approx((2 / 3 + 1.0) / 2)


def test_held_out_report_writes_the_metric(tmp_path):
    engine = Engine(lambda e, b: None)
    engine.state.metrics = {"test_bac": 0.75}
    engine.data_loader = [0, 1, 2]
    HeldOutReport("test_bac", tmp_path / "heldout_bac.json", fold=2)(engine)
    assert json.loads((tmp_path / "heldout_bac.json").read_text()) == {"fold": 2, "bac": 0.75, "cases": None}
    with pytest.raises(KeyError, match="val_bac"):
        HeldOutReport("val_bac", None, fold=2)(engine)
