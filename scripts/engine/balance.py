"""Class-imbalance handling named by the config's ``class_balance``: a class-weighted loss or a balanced sampler.

The weights are set on the losses by the :class:`ClassBalance` handler when training starts, not in the losses'
config entries, so that ``loss``, ``warmup_loss`` and ``stage3_loss`` can be built without a dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import look_up_option
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler

from scripts.losses import inverse_frequency_weights

__all__ = ["CLASS_BALANCE", "ClassBalance", "class_balance_weights", "class_balanced_sampler"]

CLASS_BALANCE = ("none", "weighted_loss", "sampler")
"""``none``: the paper's plain loss and a shuffled loader; ``weighted_loss``: L_cls weighted by inverse class
frequency in the warm-up, stage 1 and stage 3; ``sampler``: training batches drawn with replacement so that
every class is drawn equally often (warm-up, stage 1 and stage 3 share the training loader)."""


def _labels(items: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    return torch.as_tensor([int(item["label"]) for item in items], dtype=torch.long)


def class_balance_weights(items: Sequence[Mapping[str, Any]], num_classes: int) -> list[float]:
    """Per-class loss weights ``1 / n_class`` `(C,)` over the training ``items`` (each with an integer ``label``)."""
    return inverse_frequency_weights(_labels(items), num_classes).tolist()


def class_balanced_sampler(
    items: Sequence[Mapping[str, Any]], num_classes: int, class_balance: str = "none"
) -> WeightedRandomSampler | None:
    """A sampler that draws each class equally often under ``sampler``, else None (the loader shuffles).

    Each item is drawn with probability proportional to ``1 / n_class`` of its class, with replacement,
    ``len(items)`` draws per epoch. It draws from torch's global generator, which
    :class:`~scripts.engine.EpochSeeder` reseeds from (seed, epoch): the draws are as reproducible and
    resume-safe as the default shuffle.
    """
    if look_up_option(class_balance, CLASS_BALANCE) != "sampler":
        return None
    labels = _labels(items)
    weights = inverse_frequency_weights(labels, num_classes).double()[labels]
    return WeightedRandomSampler(weights, num_samples=len(items), replacement=True)


class ClassBalance:
    """Applies ``class_balance`` to a run: sets the losses' class weights, checks the training loader's sampler.

    At STARTED, under ``weighted_loss``, every loss in ``losses`` (the warm-up's, stage 1's and stage 3's: each
    has a ``class_weights`` attribute) gets :func:`class_balance_weights` of the training items; under
    ``sampler`` the training loader must draw with :func:`class_balanced_sampler` (a multi-GPU run replaces
    it with a ``DistributedSampler``, which is refused here rather than silently ignored).

    Args:
        class_balance: one of :data:`CLASS_BALANCE`.
        items: the training items (each with an integer ``label``).
        num_classes: C.
        losses: the losses whose ``class_weights`` are set.
        loader: the training loader.
    """

    def __init__(
        self,
        class_balance: str,
        items: Sequence[Mapping[str, Any]],
        num_classes: int,
        losses: Sequence[nn.Module],
        loader: DataLoader,
    ) -> None:
        self.class_balance = look_up_option(class_balance, CLASS_BALANCE)
        self.items = items
        self.num_classes = num_classes
        self.losses = list(losses)
        self.loader = loader

    def attach(self, engine: Engine) -> None:
        """Register on STARTED."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Weight the losses (``weighted_loss``) or check the sampler (``sampler``)."""
        if self.class_balance == "sampler" and not isinstance(self.loader.sampler, WeightedRandomSampler):
            raise ValueError(
                f"class_balance='sampler' needs train#sampler from scripts.engine.class_balanced_sampler, but the "
                f"training loader draws with {type(self.loader.sampler).__name__} (multi-GPU runs replace it): "
                "use class_balance='weighted_loss' there."
            )
        if self.class_balance == "weighted_loss":
            weights = class_balance_weights(self.items, self.num_classes)
            for loss in self.losses:
                loss.class_weights = weights
