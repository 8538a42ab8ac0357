"""A run interrupted mid-epoch and restarted ends bitwise identical to an uninterrupted run (seeded, CPU)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from test_engine_micro import micro_workflow

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


def test_interrupted_run_resumes_to_identical_weights(data_synthetic_root, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert _run(straight, data_synthetic_root) == [1, 2, 3, 4, 5]
    # crash in epoch 4 (after the first push and stage 3), in its second iteration
    with pytest.raises(RuntimeError) as failure:  # the bundle parser wraps the exception raised inside "run"
        _run(broken, data_synthetic_root, run_id="training", stop_at=(4, 2))
    assert isinstance(failure.value.__cause__, Interrupted)
    assert _checkpoint(broken)["trainer"]["iteration"] == 3 * _checkpoint(straight)["trainer"]["epoch_length"]
    assert not (broken / "out" / "fold0" / "model.pt").exists()
    assert _run(broken, data_synthetic_root, run_id="training") == [4, 5]  # the same command continues
    final_straight = torch.load(straight / "out" / "fold0" / "model.pt", weights_only=True)
    final_broken = torch.load(broken / "out" / "fold0" / "model.pt", weights_only=True)
    assert_identical(final_straight, final_broken)
    # optimisers, scheduler, push record and RNG states too
    assert_identical(_checkpoint(straight), _checkpoint(broken))
    push = [(d / "out" / "fold0" / "push.json").read_text() for d in (straight, broken)]
    assert push[0] == push[1]
