"""``map_gradient="own_class"``: a prototype's map learns only from the cases of the class its weights favour."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.engines.utils import default_prepare_batch

from scripts.engine import Schedule, StagedIteration
from scripts.losses import Stage1Loss
from scripts.networks import BackboneCNN, UMProtoShare

TINY = {"encoder_layers": (1, 1), "encoder_width": 4, "embed_dim": 8, "mapping_dim": 8, "prototypes_per_scale": (2, 2, 2)}


def _model(favoured: list[int]) -> UMProtoShare:
    """A tiny model whose classifier column k favours class ``favoured[k]`` (+1 there, -0.5 on the other)."""
    torch.manual_seed(0)
    model = UMProtoShare(**TINY)
    weight = torch.full((2, len(favoured)), -0.5)
    weight[torch.tensor(favoured), torch.arange(len(favoured))] = 1.0
    with torch.no_grad():
        model.classifier.weight.copy_(weight)
    return model


def _mapping_gradient(model: UMProtoShare) -> float:
    return sum(float(p.grad.abs().sum()) for p in model.head(1).mapping.parameters() if p.grad is not None)


def test_own_class_map_gradient_keeps_the_forward_and_blocks_other_class_cases():
    model = _model([1, 0, 0, 1, 1, 0]).train()
    images = torch.randn(2, 4, 32, 32, 24, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1])
    plain = model.explain(images).similarities
    with model.own_class_map_gradient(labels):
        masks = [model.head(s).map_gradient_mask.tolist() for s in model.scales]
        guarded = model.explain(images).similarities
    assert masks == [[[False, True], [True, False]], [[True, False], [False, True]], [[False, True], [True, False]]]
    assert all(head.map_gradient_mask is None for head in model.heads.values())
    torch.testing.assert_close(guarded, plain, rtol=0, atol=0)
    # scale 1, column 0 favours class 1: case 0 (LGG) sends its map nothing, case 1 (HGG) does; the add-on
    # (the features the map pools) learns from both
    for case, expected in ((0, False), (1, True)):
        model.zero_grad()
        with model.own_class_map_gradient(labels):
            similarities = model.explain(images).similarities
        similarities[case, 0].backward()
        assert (_mapping_gradient(model) > 0) == expected
        assert sum(float(p.grad.abs().sum()) for p in model.head(1).addon.parameters()) > 0


def test_the_mask_is_cleared_when_the_forward_fails():
    model = _model([1, 0, 0, 1, 1, 0])
    with pytest.raises(RuntimeError), model.own_class_map_gradient(torch.tensor([0, 1])):
        model.explain(torch.randn(2, 3, 32, 32, 24))  # 3 channels: the encoder refuses them
    assert all(head.map_gradient_mask is None for head in model.heads.values())


@pytest.mark.parametrize("map_gradient", ["all", "own_class"])
def test_a_stage1_step_trains_maps_only_from_own_class_cases(map_gradient):
    """Every column favours HGG and the batch is all LGG: with ``own_class`` no similarity reaches a map (L_map and
    L_OC, which train the mapping module on their own, are off here), while the add-ons still learn."""
    model = _model([1] * 6)
    cnn = BackboneCNN(encoder_layers=(1, 1), encoder_width=4, embed_dim=8, scales=model.scales)
    schedule = Schedule(warmup_epochs=1, stage1_epochs=1, push_every=1, stage3_epochs=1)
    model.set_trainable(schedule.trainable_groups("stage1"))
    loss = Stage1Loss(use_map=False, use_oc=False)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (cnn, model)]
    iteration = StagedIteration(
        model, cnn, schedule, *optimizers, torch.nn.CrossEntropyLoss(), loss, map_gradient=map_gradient
    )
    engine = SimpleNamespace(
        state=SimpleNamespace(epoch=2, device=torch.device("cpu")), prepare_batch=default_prepare_batch,
        non_blocking=False,
    )
    batch = {"image": torch.randn(2, 4, 32, 32, 24, generator=torch.Generator().manual_seed(2)), "label": torch.zeros(2)}
    iteration(engine, batch)
    mapping = [p.grad for s in model.scales for p in model.head(s).mapping.parameters()]
    addon = [p.grad for s in model.scales for p in model.head(s).addon.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in addon)
    if map_gradient == "own_class":
        assert all(g is None or not g.any() for g in mapping)
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in mapping)
    with pytest.raises(ValueError, match="own_class"):
        StagedIteration(model, cnn, schedule, *optimizers, torch.nn.CrossEntropyLoss(), loss, map_gradient="own")
