"""Wrappers around a network (the stage-1 forward as a module, DDP) and the one way to see through them."""

from __future__ import annotations

from torch import Tensor, nn

from .model import Explanation, UMProtoShare

__all__ = ["ExplainForward", "unwrap"]


class ExplainForward(nn.Module):
    """``forward`` = ``network.explain``: the stage-1 forward as a module (so DDP can wrap it)."""

    def __init__(self, network: UMProtoShare) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: Tensor) -> Explanation:
        """:class:`~scripts.networks.Explanation` of images (B, C_in, H, W, D)."""
        return self.network.explain(images)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside (Distributed)DataParallel and :class:`ExplainForward` wrappers."""
    while isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel, ExplainForward)):
        module = module.module if not isinstance(module, ExplainForward) else module.network
    return module
