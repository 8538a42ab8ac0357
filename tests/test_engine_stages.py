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


def test_map_shift_starts_at_the_start_coverage_and_falls_linearly_to_zero():
    schedule = Schedule(warmup_epochs=3, stage1_epochs=6, push_every=3, map_anneal_epochs=4, map_init_coverage=0.02)
    full = float(torch.special.ndtri(torch.tensor(0.5)) - torch.special.ndtri(torch.tensor(0.02)))
    assert full == pytest.approx(2.0537, abs=1e-4)  # Φ⁻¹(0.5) − Φ⁻¹(0.02) = 0 + 2.0537
    shifts = [schedule.map_shift(e) for e in range(1, 10)]
    assert shifts[:3] == [0.0, 0.0, 0.0]  # warm-up
    assert shifts[3:] == pytest.approx([full, 0.75 * full, 0.5 * full, 0.25 * full, 0.0, 0.0])
    # the shifted BN output N(β, 1) + shift lies above 0 (the soft mask's centre) on the start share
    assert float(torch.special.ndtr(torch.tensor(float(torch.special.ndtri(torch.tensor(0.02))) + full))) == pytest.approx(0.5)
    assert Schedule(warmup_epochs=3, stage1_epochs=6).map_shift(4) == 0.0  # the paper: no annealing
    with pytest.raises(ValueError, match="map_anneal_epochs"):
        Schedule(stage1_epochs=4, map_anneal_epochs=4)
    with pytest.raises(ValueError, match="map_start_coverage"):
        Schedule(map_start_coverage=1.0)


def test_stage_handler_shifts_the_maps_of_stage1_epochs_and_the_shift_widens_them():
    torch.manual_seed(0)
    network = UMProtoShare(**TINY, prototypes_per_scale=(2, 2, 2), map_init_coverage=0.02)
    cnn = BackboneCNN(encoder_layers=[1, 1], encoder_width=4, embed_dim=8, scales=(1, 2, 3))
    schedule = Schedule(warmup_epochs=1, stage1_epochs=3, push_every=3, map_anneal_epochs=2, map_init_coverage=0.02)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    handler = StageHandler(network, cnn, schedule, torch.optim.lr_scheduler.StepLR(optimizer, 1))
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    shifts = {}
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: shifts.update({e.state.epoch: network.head(1).map_shift}))
    engine.run([0], max_epochs=schedule.max_epochs)
    assert shifts == pytest.approx({1: 0.0, 2: schedule.map_full_shift, 3: schedule.map_full_shift / 2, 4: 0.0})
    x = torch.randn(2, 4, 16, 16, 16)
    network.train()  # batch statistics: z is N(β, 1) over the batch's voxels
    covered = {}
    for shift in (0.0, schedule.map_full_shift):
        network.set_map_shift(shift)
        with torch.no_grad():
            covered[shift] = float((network.explain(x).per_scale[0].soft_maps > 0.5).float().mean())
    # z is only roughly normal over the voxels, so the shares only roughly follow Φ
    assert covered[0.0] < 0.1 and covered[schedule.map_full_shift] == pytest.approx(0.5, abs=0.1)
