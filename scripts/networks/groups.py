"""Named parameter groups, freezing by group, and frozen parts kept in eval mode."""

import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from monai.utils import look_up_option
from torch import Tensor, nn

from .precision import BF16_RECHECK_MARGIN, as_float32, autocast, rerun_rows

__all__ = ["PARAMETER_GROUPS", "GroupedNetwork", "group_of"]

PARAMETER_GROUPS = {
    "encoder": re.compile(r"backbone\.encoder(\.|$)"),
    "decoder": re.compile(r"backbone\.decoder(\.|$)"),
    "fusion": re.compile(r"backbone\.fusion(\.|$)"),
    "addon": re.compile(r"heads\.[^.]+\.addon(\.|$)"),
    "mapping": re.compile(r"heads\.[^.]+\.mapping(\.|$)"),
    "prototypes": re.compile(r"heads\.[^.]+\.prototypes$"),
    "classifier": re.compile(r"classifier(\.|$)"),
}
"""Group name → pattern matched against parameter, buffer and module names of the networks."""


def group_of(name: str) -> str | None:
    """The parameter group of a parameter, buffer or module name, or None (e.g. a container)."""
    for group, pattern in PARAMETER_GROUPS.items():
        if pattern.match(name):
            return group
    return None


class GroupedNetwork(nn.Module):
    """Base of the networks: parameters by named group, ``set_trainable``, frozen groups kept in eval mode,
    and the eval-mode ``precision`` (``fp32`` or ``bf16``, see :mod:`scripts.networks.precision`).

    ignite/MONAI trainers call ``network.train()`` every iteration; the override puts the modules of
    frozen groups back in eval mode so that their batch-norm statistics do not drift.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen_groups: tuple[str, ...] = ()
        self.precision = "fp32"
        self.bf16_recheck_margin = BF16_RECHECK_MARGIN
        self.rechecked: list[int] = []
        """Batch rows the last bf16 call ran again in fp32 (:meth:`at_precision`)."""

    def uses_autocast(self) -> bool:
        """Whether eval-mode calls run under bf16 autocast (never in training, nor in TorchScript)."""
        return not torch.jit.is_scripting() and self.precision == "bf16" and not self.training

    @torch.jit.unused
    def at_precision(self, fn: Callable[..., Any], x: Tensor) -> Any:
        """``fn(x)`` under the network's autocast, every floating-point tensor of the result made float32.

        The cases whose two largest logits (the result, or its ``logits``) lie closer than
        ``bf16_recheck_margin`` run again in fp32 and their outputs replace the bf16 ones, so that bf16 never
        decides a close case: on the quick-start models bf16 moved such a margin by up to 0.33. Only without
        gradients (predictions, maps): a gradient-based explanation (Grad-CAM's hooks) sees one forward pass.
        """
        with autocast(x.device, True):
            result = as_float32(fn(x))
        self.rechecked = []
        if self.bf16_recheck_margin <= 0 or torch.is_grad_enabled():
            return result
        logits = result if isinstance(result, Tensor) else result.logits
        top = logits.topk(2, dim=1).values
        rows = ((top[:, 0] - top[:, 1]) < self.bf16_recheck_margin).nonzero().flatten()
        if len(rows) == 0:
            return result
        self.rechecked = rows.tolist()
        return rerun_rows(result, fn(x[rows]), rows, len(x))

    @torch.jit.unused
    def logits_at_precision(self, x: Tensor) -> Tensor:
        """The subclass's ``logits(x)`` under the network's autocast, as float32 (kept out of TorchScript)."""
        return self.at_precision(self.logits, x)

    def group_parameters(self, group: str) -> list[nn.Parameter]:
        """Parameters of one group of :data:`PARAMETER_GROUPS` (empty when the network has none of it)."""
        look_up_option(group, tuple(PARAMETER_GROUPS))
        return [p for name, p in self.named_parameters() if group_of(name) == group]

    def set_trainable(self, groups: Iterable[str]) -> None:
        """Train exactly ``groups``: their parameters require grad; the other groups are frozen and kept in eval mode."""
        trainable = {look_up_option(group, tuple(PARAMETER_GROUPS)) for group in groups}
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(group_of(name) in trainable)
        self.frozen_groups = tuple(group for group in PARAMETER_GROUPS if group not in trainable)
        self.train(self.training)

    def train(self, mode: bool = True) -> "GroupedNetwork":
        """``nn.Module.train``, then eval mode again for the modules of frozen groups."""
        super().train(mode)
        if mode and self.frozen_groups:
            for name, module in self.named_modules():
                if group_of(name) in self.frozen_groups:
                    module.train(False)
        return self
