"""configs/baselines/*.json: their fields reach the network and the loss, a micro epoch of the configured iteration, a class map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.engines import SupervisedTrainer

from scripts.engine import StageHandler
from scripts.explain.attribution import CLASS_MAP_METHODS, class_map
from scripts.networks import BackboneCNN, UMProtoShare, group_of
from tests.helpers import BASELINE_CONFIGS, baseline_parser, is_cnn_baseline, tiny_sizes

SHAPE = (4, 16, 16, 16)


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name", BASELINE_CONFIGS)
def test_baseline_config_reaches_the_network_and_the_loss(name):
    overlay = json.loads(Path(f"configs/baselines/{name}.json").read_text())
    assert name in overlay["output_dir"]
    parser = baseline_parser(name)
    method = parser.get_parsed_content("class_map_method")  # None: the model's own (prototype maps)
    assert method in (CLASS_MAP_METHODS if is_cnn_baseline(name) else (None,))
    if is_cnn_baseline(name):
        assert parser.get_parsed_content("schedule").stage1_epochs == 0  # the warm-up CNN is the whole model
        return
    network_fields = parser["network_def"]
    loss = parser.get_parsed_content("loss")
    reached = []
    for field, value in overlay.items():
        if field in network_fields:
            assert _plain(parser.get_parsed_content(f"network_def#{field}")) == _plain(value), field
            reached.append(field)
        if hasattr(loss, field):
            assert getattr(loss, field) == value, field
            reached.append(field)
    assert {"prototypes_per_scale", "prototype_sharing"} <= set(reached)
    assert loss.prototype_sharing == "class_specific" and loss.lambdas["div"] == 0.0  # no reference model has L_div
    for field in ("fusion", "addon_activation", "encoder_layers", "encoder_last_layer", "encoder_attention"):
        assert _plain(parser.get_parsed_content(f"warmup_network_def#{field}")) == _plain(
            parser.get_parsed_content(f"network_def#{field}")
        ), field  # the warm-up CNN that initialises the model has its backbone


@pytest.mark.parametrize("name", BASELINE_CONFIGS)
def test_baseline_config_trains_a_micro_epoch_and_maps_the_input(name):
    parser = baseline_parser(name, **tiny_sizes(name, width=4, embed=8, mapping=8))
    stage1_epochs = min(parser.get_parsed_content("stage1_epochs"), 1)
    parser.update({"warmup_epochs": 1, "stage1_epochs": stage1_epochs, "lr_warmup_epochs": 1})
    network, cnn = parser.get_parsed_content("network"), parser.get_parsed_content("warmup_network")
    model = parser.get_parsed_content("fold_model")
    if is_cnn_baseline(name):
        assert model is cnn and isinstance(model, BackboneCNN)
    else:
        assert isinstance(model, UMProtoShare) and cnn.scales == model.scales
    schedule = parser.get_parsed_content("schedule")
    torch.manual_seed(0)
    images, labels = torch.randn(2, *SHAPE), torch.tensor([0, 1])
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=schedule.max_epochs,
        train_data_loader=[{"image": images, "label": labels}],
        network=network,
        optimizer=parser.get_parsed_content("optimizer"),
        loss_function=parser.get_parsed_content("loss"),
        iteration_update=parser.get_parsed_content("train#iteration"),
        train_handlers=[StageHandler(network, cnn, schedule, parser.get_parsed_content("lr_scheduler"))],
        decollate=False,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage1_only = ("mapping", "prototypes", "classifier")
    untouched = {k: v.clone() for k, v in network.state_dict().items() if group_of(k) in stage1_only}
    trainer.run()
    stages = ["warmup"] * schedule.warmup_epochs + ["stage1"] * schedule.stage1_epochs
    assert trainer.state.stage == stages[-1]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    if isinstance(model, UMProtoShare):
        assert any(k.endswith("prototypes") for k in changed)  # stage 1 trained the prototype layer
    else:
        assert "classifier.weight" in changed
        assert untouched and all(torch.equal(v, network.state_dict()[k]) for k, v in untouched.items())  # no stage 1
    maps = class_map(model.eval(), images, labels, parser.get_parsed_content("class_map_method"))
    assert maps.shape == (2, *SHAPE[1:]) and torch.isfinite(maps).all()
