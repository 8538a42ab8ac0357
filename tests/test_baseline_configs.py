"""configs/baselines/*.json: the BASELINES table's fields, a micro epoch of the configured iteration, a class map."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer

from scripts.explain.attribution import class_map
from scripts.engine import StageHandler
from scripts.networks import BASELINES, BackboneCNN, UMProtoShare, group_of

# config file: (BASELINES entry, class-map method)
CONFIGS = {
    "cnn_gradcam": ("cnn", "grad_cam"),
    "cnn_occlusion": ("cnn", "occlusion"),
    "protopnet": ("protopnet", "prototype_maps"),
    "xprotonet": ("xprotonet", "prototype_maps"),
    "mprotonet": ("mprotonet", "prototype_maps"),
    "maprotonet": ("maprotonet", "prototype_maps"),
}
SHAPE = (4, 16, 16, 16)


def _parser(name: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(["configs/train.json", f"configs/baselines/{name}.json"])
    parser.update({"device": "cpu", **overrides})
    return parser


def _tiny(name: str) -> dict:
    layers = [1] if name == "maprotonet" else [1, 1]
    return {"encoder_layers": layers, "encoder_width": 4, "embed_dim": 8, "mapping_dim": 8}


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


@pytest.mark.parametrize("name", list(CONFIGS))
def test_baseline_config_sets_exactly_the_table_fields(name):
    key, method = CONFIGS[name]
    baseline = BASELINES[key]
    overlay = json.loads(Path(f"configs/baselines/{name}.json").read_text())
    assert name in overlay["output_dir"]
    parser = _parser(name)
    assert parser.get_parsed_content("class_map_method") in (method, None)
    assert method == (parser.get_parsed_content("class_map_method") or baseline.class_map_methods[0])
    assert method in baseline.class_map_methods
    if baseline.network is BackboneCNN:
        assert parser["fold_model"] == "@warmup_network"
        assert parser.get_parsed_content("schedule").stage1_epochs == 0  # the warm-up CNN is the whole model
        assert parser.get_parsed_content("warmup_network_def#fusion") == baseline.fields["fusion"]
        return
    for field, value in baseline.fields.items():
        assert _plain(parser.get_parsed_content(f"network_def#{field}")) == _plain(value), field
    for field, value in baseline.warmup.items():
        if field != "scales":  # the CNN's scales follow the model's (checked on the tiny build)
            assert _plain(parser.get_parsed_content(f"warmup_network_def#{field}")) == _plain(value), field
    loss = parser.get_parsed_content("loss")
    for field, value in baseline.stage1_loss.items():
        assert getattr(loss, field) == value, field
    assert loss.lambdas["div"] == 0.0  # no reference model has a diversity loss


@pytest.mark.parametrize("name", list(CONFIGS))
def test_baseline_config_trains_a_micro_epoch_and_maps_the_input(name):
    key, method = CONFIGS[name]
    parser = _parser(name, **_tiny(name))
    stage1_epochs = min(parser.get_parsed_content("stage1_epochs"), 1)
    parser.update({"warmup_epochs": 1, "stage1_epochs": stage1_epochs, "lr_warmup_epochs": 1})
    network, cnn = parser.get_parsed_content("network"), parser.get_parsed_content("warmup_network")
    model = parser.get_parsed_content("fold_model")
    assert type(model) is BASELINES[key].network
    if isinstance(model, UMProtoShare):
        assert cnn.scales == model.scales == list(BASELINES[key].warmup["scales"])
    else:
        assert model is cnn and model.scales == list(BASELINES[key].fields["scales"])
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
