"""The order of the work that ends an epoch, as ignite events fired in sequence by one driver.

At every EPOCH_COMPLETED the driver fires :class:`StageEvents` in their declared order, so push runs
before stage 3, both before validation, and the checkpoint after all of them, whatever order the
handlers were attached in (``train#handlers`` in ``configs/train.json``).
"""

from __future__ import annotations

from ignite.engine import Engine, EventEnum, Events

__all__ = ["StageEvents", "attach_stage_events"]


class StageEvents(EventEnum):
    """Fired in this order after each epoch's iterations; filters see ``engine.state.epoch``."""

    EPOCH_TRAINED = "epoch_trained"
    """The epoch's warm-up or stage-1 iterations are done: epoch means, LR step, backbone hand-over."""
    PUSH = "push"
    """Push (stage 2); the handler filters the schedule's push epochs."""
    LAST_LAYER = "last_layer"
    """Stage 3, right after the push on the same epochs (the handler filters them too)."""
    STAGES_COMPLETED = "stages_completed"
    """The epoch's training is complete, push and stage 3 included: validation."""
    CHECKPOINT = "checkpoint"
    """Everything above is in the state: the checkpoint is written."""


def _fire_stage_events(engine: Engine) -> None:
    for event in StageEvents:
        engine.fire_event(event)


def attach_stage_events(engine: Engine) -> None:
    """Register :class:`StageEvents` and their driver on ``engine`` (once; every handler using them calls it).

    The driver runs at the EPOCH_COMPLETED position of the first handler that attaches it: stats
    handlers attached after it see the push and stage-3 metrics of the epoch.
    """
    if engine.has_registered_events(StageEvents.CHECKPOINT):
        return
    engine.register_events(*StageEvents, event_to_attr={event: "epoch" for event in StageEvents})
    engine.add_event_handler(Events.EPOCH_COMPLETED, _fire_stage_events)
