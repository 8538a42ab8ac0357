"""The training schedule as data (SPEC §4): which epochs belong to which stage, which groups each stage trains.

One ignite run per fold has ``warmup_epochs + stage1_epochs`` epochs: backbone warm-up, then stage 1.
Push (stage 2) and stage 3 run inside the epochs listed by :meth:`Schedule.push_epochs`, after their
stage-1 iterations and before the checkpoint (see :class:`~scripts.engine.events.StageEvents` and
:class:`~scripts.engine.handlers.PushHandler`, :class:`~scripts.engine.handlers.LastLayerHandler`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from monai.utils import look_up_option
from torch import nn

from scripts.networks import PARAMETER_GROUPS, GroupedNetwork

__all__ = ["STAGES", "STAGE_GROUPS", "Schedule", "parameter_groups"]

STAGE_GROUPS: dict[str, tuple[str, ...]] = {
    "warmup": ("encoder", "decoder", "fusion", "addon", "classifier"),
    "stage1": ("encoder", "fusion", "addon", "mapping", "prototypes"),
    "stage3": ("classifier",),
}
"""Trainable parameter groups per stage. ``warmup`` names groups of the backbone CNN (its ``classifier``
is the CNN head's Linear); ``stage1`` and ``stage3`` name groups of UM-ProtoShare. Every other group is
frozen and kept in eval mode. Stage 1 leaves out the decoder (frozen, Appendix D.5) and the classifier
(trained in stage 3 only)."""

STAGES = tuple(STAGE_GROUPS)


class Schedule:
    """Epoch → stage, push epochs and trainable groups, from the config's numbers.

    Ignite epochs are 1-based: 1..W are warm-up, W+1..W+S stage 1. A push (followed by
    ``stage3_epochs`` classifier epochs) ends every ``push_every``-th stage-1 epoch and the last one.

    Args:
        warmup_epochs: W, backbone warm-up epochs (0 skips the warm-up).
        stage1_epochs: S ≥ 0; 0 trains the warm-up CNN only (the CNN baseline, whose fold model is
            that CNN).
        push_every: push after every ``push_every``-th stage-1 epoch.
        stage3_epochs: classifier epochs after each push.
        freeze_gates: also freeze the fusion group (gates) in stage 1.
        map_anneal_epochs: T; the first T stage-1 epochs widen the prototype maps, from
            ``map_start_coverage`` of the voxels down to the network's own start, linearly
            (:meth:`map_shift`); 0 trains the maps as they start (the paper).
        map_start_coverage: share of voxels each map covers in the first stage-1 epoch.
        map_init_coverage: the network's initial coverage (``map_init_coverage`` of
            :class:`~scripts.networks.UMProtoShare`); None (PyTorch's BN init) counts as 0.5.
    """

    def __init__(
        self,
        warmup_epochs: int = 50,
        stage1_epochs: int = 100,
        push_every: int = 10,
        stage3_epochs: int = 10,
        freeze_gates: bool = False,
        map_anneal_epochs: int = 0,
        map_start_coverage: float = 0.5,
        map_init_coverage: float | None = None,
    ) -> None:
        negative = min(warmup_epochs, stage1_epochs, stage3_epochs) < 0
        if negative or push_every < 1 or warmup_epochs + stage1_epochs < 1:
            raise ValueError(
                "schedule needs warmup_epochs >= 0, stage1_epochs >= 0 (not both 0), push_every >= 1 and "
                f"stage3_epochs >= 0; got {warmup_epochs}, {stage1_epochs}, {push_every}, {stage3_epochs}."
            )
        self.warmup_epochs = int(warmup_epochs)
        self.stage1_epochs = int(stage1_epochs)
        self.push_every = int(push_every)
        self.stage3_epochs = int(stage3_epochs)
        self.freeze_gates = bool(freeze_gates)
        for name, coverage in (("map_start_coverage", map_start_coverage), ("map_init_coverage", map_init_coverage)):
            if coverage is not None and not 0.0 < coverage < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {coverage}.")
        if not 0 <= map_anneal_epochs < max(stage1_epochs, 1):
            raise ValueError(
                f"map_anneal_epochs must lie in 0..stage1_epochs - 1 (the last stage-1 epoch trains the maps "
                f"unshifted), got {map_anneal_epochs} with stage1_epochs={stage1_epochs}."
            )
        self.map_anneal_epochs = int(map_anneal_epochs)
        start, init = (torch.tensor(0.5 if c is None else float(c)) for c in (map_start_coverage, map_init_coverage))
        self.map_full_shift = float(torch.special.ndtri(start) - torch.special.ndtri(init))

    @property
    def max_epochs(self) -> int:
        """Ignite epochs of one fold: W + S."""
        return self.warmup_epochs + self.stage1_epochs

    def stage_of(self, epoch: int) -> str:
        """``"warmup"`` or ``"stage1"`` for a 1-based ignite epoch."""
        if not 1 <= epoch <= self.max_epochs:
            raise ValueError(f"epoch {epoch} is outside the schedule's 1..{self.max_epochs}.")
        return "warmup" if epoch <= self.warmup_epochs else "stage1"

    def is_push_epoch(self, epoch: int) -> bool:
        """Whether a push and stage 3 follow the stage-1 iterations of ``epoch``."""
        if self.stage_of(epoch) != "stage1":
            return False
        done = epoch - self.warmup_epochs
        return done % self.push_every == 0 or done == self.stage1_epochs

    def push_epochs(self) -> list[int]:
        """Every ignite epoch that ends with a push, ascending."""
        return [e for e in range(self.warmup_epochs + 1, self.max_epochs + 1) if self.is_push_epoch(e)]

    def map_shift(self, epoch: int) -> float:
        """Shift of the maps' pre-activation z in ``epoch``: Φ⁻¹(start coverage) − Φ⁻¹(initial coverage)
        in the first stage-1 epoch, falling linearly to 0 after ``map_anneal_epochs`` stage-1 epochs.

        z is batch-normalised, about N(β, 1) over voxels with β = Φ⁻¹(initial coverage) at the start, so
        the shifted maps start above the soft mask's centre (z > 0) on about the start coverage's share of
        voxels: a broad map gets gradient everywhere and narrows onto what separates the classes.
        """
        if self.stage_of(epoch) != "stage1" or self.map_anneal_epochs == 0:
            return 0.0
        done = epoch - self.warmup_epochs - 1
        return self.map_full_shift * max(0.0, 1.0 - done / self.map_anneal_epochs)

    def trainable_groups(self, stage: str) -> tuple[str, ...]:
        """The groups ``stage`` trains (``"fusion"`` left out of stage 1 with ``freeze_gates``)."""
        groups = STAGE_GROUPS[look_up_option(stage, STAGES)]
        if stage == "stage1" and self.freeze_gates:
            groups = tuple(g for g in groups if g != "fusion")
        return groups


def parameter_groups(
    network: GroupedNetwork | nn.Module,
    groups: Iterable[str],
    weight_decay: float,
    no_decay: Sequence[str] = ("prototypes",),
) -> list[dict]:
    """Optimiser parameter groups for ``groups`` of a network: weight decay except on ``no_decay`` groups.

    Returns:
        ``[{"params": decayed, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]``,
        leaving out an empty entry.
    """
    groups = list(groups)
    no_decay = [look_up_option(g, tuple(PARAMETER_GROUPS)) for g in no_decay]
    decayed = [p for g in groups if g not in no_decay for p in network.group_parameters(g)]
    undecayed = [p for g in groups if g in no_decay for p in network.group_parameters(g)]
    entries = [{"params": decayed, "weight_decay": float(weight_decay)}, {"params": undecayed, "weight_decay": 0.0}]
    return [entry for entry in entries if entry["params"]]
