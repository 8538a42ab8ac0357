"""Inference precision: bf16 autocast in eval mode (float32 out, close to fp32), never in training or TorchScript."""

from __future__ import annotations

import pytest
import torch

from scripts.networks import BackboneCNN, UMProtoShare, resolve_precision, set_precision

TINY = {"encoder_layers": (1, 1), "encoder_width": 8, "embed_dim": 16}
X = torch.randn(2, 4, 32, 32, 24, generator=torch.Generator().manual_seed(0))


def tiny_model() -> UMProtoShare:
    torch.manual_seed(0)
    return UMProtoShare(**TINY, mapping_dim=12, prototypes_per_scale=(2, 4, 2), map_support="brain").eval()


@pytest.mark.parametrize(
    "precision, device, amx, expected",
    [("fp32", "cpu", True, "fp32"), ("bf16", "cpu", False, "bf16"), ("auto", "cpu", True, "bf16"),
     ("auto", "cpu", False, "fp32")],
)
def test_resolve_precision(precision, device, amx, expected):
    assert resolve_precision(precision, device, cpu_has_amx=amx) == expected


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", "cpu")


@pytest.mark.parametrize("network", ["umprotoshare", "cnn"])
def test_bf16_forward_is_float32_close_to_fp32_and_not_identical(network):
    if network == "cnn":
        torch.manual_seed(0)
        model = BackboneCNN(**TINY).eval()
    else:
        model = tiny_model()
    with torch.no_grad():
        fp32 = model(X)
        low = set_precision(model, "bf16")(X)
    assert model.precision == "bf16" and low.dtype == torch.float32
    assert not torch.equal(low, fp32)  # autocast really ran
    assert (low.softmax(1) - fp32.softmax(1)).abs().max() < 0.02


def test_bf16_explanation_is_float32_and_its_maps_follow_fp32():
    model = tiny_model()
    with torch.no_grad():
        fp32 = model.explain(X)
        low = set_precision(model, "bf16").explain(X)
        forward = model(X)
    torch.testing.assert_close(low.logits, forward)
    for a, b in zip(fp32.per_scale, low.per_scale):
        assert b.maps.dtype == b.similarities.dtype == b.features.dtype == torch.float32
        assert torch.corrcoef(torch.stack([a.maps.flatten(), b.maps.flatten()]))[0, 1] > 0.99


def test_torchscript_compiles_the_fp32_path_of_a_bf16_network():
    model = set_precision(tiny_model(), "bf16")
    with torch.no_grad():
        scripted = torch.jit.script(model)(X)
        model.precision = "fp32"
        torch.testing.assert_close(scripted, model(X))


def test_training_ignores_bf16():
    low, full = set_precision(tiny_model(), "bf16").train(), tiny_model().train()
    with torch.no_grad():
        assert torch.equal(low(X), full(X))
