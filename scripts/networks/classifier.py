"""The last layer h of a prototype network, with a mask of the prototypes it still reads (pruning).

A pruned prototype keeps its column (and its name ``s<s>_k<k>``) so that push records, reports and
galleries stay aligned; its entry of ``active`` is 0, so it adds nothing to any logit, any ζ or any class
map, and stage 3 cannot give it weight back (its gradient is exactly zero). The mask is a buffer: it
travels in ``model.pt``, so inference, reports and MONAI Label serve a pruned model with no extra setting.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PrototypeClassifier"]


class PrototypeClassifier(nn.Linear):
    """logits = S · (w_cls ⊙ a)ᵀ: a bias-free linear layer (C, K_total) over the active prototypes a ∈ {0, 1}^K.

    Args:
        num_prototypes: K_total (input features).
        num_classes: C (outputs).
    """

    __jit_unused_properties__ = ["effective_weight"]
    optional_state = ("active",)
    """State-dict entries a checkpoint may lack (:func:`scripts.weights.optional_state_keys`): written before
    pruning existed, it is loaded with every prototype active."""

    def __init__(self, num_prototypes: int, num_classes: int) -> None:
        super().__init__(num_prototypes, num_classes, bias=False)
        self.register_buffer("active", torch.ones(num_prototypes))

    @property
    def effective_weight(self) -> Tensor:
        """w_cls ⊙ a, (C, K_total): the weights the logits use (pruned columns exactly 0)."""
        return self.weight * self.active

    def forward(self, similarities: Tensor) -> Tensor:
        """Logits (B, C) from S(x, P) (B, K_total)."""
        return F.linear(similarities, self.weight * self.active)

    def pruned(self) -> list[int]:
        """Columns whose prototype is pruned, ascending."""
        return [int(c) for c in (self.active == 0).nonzero().flatten().tolist()]

    def prune(self, columns: Sequence[int]) -> None:
        """Deactivate ``columns`` (0-based) and zero their weights; at least one prototype must stay."""
        columns = sorted({int(c) for c in columns})
        outside = [c for c in columns if not 0 <= c < self.in_features]
        if outside:
            raise ValueError(f"columns {outside} do not exist: the classifier has {self.in_features} prototype columns.")
        with torch.no_grad():
            active = self.active.clone()
            active[columns] = 0
            if not active.any():
                raise ValueError(f"pruning columns {columns} would leave no prototype.")
            self.active.copy_(active)
            self.weight[:, columns] = 0

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        """A state dict written before pruning existed has no ``active``: every prototype is active."""
        for name in self.optional_state:
            state_dict.setdefault(prefix + name, torch.ones_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args)
