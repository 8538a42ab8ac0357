"""The Table 1 baselines (SPEC §8): each builds, trains one stage-1 step, pushes, scripts and yields a class map."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from scripts.explain.attribution import CLASS_MAP_METHODS, class_map
from scripts.networks import BackboneCNN, UMProtoShare
from scripts.push import push_prototypes
from tests.helpers import BASELINE_CONFIGS, PROTOTYPE_BASELINES, baseline_parser, tiny_baseline, tiny_sizes

SHAPE = (4, 32, 32, 24)
CLASSES = ["LGG", "HGG"]


def cases(labels: list[int], seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(1, *SHAPE, generator=generator), "label": torch.tensor([label]), "case_id": [f"c{i}"]}
        for i, label in enumerate(labels)
    ]


@pytest.mark.parametrize("name", PROTOTYPE_BASELINES)
def test_prototype_baseline_builds_trains_pushes_and_maps(name):
    model = tiny_baseline(name)
    assert model.num_prototypes == 30 and model.prototype_sharing == "class_specific"
    assert model.ownership.sum(dim=0).tolist() == [15.0, 15.0]
    expected_weight = torch.where(model.ownership.T.bool(), 1.0, -0.5)
    torch.testing.assert_close(model.classifier.weight.detach(), expected_weight)
    assert model.classifier.bias is None and len(model.scales) == 1

    # one stage-1 step with the baseline's loss switches; the loss reports exactly the switched-on terms
    model.train()
    model.set_trainable(["encoder", "addon", "mapping", "prototypes"])
    loss_function = baseline_parser(name).get_parsed_content("loss")
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, labels = torch.randn(2, *SHAPE), torch.tensor([0, 1])
    explanation = model.explain(images)
    loss, terms = loss_function(
        model.loss_inputs(explanation), explanation.logits, labels, model.classifier.weight, model.ownership
    )
    expected_terms = {"cls", "clst", "sep", "div"}
    expected_terms |= {"map"} if loss_function.use_map else set()
    expected_terms |= {"oc"} if loss_function.use_oc else set()
    assert set(terms) == expected_terms and torch.isfinite(loss)
    before = [p.detach().clone() for p in model.group_parameters("prototypes")]
    loss.backward()
    optimiser.step()
    assert not torch.equal(before[0], model.group_parameters("prototypes")[0])

    # push over a tiny training fold: every prototype comes from a case of its own class
    result = push_prototypes(model, cases([0, 1, 1, 0]), CLASSES)
    owners = model.ownership.argmax(dim=1).tolist()
    assert [r["label"] for r in result.records] == owners

    # class map on the input grid
    maps = class_map(model.eval(), torch.randn(2, *SHAPE), [0, 1])
    assert maps.shape == (2, *SHAPE[1:]) and torch.isfinite(maps).all()


@pytest.mark.parametrize("name", [*PROTOTYPE_BASELINES, "cnn_gradcam"])
def test_torchscript_forward_of_each_baseline(name):
    model = tiny_baseline(name).eval()
    x = torch.randn(2, *SHAPE)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_cnn_baseline_trains_and_gives_both_class_maps():
    model = tiny_baseline("cnn_gradcam")
    assert isinstance(model, BackboneCNN) and model.scales == [1, 2, 3] and model.backbone.decoder is not None
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images, labels = torch.randn(2, *SHAPE), torch.tensor([0, 1])
    before = model.classifier.weight.detach().clone()
    loss = nn.functional.cross_entropy(model.train()(images), labels)
    loss.backward()
    optimiser.step()
    assert not torch.equal(before, model.classifier.weight)
    model.eval()
    small = torch.randn(1, 4, 16, 16, 10)
    with pytest.raises(ValueError, match="smaller than the occlusion window"):
        class_map(model, small, [1], "occlusion")
    methods = {baseline_parser(name).get_parsed_content("class_map_method") for name in BASELINE_CONFIGS}
    assert methods - {None} == {"grad_cam", "occlusion"} <= set(CLASS_MAP_METHODS)  # the CNN rows' methods
    for method in ("grad_cam", "occlusion"):
        maps = class_map(model, torch.randn(1, 4, 16, 16, 16), [1], method)
        assert maps.shape == (1, 16, 16, 16) and 0 <= float(maps.min()) and float(maps.max()) <= 1


@pytest.mark.parametrize("name", PROTOTYPE_BASELINES)
def test_warmup_cnn_initialises_the_baseline(name):
    parser = baseline_parser(name, **tiny_sizes(name))
    cnn = parser.get_parsed_content("warmup_network").eval()
    model = parser.get_parsed_content("network").eval()
    assert isinstance(model, UMProtoShare) and cnn.scales == model.scales
    assert model.load_backbone(cnn.state_dict()) == ["classifier.weight", "classifier.bias"]
    x = torch.randn(1, *SHAPE)
    torch.testing.assert_close(model.explain(x).per_scale[0].embeddings, cnn.embeddings(x)[0], rtol=0, atol=0)


def test_protopnet_push_copies_the_best_voxel_of_the_best_own_class_case():
    model = tiny_baseline("protopnet")
    before = copy.deepcopy(model).eval()
    labels = [0, 1, 0, 1, 1]
    loader = cases(labels)
    push_prototypes(model, loader, CLASSES)
    owners = model.ownership.argmax(dim=1)
    with torch.no_grad():
        per_case = [before.explain(batch["image"]).per_scale[0] for batch in loader]
    # brute force: per voxel similarity maps → best voxel per case → best own-class case
    best = torch.stack([entry.maps.flatten(2).amax(dim=2)[0] for entry in per_case])  # (N, 30)
    own = torch.tensor(labels)[:, None] == owners[None, :]
    winners = best.masked_fill(~own, -2).argmax(dim=0)
    for k in range(30):
        entry = per_case[int(winners[k])]
        voxel = entry.maps[0, k].flatten().argmax()
        expected = entry.embeddings[0].flatten(1)[:, voxel]
        torch.testing.assert_close(model.head(3).prototypes[k].detach(), expected)
    # after the push each prototype's best voxel similarity on its source case is 1
    with torch.no_grad():
        after = [model.eval().explain(batch["image"]).per_scale[0].push_similarities[0] for batch in loader]
    sources = torch.stack([after[int(winners[k])][k] for k in range(30)])
    torch.testing.assert_close(sources, torch.ones(30))


def test_every_baseline_config_is_in_the_readme_table():
    table = Path("configs/baselines/README.md").read_text()
    assert BASELINE_CONFIGS and all(f"`{name}.json`" in table for name in BASELINE_CONFIGS)
    assert PROTOTYPE_BASELINES == ["maprotonet", "mprotonet", "protopnet", "xprotonet"]
