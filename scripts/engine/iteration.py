"""One training iteration per stage: backbone warm-up and stage 1 (ignite), and a stage-3 epoch (plain loop).

The forward passes that carry gradients go through modules given as arguments (``warmup_forward``,
``stage1_forward``, ``classifier``), so that a multi-GPU configuration can pass DistributedDataParallel
wrappers of them; the plain networks are still used for parameter groups and loss inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines.utils import default_prepare_batch
from monai.utils import look_up_option
from torch import Tensor, nn
from torch.optim import Optimizer

from scripts.losses import LastLayerLoss, Stage1Loss
from scripts.networks import BackboneCNN, ExplainForward, UMProtoShare
from scripts.networks.precision import autocast
from scripts.prototypes import ScaleTerms

from .diagnostics import stage1_diagnostics
from .stages import Schedule

__all__ = ["MAP_GRADIENTS", "StagedIteration", "autocast", "plain_tensor", "train_last_layer_epoch"]

MAP_GRADIENTS = ("all", "own_class")
"""Which cases' similarities train a prototype's map in stage 1 (``StagedIteration(map_gradient=...)``)."""


def plain_tensor(images: Tensor, channels_last_3d: bool = False) -> Tensor:
    """Images (B, C, H, W, D) as a plain tensor (no MetaTensor bookkeeping), optionally channels-last."""
    images = images.as_tensor() if isinstance(images, MetaTensor) else images
    return images.contiguous(memory_format=torch.channels_last_3d) if channels_last_3d else images


class StagedIteration:
    """ignite ``iteration_update``: one optimiser step of the stage the current epoch belongs to.

    Warm-up: the backbone CNN, ``warmup_loss`` (L_cls). Stage 1: UM-ProtoShare's explanation and
    :class:`~scripts.losses.Stage1Loss`. Each stage's groups are set trainable by
    :class:`~scripts.engine.handlers.StageHandler`; ``train()`` here keeps frozen groups in eval mode.

    Args:
        network: UM-ProtoShare (plain, not wrapped).
        warmup_network: the backbone CNN (plain).
        schedule: epoch → stage.
        warmup_optimizer: optimiser over the CNN's warm-up groups.
        stage1_optimizer: optimiser over UM-ProtoShare's stage-1 groups.
        warmup_loss: ``(logits, labels) → loss``.
        stage1_loss: the stage-1 objective.
        warmup_forward: module whose forward gives the CNN's logits; default ``warmup_network``.
        stage1_forward: module whose forward gives the explanation; default ``ExplainForward(network)``.
        amp: bf16 autocast (CUDA or CPU).
        channels_last_3d: feed channels-last images.
        map_gradient: ``"all"`` (the paper): every case's S_k trains prototype k's map; ``"own_class"``: only the
            cases of the class k's weights favour (:meth:`~scripts.networks.UMProtoShare.own_class_map_gradient`).

    Returns (per call) a dict: ``loss`` (float), ``terms`` (unweighted terms, floats), ``diagnostics``
    (stage 1: the collapse read-outs of :func:`~scripts.engine.diagnostics.stage1_diagnostics`), ``stage``,
    ``lr`` (the stage optimiser's first group) and ``batch_size``.
    """

    def __init__(
        self,
        network: UMProtoShare,
        warmup_network: BackboneCNN,
        schedule: Schedule,
        warmup_optimizer: Optimizer,
        stage1_optimizer: Optimizer,
        warmup_loss: Callable[[Tensor, Tensor], Tensor],
        stage1_loss: Stage1Loss,
        warmup_forward: nn.Module | None = None,
        stage1_forward: nn.Module | None = None,
        amp: bool = False,
        channels_last_3d: bool = False,
        map_gradient: str = "all",
    ) -> None:
        self.network = network
        self.warmup_network = warmup_network
        self.schedule = schedule
        self.optimizers = {"warmup": warmup_optimizer, "stage1": stage1_optimizer}
        self.warmup_loss = warmup_loss
        self.stage1_loss = stage1_loss
        self.warmup_forward = warmup_network if warmup_forward is None else warmup_forward
        self.stage1_forward = ExplainForward(network) if stage1_forward is None else stage1_forward
        self.amp = amp
        self.channels_last_3d = channels_last_3d
        self.map_gradient = look_up_option(map_gradient, MAP_GRADIENTS)

    def __call__(self, engine: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        """One step on ``batch`` for the stage of ``engine.state.epoch``."""
        stage = self.schedule.stage_of(engine.state.epoch)
        images, labels = engine.prepare_batch(batch, engine.state.device, engine.non_blocking)
        images = plain_tensor(images, self.channels_last_3d)
        labels = torch.as_tensor(labels).long().reshape(-1)
        optimizer = self.optimizers[stage]
        optimizer.zero_grad(set_to_none=True)
        with autocast(images.device, self.amp):
            diagnostics: dict[str, float] = {}
            if stage == "warmup":
                self.warmup_forward.train()
                loss = self.warmup_loss(self.warmup_forward(images), labels)
                terms = {"cls": loss.detach()}
            else:
                self.stage1_forward.train()
                net = self.network
                own = net.own_class_map_gradient(labels) if self.map_gradient == "own_class" else nullcontext()
                with own:
                    explanation = self.stage1_forward(images)
                flipped = flipped_view(self.stage1_forward, net, images) if self.stage1_loss.needs_flipped_view else None
                loss, terms = self.stage1_loss(
                    net.loss_inputs(explanation), explanation.logits, labels, net.classifier.effective_weight,
                    net.ownership, flipped,
                )
                diagnostics = stage1_diagnostics(
                    explanation.similarities, explanation.logits, net.classifier.effective_weight,
                    self.stage1_loss.lambdas, terms,
                )
        loss.backward()
        optimizer.step()
        return {
            "loss": float(loss.detach()),
            "terms": {name: float(value) for name, value in terms.items()},
            "diagnostics": diagnostics,
            "stage": stage,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "batch_size": int(labels.numel()),
        }


def flipped_view(forward: Callable[[Tensor], Any], network: UMProtoShare, images: Tensor) -> list[ScaleTerms]:
    """Stage-1 loss inputs of ``images`` `(B, C, H, W, D)` flipped along H, W and D, without gradient.

    The agreement teacher's second view (``Stage1Loss(agreement_flip=True)``); ``forward`` is the
    stage-1 forward (``ExplainForward`` or its DDP wrapper) in its current mode.
    """
    with torch.no_grad():
        return network.loss_inputs(forward(images.flip((2, 3, 4))))


def train_last_layer_epoch(
    network: UMProtoShare,
    loader: Iterable[Mapping[str, Any]],
    optimizer: Optimizer,
    loss_function: LastLayerLoss,
    device: torch.device,
    prepare_batch: Callable = default_prepare_batch,
    classifier: nn.Module | None = None,
    amp: bool = False,
    channels_last_3d: bool = False,
) -> dict[str, float]:
    """One stage-3 epoch (Eq. 3/21): only the classifier learns; everything before it runs without grad.

    The caller freezes every other group (``network.set_trainable(["classifier"])``) so that they
    stay in eval mode. ``classifier`` (default ``network.classifier``) may be a DDP wrapper of it.

    Returns:
        Sample-weighted means of ``loss`` and the unweighted terms ``cls`` and ``l1``, and ``seconds``.
    """
    classifier = network.classifier if classifier is None else classifier
    start = time.perf_counter()
    sums: dict[str, float] = {}
    seen = 0
    network.train()
    for batch in loader:
        images, labels = prepare_batch(batch, device, False)
        images = plain_tensor(images, channels_last_3d)
        labels = torch.as_tensor(labels).long().reshape(-1)
        optimizer.zero_grad(set_to_none=True)
        with autocast(images.device, amp):
            with torch.no_grad():
                similarities = network.similarities(images)
            weight = network.classifier.effective_weight
            loss, terms = loss_function(classifier(similarities), labels, weight, network.ownership)
        loss.backward()
        optimizer.step()
        count = int(labels.numel())
        seen += count
        for name, value in {"loss": loss.detach(), **terms}.items():
            sums[name] = sums.get(name, 0.0) + float(value) * count
    optimizer.zero_grad(set_to_none=True)
    if seen == 0:
        raise ValueError("stage 3 got an empty training loader.")
    return {**{name: total / seen for name, total in sums.items()}, "seconds": time.perf_counter() - start}
