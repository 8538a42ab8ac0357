"""Inference precision: bf16 autocast in eval mode (float32 out, close to fp32), never in training or TorchScript."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.networks import (
    BackboneCNN,
    UMProtoShare,
    checked_recheck_margin,
    rerun_rows,
    resolve_precision,
    set_precision,
)

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


def tiny_network(kind: str) -> UMProtoShare | BackboneCNN:
    """The tiny UM-ProtoShare or a same-sized CNN, seeded, in eval mode."""
    if kind == "umprotoshare":
        return tiny_model()
    torch.manual_seed(0)
    return BackboneCNN(**TINY).eval()


@pytest.mark.parametrize("network", ["umprotoshare", "cnn"])
def test_bf16_forward_is_float32_close_to_fp32_and_not_identical(network):
    model = tiny_network(network)
    with torch.no_grad():
        fp32 = model(X)
        low = set_precision(model, "bf16", recheck_margin=0)(X)  # bf16 alone
    assert model.precision == "bf16" and low.dtype == torch.float32
    assert not torch.equal(low, fp32)  # autocast really ran
    assert (low.softmax(1) - fp32.softmax(1)).abs().max() < 0.02


def test_bf16_explanation_is_float32_and_its_maps_follow_fp32():
    model = tiny_model()
    with torch.no_grad():
        fp32 = model.explain(X)
        low = set_precision(model, "bf16", recheck_margin=0).explain(X)
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


def _margins(logits: torch.Tensor) -> torch.Tensor:
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@pytest.mark.parametrize("network", ["umprotoshare", "cnn"])
def test_bf16_runs_the_close_cases_again_in_fp32(network):
    model = tiny_network(network)
    x = torch.cat([X, X.flip(2)])  # four cases
    with torch.no_grad():
        fp32 = model(x)
        alone = set_precision(model, "bf16", recheck_margin=0)(x)
        assert model.rechecked == []
        margins = _margins(alone)
        order = margins.argsort()
        cut = float(margins[order[1:3]].mean())  # the two closest cases fall under it, the others not
        model.bf16_recheck_margin = cut
        checked = model(x)
        rechecked = list(model.rechecked)
        close = order[:2]
        again = model.logits(x[close])  # what fp32 gives for those cases alone
        model.bf16_recheck_margin = float("inf")
        every = model(x)
    far = order[2:]
    assert torch.equal(checked[close], again) and torch.equal(checked[far], alone[far])
    assert sorted(rechecked) == sorted(close.tolist()) and model.rechecked == [0, 1, 2, 3]
    assert not torch.equal(alone[close], again)  # bf16 alone really differed there
    assert torch.equal(every, fp32)  # every case run again: fp32's logits exactly


def test_a_rechecked_explanation_is_fp32_for_the_close_cases_and_bf16_for_the_others():
    model = tiny_model()
    with torch.no_grad():
        alone = set_precision(model, "bf16", recheck_margin=0).explain(X)
        margins = _margins(alone.logits)
        close, far = int(margins.argmin()), int(margins.argmax())
        model.bf16_recheck_margin = float(margins.mean())
        checked = model.explain(X)
        model.precision = "fp32"
        again = model.explain(X[[close]])
    torch.testing.assert_close(checked.logits, model(X).where(torch.arange(2)[:, None] == close, alone.logits),
                               rtol=0, atol=1e-5)
    for mixed, low, full in zip(checked.per_scale, alone.per_scale, again.per_scale):
        assert torch.equal(mixed.maps[close], full.maps[0]) and torch.equal(mixed.maps[far], low.maps[far])
        assert mixed.maps.shape == low.maps.shape and mixed.scale == low.scale


def test_no_recheck_under_gradients():
    model = set_precision(tiny_model(), "bf16", recheck_margin=float("inf"))
    with torch.no_grad():
        alone = set_precision(tiny_model(), "bf16", recheck_margin=0)(X)
    assert torch.equal(model(X).detach(), alone)  # a gradient-based explanation sees one forward pass


def test_rerun_rows_replaces_per_case_rows_in_nested_outputs():
    from typing import NamedTuple

    class Out(NamedTuple):
        logits: torch.Tensor
        weights: torch.Tensor
        scale: int
        maps: list

    first = Out(torch.zeros(3, 2), torch.zeros(5, 2), 1, [torch.zeros(3, 4, 4)])
    rerun = Out(torch.ones(2, 2), torch.full((5, 2), 2.0), 1, [torch.ones(2, 4, 4)])
    rows = torch.tensor([0, 2])
    spliced = rerun_rows(first, rerun, rows, batch=3)
    assert spliced.logits[:, 0].tolist() == [1.0, 0.0, 1.0] and spliced.maps[0][:, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert torch.equal(spliced.weights, rerun.weights) and spliced.scale == 1  # not per case: the rerun's
    assert first.logits.abs().sum() == 0  # the first output is not modified in place
    with pytest.raises(ValueError, match=r"\(3, 2\) output by a \(1, 2\)"):
        rerun_rows(first.logits, torch.ones(1, 2), rows, batch=3)


def test_negative_recheck_margin_is_refused():
    with pytest.raises(ValueError, match=r"recheck margin must be >= 0, got -1"):
        set_precision(tiny_model(), "bf16", recheck_margin=-1)
    with pytest.raises(ValueError, match=r"recheck margin must be >= 0, got -0.5"):
        checked_recheck_margin(-0.5)  # the evaluator's check too
    assert checked_recheck_margin(0) == 0.0 and checked_recheck_margin(math.inf) == math.inf
