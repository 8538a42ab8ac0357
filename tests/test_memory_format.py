"""Channels-last 3-D placement (the inference config's ``channels_last_3d``): the same logits and maps as the
contiguous network, with the activations really in channels-last order."""

from __future__ import annotations

import copy

import torch
from monai.bundle import ConfigParser

from scripts.engine import place
from scripts.networks import UMProtoShare
from tests.test_folding import SHAPE, TINY, with_running_statistics


def test_channels_last_explanation_equals_the_contiguous_one():
    torch.manual_seed(0)
    network = with_running_statistics(UMProtoShare(**TINY, mapping_dim=12, prototypes_per_scale=(2, 4, 2)))
    placed = place(copy.deepcopy(network), "cpu", channels_last_3d=True)
    assert placed.backbone.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not network.backbone.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = network.explain(x), placed.explain(x)
        logits = placed(x)
    assert got.per_scale[0].features.is_contiguous(memory_format=torch.channels_last_3d)
    assert not expected.per_scale[0].features.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.allclose(logits, expected.logits, atol=1e-4)
    assert torch.allclose(got.logits, expected.logits, atol=1e-4)
    for a, b in zip(expected.per_scale, got.per_scale):
        assert torch.allclose(b.maps, a.maps, atol=1e-4)
        assert torch.allclose(b.similarities, a.similarities, atol=1e-5)


def test_the_inference_config_places_its_network_channels_last():
    parser = ConfigParser()
    parser.read_config(["configs/inference.json", "configs/quickstart.json"])
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network")
    assert parser["channels_last_3d"] is True
    assert network.backbone.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    parser["channels_last_3d"] = False
    parser.parse()
    contiguous = parser.get_parsed_content("network", lazy=False)
    assert not contiguous.backbone.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_evaluation_follows_inference_and_training_is_channels_last_on_a_cpu_only():
    stacks = {
        "evaluate": ["configs/train.json", "configs/quickstart.json", "configs/evaluate.json"],
        "train": ["configs/train.json", "configs/quickstart.json"],
    }
    placed = {}
    for name, files in stacks.items():
        parser = ConfigParser()
        parser.read_config(files)
        parser["device"] = "$torch.device('cpu')"
        weight = parser.get_parsed_content("network").backbone.encoder.conv1.weight
        placed[name] = weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert placed == {"evaluate": True, "train": True}
    parser = ConfigParser()
    parser.read_config(stacks["train"])
    parser["device"] = "$torch.device('cuda')"  # the setting only: nothing is placed on a GPU here
    assert parser.get_parsed_content("channels_last_3d") is False  # not measured in fp32 on CUDA: contiguous
