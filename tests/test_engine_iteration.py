"""One step per stage: which parameters and batch-norm statistics each stage may change."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from monai.engines.utils import default_prepare_batch

from scripts.engine import Schedule, StagedIteration, flipped_view, train_last_layer_epoch
from scripts.losses import LastLayerLoss, Stage1Loss
from scripts.networks import BackboneCNN, ExplainForward, UMProtoShare, group_of, unwrap

TINY = {"encoder_layers": (1, 1), "encoder_width": 4, "embed_dim": 8}
SCHEDULE = Schedule(warmup_epochs=1, stage1_epochs=2, push_every=1, stage3_epochs=1)


def _batch(size: int = 2, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(size, 4, 16, 16, 16, generator=generator), "label": torch.arange(size) % 2}


def _engine(epoch: int) -> SimpleNamespace:
    return SimpleNamespace(
        state=SimpleNamespace(epoch=epoch, device=torch.device("cpu")),
        prepare_batch=default_prepare_batch,
        non_blocking=False,
    )


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict, after: dict) -> set[str]:
    """Groups with at least one entry (parameter or buffer) that changed."""
    return {group_of(k) for k in before if not torch.equal(before[k], after[k])}


@pytest.fixture
def parts():
    torch.manual_seed(0)
    network = UMProtoShare(**TINY, mapping_dim=8)
    cnn = BackboneCNN(**TINY, scales=network.scales)
    optimizers = {
        "warmup": torch.optim.AdamW(cnn.parameters(), lr=1e-2),
        "stage1": torch.optim.AdamW(network.parameters(), lr=1e-2),
    }
    iteration = StagedIteration(
        network, cnn, SCHEDULE, optimizers["warmup"], optimizers["stage1"], torch.nn.CrossEntropyLoss(), Stage1Loss()
    )
    return network, cnn, iteration


def test_stage1_step_leaves_decoder_and_classifier_alone(parts):
    network, cnn, iteration = parts
    network.set_trainable(SCHEDULE.trainable_groups("stage1"))
    before, cnn_before = _state(network), _state(cnn)
    output = iteration(_engine(epoch=2), _batch())
    after = _state(network)
    assert _changed(before, after) == {"encoder", "fusion", "addon", "mapping", "prototypes"}
    assert _changed(cnn_before, _state(cnn)) == set()
    assert network.classifier.weight.grad is None  # no gradient accumulates on the frozen classifier
    assert output["stage"] == "stage1" and output["batch_size"] == 2
    assert set(output["terms"]) == {"cls", "clst", "sep", "map", "oc", "div"}
    assert output["lr"] == pytest.approx(1e-2)


def test_stage1_step_with_agreement_flip_runs_the_flipped_view_without_grad(parts):
    network, cnn, _ = parts
    network.set_trainable(SCHEDULE.trainable_groups("stage1"))
    loss = Stage1Loss(agreement_weight=1.0, agreement_flip=True)
    iteration = StagedIteration(
        network, cnn, SCHEDULE, torch.optim.AdamW(cnn.parameters()), torch.optim.AdamW(network.parameters()),
        torch.nn.CrossEntropyLoss(), loss,
    )
    seen = []
    hook = network.backbone.encoder.conv1.register_forward_hook(
        lambda module, args, out: seen.append((args[0].detach().clone(), out.requires_grad))
    )
    images = _batch()["image"]
    output = iteration(_engine(epoch=2), _batch())
    hook.remove()
    assert [grad for _, grad in seen] == [True, False]  # the view is a second, no-grad forward
    assert torch.equal(seen[1][0], images.flip((2, 3, 4)))
    assert "agree" in output["terms"] and torch.isfinite(torch.tensor(output["loss"]))
    # the helper's maps are the network's own on the flipped input
    network.eval()
    view = flipped_view(ExplainForward(network), network, images)
    direct = network.loss_inputs(network.explain(images.flip((2, 3, 4))))
    assert all(torch.equal(a.maps, b.maps) and not a.maps.requires_grad for a, b in zip(view, direct))


def test_warmup_step_trains_the_cnn_not_the_model(parts):
    network, cnn, iteration = parts
    cnn.set_trainable(SCHEDULE.trainable_groups("warmup"))
    before, cnn_before = _state(network), _state(cnn)
    output = iteration(_engine(epoch=1), _batch())
    assert _changed(before, _state(network)) == set()
    assert _changed(cnn_before, _state(cnn)) == {"encoder", "decoder", "fusion", "addon", "classifier"}
    assert output["stage"] == "warmup" and set(output["terms"]) == {"cls"}
    assert output["loss"] == pytest.approx(output["terms"]["cls"])


def test_last_layer_epoch_changes_the_classifier_only(parts):
    network, _, _ = parts
    network.set_trainable(SCHEDULE.trainable_groups("stage3"))
    optimizer = torch.optim.Adam(network.group_parameters("classifier"), lr=1e-2)
    before = _state(network)
    means = train_last_layer_epoch(
        network, [_batch(2, 1), _batch(1, 2)], optimizer, LastLayerLoss(l1_weight=0.01), torch.device("cpu")
    )
    assert _changed(before, _state(network)) == {"classifier"}
    assert network.classifier.weight.grad is None  # cleared for the next stage
    assert means["loss"] == pytest.approx(means["cls"] + 0.01 * means["l1"])  # both are sample-weighted means
    assert means["seconds"] > 0


def test_last_layer_epoch_rejects_an_empty_loader(parts):
    network, _, _ = parts
    optimizer = torch.optim.Adam(network.group_parameters("classifier"))
    with pytest.raises(ValueError, match="empty"):
        train_last_layer_epoch(network, [], optimizer, LastLayerLoss(), torch.device("cpu"))


def test_loss_inputs_wire_each_heads_own_parts(parts):
    network, _, _ = parts
    explanation = network.explain(_batch()["image"])
    terms = network.loss_inputs(explanation)
    assert len(terms) == len(network.scales) == 3
    for term, entry, scale in zip(terms, explanation.per_scale, network.scales):
        head = network.head(scale)
        assert term.w2 is head.mapping.out_conv.weight and term.prototypes is head.prototypes
        assert term.columns == network.columns(scale) and term.similarities is entry.similarities
        assert torch.equal(term.map_fn(entry.features), entry.soft_maps)


def test_explain_forward_is_the_explanation_and_unwraps(parts):
    network, _, _ = parts
    network.eval()
    images = _batch()["image"]
    wrapper = ExplainForward(network)
    assert torch.equal(wrapper(images).logits, network(images))
    assert unwrap(wrapper) is network and unwrap(network) is network


@pytest.mark.parametrize("amp, dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_amp_and_channels_last_switches_run_on_the_cpu(parts, amp, dtype):
    network, cnn, _ = parts
    network.set_trainable(SCHEDULE.trainable_groups("stage1"))
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-2)
    iteration = StagedIteration(
        network, cnn, SCHEDULE, optimizer, optimizer, torch.nn.CrossEntropyLoss(), Stage1Loss(),
        amp=amp, channels_last_3d=True,
    )
    dtypes = []
    hook = network.backbone.encoder.conv1.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    output = iteration(_engine(epoch=2), _batch())
    hook.remove()
    assert set(dtypes) == {dtype} and torch.isfinite(torch.tensor(output["loss"]))
