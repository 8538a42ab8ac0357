"""Class-imbalance options: inverse-frequency weights, the balanced sampler, and the config's ``class_balance``
reaching the loss of the warm-up, stage 1 and stage 3."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler

from scripts.engine import ClassBalance, LastLayerHandler, class_balance_weights, class_balanced_sampler
from scripts.losses import ClassificationLoss, LastLayerLoss, Stage1Loss
from tests.test_engine_micro import micro_workflow

FOUR_TO_ONE = [{"label": 1}] * 80 + [{"label": 0}] * 20


def test_inverse_frequency_weights_of_a_known_label_list():
    items = [{"label": label} for label in (0, 1, 1, 1, 1, 2, 2)]
    assert class_balance_weights(items, 3) == pytest.approx([1.0, 0.25, 0.5])
    with pytest.raises(ValueError, match="each of the 3 classes"):
        class_balance_weights(items[:5], 3)


def test_balanced_sampler_draws_a_four_to_one_list_about_evenly():
    sampler = class_balanced_sampler(FOUR_TO_ONE, 2, "sampler")
    assert isinstance(sampler, WeightedRandomSampler) and len(sampler) == 100
    torch.manual_seed(0)
    drawn = [FOUR_TO_ONE[i]["label"] for _ in range(20) for i in sampler]
    assert abs(drawn.count(0) / len(drawn) - 0.5) < 0.05  # binomial(2000, 0.5): sd 0.011; unbalanced: 0.2
    torch.manual_seed(0)
    assert [FOUR_TO_ONE[i]["label"] for _ in range(20) for i in sampler] == drawn  # seeded: the same draws
    assert class_balanced_sampler(FOUR_TO_ONE, 2, "none") is None
    assert class_balanced_sampler(FOUR_TO_ONE, 2, "weighted_loss") is None
    with pytest.raises(ValueError, match="sampler"):
        class_balanced_sampler(FOUR_TO_ONE, 2, "oversample")


def test_weighted_focal_and_cross_entropy_hand_values():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    l0, l1 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1))
    weighted = ClassificationLoss(class_weights=[0.25, 1.0])(logits, labels)
    assert weighted.item() == pytest.approx((0.25 * l0 + l1) / 1.25)
    p0, p1 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))
    focal = ClassificationLoss("focal", [0.25, 1.0], focal_gamma=2.0)(logits, labels)
    assert focal.item() == pytest.approx((0.25 * (1 - p0) ** 2 * l0 + (1 - p1) ** 2 * l1) / 1.25)
    assert torch.equal(ClassificationLoss()(logits, labels), torch.nn.CrossEntropyLoss()(logits, labels))


def test_handler_weights_every_stage_loss_or_refuses_a_sampler_it_does_not_get():
    losses = [ClassificationLoss(), Stage1Loss(), LastLayerLoss()]
    loader = DataLoader(FOUR_TO_ONE, shuffle=True)
    ClassBalance("weighted_loss", FOUR_TO_ONE, 2, losses, loader)(Engine(lambda e, b: None))
    assert [loss.class_weights for loss in losses] == [pytest.approx([0.05, 0.0125])] * 3
    unweighted = [ClassificationLoss(), Stage1Loss(), LastLayerLoss()]
    ClassBalance("none", FOUR_TO_ONE, 2, unweighted, loader)(Engine(lambda e, b: None))
    assert [loss.class_weights for loss in unweighted] == [None] * 3
    assert isinstance(loader.sampler, RandomSampler)
    with pytest.raises(ValueError, match="draws with RandomSampler"):
        ClassBalance("sampler", FOUR_TO_ONE, 2, unweighted, loader)(Engine(lambda e, b: None))


def _started(workflow) -> tuple[Engine, list[dict]]:
    """The config's trainer after its STARTED handlers ran, and the fold's training items."""
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    trainer.fire_event(Events.STARTED)
    return trainer, workflow.parser.get_parsed_content("train#items")


def test_config_weighted_focal_loss_reaches_the_warmup_stage1_and_stage3(data_synthetic_root, tmp_path):
    workflow = micro_workflow(tmp_path / "run", data_synthetic_root, class_balance="weighted_loss",
                              classification_loss="focal", focal_gamma=1.5)
    trainer, items = _started(workflow)
    labels = [item["label"] for item in items]
    expected = [1 / labels.count(0), 1 / labels.count(1)]
    iteration = workflow.parser.get_parsed_content("train#iteration")
    stage3 = next(h for h in workflow.parser.get_parsed_content("train#handlers") if isinstance(h, LastLayerHandler))
    for loss in (iteration.warmup_loss, iteration.stage1_loss, stage3.loss_function):
        assert loss.class_weights == pytest.approx(expected)
        assert (loss.classification, loss.focal_gamma) == ("focal", 1.5)
    assert not isinstance(trainer.data_loader.sampler, WeightedRandomSampler)


def test_config_sampler_feeds_the_training_and_stage3_loader(data_synthetic_root, tmp_path):
    workflow = micro_workflow(tmp_path / "run", data_synthetic_root, class_balance="sampler")
    trainer, items = _started(workflow)
    assert isinstance(trainer.data_loader.sampler, WeightedRandomSampler)
    assert len(trainer.data_loader.sampler) == len(items)
    stage3 = next(h for h in workflow.parser.get_parsed_content("train#handlers") if isinstance(h, LastLayerHandler))
    assert stage3.train_loader is trainer.data_loader and stage3.loss_function.class_weights is None
