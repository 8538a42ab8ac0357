"""The schedule as data (SPEC §4): epochs → stages, push epochs, trainable groups, optimiser groups, LR per epoch."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from scripts.engine import STAGE_GROUPS, Schedule, StageHandler, parameter_groups
from scripts.networks import PARAMETER_GROUPS, BackboneCNN, UMProtoShare, group_of

TINY = {"encoder_layers": [1, 1], "encoder_width": 4, "embed_dim": 8, "mapping_dim": 8}


def test_paper_schedule_stages_and_push_epochs():
    schedule = Schedule()  # 50 warm-up, 100 stage 1, push every 10, 10 stage-3 epochs
    assert schedule.max_epochs == 150
    assert [schedule.stage_of(e) for e in (1, 50, 51, 150)] == ["warmup", "warmup", "stage1", "stage1"]
    assert schedule.push_epochs() == [60, 70, 80, 90, 100, 110, 120, 130, 140, 150]
    with pytest.raises(ValueError, match="outside"):
        schedule.stage_of(151)


def test_last_stage1_epoch_always_pushes():
    schedule = Schedule(warmup_epochs=2, stage1_epochs=7, push_every=3, stage3_epochs=1)
    assert schedule.push_epochs() == [5, 8, 9]
    assert not schedule.is_push_epoch(2)  # warm-up epochs never push


@pytest.mark.parametrize(
    "bad",
    [{"warmup_epochs": 0, "stage1_epochs": 0}, {"push_every": 0}, {"warmup_epochs": -1}, {"stage3_epochs": -1}],
)
def test_schedule_rejects_impossible_numbers(bad):
    with pytest.raises(ValueError, match="schedule needs"):
        Schedule(**bad)


def test_stage_groups_freeze_decoder_and_classifier_in_stage1():
    schedule = Schedule()
    assert "decoder" not in schedule.trainable_groups("stage1")
    assert "classifier" not in schedule.trainable_groups("stage1")
    assert schedule.trainable_groups("stage3") == ("classifier",)
    assert "fusion" in schedule.trainable_groups("stage1")
    assert "fusion" not in Schedule(freeze_gates=True).trainable_groups("stage1")
    assert all(set(groups) <= set(PARAMETER_GROUPS) for groups in STAGE_GROUPS.values())
    with pytest.raises(ValueError):
        schedule.trainable_groups("stage2")


def test_parameter_groups_exempt_prototypes_from_weight_decay():
    network = UMProtoShare(**TINY)
    groups = parameter_groups(network, Schedule().trainable_groups("stage1"), 0.01)
    decayed, undecayed = groups
    assert decayed["weight_decay"] == 0.01 and undecayed["weight_decay"] == 0.0
    names = {id(p): n for n, p in network.named_parameters()}
    assert {group_of(names[id(p)]) for p in undecayed["params"]} == {"prototypes"}
    assert {group_of(names[id(p)]) for p in decayed["params"]} == {"encoder", "fusion", "addon", "mapping"}
    assert len(undecayed["params"]) == 3  # one (K_s, E) bank per scale


def test_parameter_groups_leave_out_empty_entries():
    groups = parameter_groups(BackboneCNN(**{k: v for k, v in TINY.items() if k != "mapping_dim"}), ["encoder"], 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


def _parsed(**overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config("configs/train.json")
    parser.update({"device": "cpu", **TINY, **overrides})
    return parser


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_stage_handler_sets_groups_hands_over_backbone_and_steps_lr_per_epoch():
    """The configured optimiser and scheduler, driven by StageHandler over the paper's epochs."""
    parser = _parsed()
    network, cnn = parser.get_parsed_content("network"), parser.get_parsed_content("warmup_network")
    optimizer, schedule = parser.get_parsed_content("optimizer"), parser.get_parsed_content("schedule")
    handler = StageHandler(network, cnn, schedule, parser.get_parsed_content("lr_scheduler"))
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    lrs, flags = {}, {}

    @engine.on(Events.EPOCH_STARTED)
    def record(e):
        lrs[e.state.epoch] = optimizer.param_groups[0]["lr"]
        flags[e.state.epoch] = (
            e.state.stage,
            {group_of(n) for n, p in cnn.named_parameters() if p.requires_grad},
            {group_of(n) for n, p in network.named_parameters() if p.requires_grad},
        )

    with torch.no_grad():
        cnn.backbone.encoder.conv1.weight.add_(1.0)  # stands in for warm-up training
    engine.run([0], max_epochs=schedule.max_epochs)
    # stage-1 epoch i (0-based) runs at 1e-3 * lambda(i): linear from 1/20 over 20 epochs, then cosine over 80
    assert lrs[51] == pytest.approx(1e-3 / 20)
    assert lrs[61] == pytest.approx(1e-3 * (0.05 + 0.95 * 10 / 20))
    assert lrs[71] == pytest.approx(1e-3)
    assert lrs[111] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert lrs[150] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 79 / 80)))
    assert flags[1][:2] == ("warmup", {"encoder", "decoder", "fusion", "addon", "classifier"})
    assert flags[51][0] == "stage1" and flags[51][2] == {"encoder", "fusion", "addon", "mapping", "prototypes"}
    assert torch.equal(network.backbone.encoder.conv1.weight, cnn.backbone.encoder.conv1.weight)
    network.train()
    assert not network.backbone.decoder.training and network.backbone.encoder.training
