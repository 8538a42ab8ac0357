"""A run interrupted mid-epoch and restarted ends bitwise identical to an uninterrupted run (seeded, CPU)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from test_engine_micro import micro_workflow

import scripts.engine.handlers as handlers_module
from tests.helpers import assert_identical


class Interrupted(Exception):
    """Stands in for a crash or a killed job."""


def _run(workdir, dataset_dir, run_id: str = "run", stop_at: tuple[int, int] | None = None) -> list[int]:
    """Run the micro workflow; raise Interrupted at iteration ``stop_at[1]`` of epoch ``stop_at[0]``.

    Returns:
        The epochs that started.
    """
    workflow = micro_workflow(workdir, dataset_dir, run_id=run_id)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    started: list[int] = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.state.epoch))
    if stop_at is not None:

        @trainer.on(Events.ITERATION_COMPLETED)
        def crash(engine):
            if (engine.state.epoch, engine.state.iteration % engine.state.epoch_length) == stop_at:
                raise Interrupted(f"stopped in epoch {engine.state.epoch}")

    workflow.run()
    workflow.finalize()
    return started


def _checkpoint(workdir) -> dict:
    return torch.load(workdir / "out" / "fold0" / "checkpoint_last.pt", weights_only=True)


@pytest.fixture(scope="module")
def straight(data_synthetic_root, tmp_path_factory):
    """The uninterrupted micro run."""
    workdir = tmp_path_factory.mktemp("resume") / "straight"
    assert _run(workdir, data_synthetic_root) == [1, 2, 3, 4, 5]
    return workdir


def _assert_same_end(straight, broken) -> None:
    """Weights, optimisers, scheduler, push record and RNG states equal, bit for bit."""
    final_straight = torch.load(straight / "out" / "fold0" / "model.pt", weights_only=True)
    final_broken = torch.load(broken / "out" / "fold0" / "model.pt", weights_only=True)
    assert_identical(final_straight, final_broken)
    assert_identical(_checkpoint(straight), _checkpoint(broken))
    push = [(d / "out" / "fold0" / "push.json").read_text() for d in (straight, broken)]
    assert push[0] == push[1]


def test_interrupted_run_resumes_to_identical_weights(straight, data_synthetic_root, tmp_path):
    broken = tmp_path / "broken"
    # crash in epoch 4 (after the first push and stage 3), in its second iteration
    with pytest.raises(RuntimeError) as failure:  # the bundle parser wraps the exception raised inside "run"
        _run(broken, data_synthetic_root, run_id="training", stop_at=(4, 2))
    assert isinstance(failure.value.__cause__, Interrupted)
    assert _checkpoint(broken)["trainer"]["iteration"] == 3 * _checkpoint(straight)["trainer"]["epoch_length"]
    assert not (broken / "out" / "fold0" / "model.pt").exists()
    assert _run(broken, data_synthetic_root, run_id="training") == [4, 5]  # the same command continues
    _assert_same_end(straight, broken)


def test_a_crash_in_warmup_starts_over_to_identical_weights(straight, data_synthetic_root, tmp_path):
    broken = tmp_path / "broken"
    with pytest.raises(RuntimeError) as failure:  # epoch 1 is the micro run's one warm-up epoch
        _run(broken, data_synthetic_root, run_id="training", stop_at=(1, 2))
    assert isinstance(failure.value.__cause__, Interrupted)
    assert not (broken / "out" / "fold0" / "checkpoint_last.pt").exists()  # no epoch ended: nothing to resume
    assert _run(broken, data_synthetic_root, run_id="training") == [1, 2, 3, 4, 5]
    _assert_same_end(straight, broken)


def test_a_crash_in_stage3_redoes_the_epoch_to_identical_weights(straight, data_synthetic_root, tmp_path,
                                                                   monkeypatch):
    broken = tmp_path / "broken"
    stage3_epoch = handlers_module.train_last_layer_epoch
    calls = []

    def crashing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second stage-3 epoch after the push of epoch 3
            raise Interrupted("stopped in stage 3")
        return stage3_epoch(*args, **kwargs)

    monkeypatch.setattr(handlers_module, "train_last_layer_epoch", crashing)
    with pytest.raises(RuntimeError) as failure:
        _run(broken, data_synthetic_root, run_id="training")
    assert isinstance(failure.value.__cause__, Interrupted)
    # epoch 3's checkpoint comes after its push and stage 3 (StageEvents): the last one is epoch 2's
    assert _checkpoint(broken)["trainer"]["iteration"] == 2 * _checkpoint(straight)["trainer"]["epoch_length"]
    monkeypatch.setattr(handlers_module, "train_last_layer_epoch", stage3_epoch)
    assert _run(broken, data_synthetic_root, run_id="training") == [3, 4, 5]
    _assert_same_end(straight, broken)
