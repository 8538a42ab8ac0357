"""Parts of the baselines (SPEC §8), each against hand-computed values: map activations, ProtoPNet's voxel
similarity, quadruplet attention, MAProtoNet's fusion and multi-scale mapping loss, encoder options."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scripts.losses import Stage1Loss, mapping_loss, multiscale_mapping_loss
from scripts.networks import (
    Backbone,
    Bottleneck,
    PrototypeHead,
    QuadrupletAttention,
    ResNetEncoder,
    StemPoolConcat,
    UMProtoShare,
    best_voxel_features,
    inflate_resnet_state_dict,
    load_imagenet_weights,
    minmax_soft_mask,
    topk_mean_similarity,
    voxel_similarity_maps,
)
from scripts.networks.attention import AxisGate
from scripts.prototypes import ScaleTerms
from tests.helpers import head_fields, tiny_baseline
from tests.test_inflate import ResNet2d

BN = 1 / math.sqrt(1 + 1e-5)
"""An eval-mode batch norm at initialisation multiplies by this."""


def sigmoid(value: float) -> float:
    return 1 / (1 + math.exp(-value))


def test_minmax_soft_mask_hand_value_per_sample():
    # sample 0: z = [0, 2, 4, 1] → min 0, max 4 → [0, .5, 1, .25]
    #   → σ(10 (· − .5)) = σ(−5), σ(0), σ(5), σ(−2.5)
    # sample 1 is constant: z − min = 0 everywhere, the range floor keeps it finite → σ(−5)
    z = torch.tensor([[[[[0.0, 2.0]]], [[[4.0, 1.0]]]], [[[[3.0, 3.0]]], [[[3.0, 3.0]]]]])
    expected = torch.tensor([[sigmoid(-5), sigmoid(0), sigmoid(5), sigmoid(-2.5)], [sigmoid(-5)] * 4])
    torch.testing.assert_close(minmax_soft_mask(z).reshape(2, 4), expected)


def test_protopnet_voxel_similarity_top1_percent_and_best_voxel_hand_values():
    # voxels g = (1, 0), (0, 1), (1, 1); prototypes (2, 0) and (−1, 0)
    # cos: p0 → 1, 0, 1/√2; p1 → −1, 0, −1/√2; 1 − ReLU(1 − cos) = cos for every cos ≤ 1
    g = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).reshape(1, 2, 1, 1, 3)
    p = torch.tensor([[2.0, 0.0], [-1.0, 0.0]])
    maps = voxel_similarity_maps(g, p)
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(maps.reshape(2, 3), torch.tensor([[1.0, 0.0, r], [-1.0, 0.0, -r]]))
    # 3 voxels → k = max(⌊3/100⌋, 1) = 1: the best voxel
    torch.testing.assert_close(topk_mean_similarity(maps), torch.tensor([[1.0, 0.0]]))
    features, best = best_voxel_features(g, maps)
    torch.testing.assert_close(features, torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    torch.testing.assert_close(best, torch.tensor([[1.0, 0.0]]))
    # 250 voxels valued 0, 1/250, …, 249/250 → k = 2: (249 + 248) / 2 / 250
    ramp = (torch.arange(250.0) / 250).reshape(1, 1, 10, 25)
    torch.testing.assert_close(topk_mean_similarity(ramp), torch.tensor([[248.5 / 250]]))


def test_axis_gate_hand_value():
    # x = [1, 3] along dim 1 at one voxel; only the 'max' input of the 7³ conv's centre tap is 1:
    # conv(max, mean) = 3 → eval BN → 3·BN → gate σ(3·BN) multiplies x
    gate = AxisGate(3).eval()
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.weight[0, 0, 3, 3, 3] = 1.0
    x = torch.tensor([1.0, 3.0]).reshape(1, 2, 1, 1, 1)
    torch.testing.assert_close(gate(x), x * sigmoid(3 * BN))


@pytest.mark.parametrize("branch", [1, 2, 3])
def test_quadruplet_branch_gates_are_constant_along_their_pooled_axis(branch):
    attention = QuadrupletAttention(3).eval()
    assert [g.norm.weight.item() for g in attention.gates] == [0.0, 1.0, 1.0, 1.0]  # C-pooling branch at 0
    with torch.no_grad():
        for i, gate in enumerate(attention.gates):
            if i != branch:
                gate.conv.weight.zero_()  # gate σ(0) = 0.5
    x = torch.rand(2, 3, 4, 5, 6) + 0.5
    # out = (3 · 0.5 x + g x) / 4, so g = (4 out − 1.5 x) / x; branch b pools axis b + 1 of (B, C, H, W, D)
    g = (4 * attention(x) - 1.5 * x) / x
    axis = branch + 1
    torch.testing.assert_close(g, g.narrow(axis, 0, 1).expand_as(g))
    others = [a for a in range(1, 5) if a != axis]
    assert all(not torch.allclose(g, g.narrow(a, 0, 1).expand_as(g)) for a in others)


def test_quadruplet_attention_sits_on_bn3_before_the_residual_add():
    block = Bottleneck(3, 8, 4, attention="quadruplet").eval()  # 16 outputs: a 1³ shortcut
    with torch.no_grad():
        for gate in block.attention.gates:
            gate.conv.weight.zero_()  # every gate 0.5 → attention(y) = y / 2
    x = torch.randn(1, 8, 4, 4, 4)
    y = block.bn3(block.conv3(block.relu(block.bn2(block.conv2(block.relu(block.bn1(block.conv1(x))))))))
    torch.testing.assert_close(block(x), torch.relu(0.5 * y + block.downsample(x)))
    assert Bottleneck(3, 8, 4).attention is None


def test_stem_pool_concat_hand_values_and_grid_reconciliation():
    # stem ≡ 1 on 4³: average over the 3³ window at corner (0, 0, 0) counts the zero padding: 8/27; max 1
    fusion = StemPoolConcat(3)
    stem, layer1 = torch.ones(1, 1, 4, 4, 4), torch.full((1, 2, 2, 2, 2), 5.0)
    fused = fusion(stem, layer1)
    assert fused.shape == (1, 4, 2, 2, 2)
    torch.testing.assert_close(fused[0, :, 0, 0, 0], torch.tensor([8 / 27, 1.0, 5.0, 5.0]))
    torch.testing.assert_close(fused[0, 0, 1, 1, 1], torch.tensor(1.0))  # window 1..3 lies inside: 27/27
    # after a resize, a 9-voxel stem pools to 5 voxels but layer1 has 4: the pooled stem is resized to 4
    odd = fusion(torch.ones(1, 1, 9, 8, 8), torch.zeros(1, 2, 4, 4, 4))
    assert odd.shape == (1, 4, 4, 4, 4)


def test_multiscale_mapping_loss_hand_value():
    # r = 0.5 on 2³ → 1³; with align_corners=True the single output voxel samples voxel (0, 0, 0).
    # A(a) = 0, A(b) = 2; refuse = a + 3 b = 6; map = f / 10 = 0.6; A(M) = 0.9
    # consistency |0.9 − 0.6| = 0.3; size term mean|M| = (0.9 + 7 · 0.5) / 8 = 0.55; total 0.85
    a = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    b = torch.full((1, 1, 2, 2, 2), 2.0)
    maps = torch.full((1, 1, 2, 2, 2), 0.5)
    maps[0, 0, 0, 0, 0] = 0.9
    loss = multiscale_mapping_loss([a, b], maps, lambda xs: xs[0] + 3 * xs[1], lambda f: f / 10, 0.5)
    assert loss.item() == pytest.approx(0.85)
    # one input and an identity fusion: the single-scale loss
    features, soft = torch.randn(1, 3, 4, 4, 4), torch.rand(1, 2, 4, 4, 4)
    conv = nn.Conv3d(3, 2, 1)
    single = multiscale_mapping_loss([features], soft, lambda xs: xs[0], conv, 0.75)
    torch.testing.assert_close(single, mapping_loss(features, soft, conv, 0.75))


def _terms(**kwargs) -> ScaleTerms:
    a = torch.arange(8.0).reshape(1, 1, 2, 2, 2)
    maps = torch.full((1, 1, 2, 2, 2), 0.5)
    maps[0, 0, 0, 0, 0] = 0.9
    base = {
        "features": a,
        "hidden": torch.rand(1, 3, 2, 2, 2),
        "w2": torch.rand(1, 3, 1, 1, 1),
        "soft_maps": maps,
        "similarities": torch.tensor([[0.4]]),
        "prototypes": torch.rand(1, 4),
        "map_fn": lambda f: f / 10,
        "columns": slice(0, 1),
        "fusion_inputs": [a, torch.full((1, 1, 2, 2, 2), 2.0)],
        "refuse_fn": lambda xs: xs[0] + 3 * xs[1],
    }
    return ScaleTerms(**{**base, **kwargs})


def test_stage1_loss_multi_scale_flag_and_missing_inputs():
    only_map = {"cls_weight": 0, "clst_weight": 0, "sep_weight": 0, "div_weight": 0, "use_oc": False}
    loss_function = Stage1Loss(map_weight=1.0, map_ratios=(0.5,), mapping_loss_kind="multi_scale", **only_map)
    total, terms = loss_function([_terms()], torch.zeros(1, 2), torch.tensor([1]), torch.ones(2, 1))
    assert total.item() == pytest.approx(0.85) and terms["map"].item() == pytest.approx(0.85)
    # the default single-scale loss resizes F itself: |0.9 − A(a)/10| + 0.55 = 0.9 + 0.55 (A(a) = a[0, 0, 0] = 0)
    single = Stage1Loss(map_weight=1.0, map_ratios=(0.5,), **only_map)
    assert single([_terms()], torch.zeros(1, 2), torch.tensor([1]), torch.ones(2, 1))[0].item() == pytest.approx(1.45)
    with pytest.raises(ValueError, match="fusion_inputs and refuse_fn"):
        loss_function([_terms(fusion_inputs=None)], torch.zeros(1, 2), torch.tensor([1]), torch.ones(2, 1))
    with pytest.raises(ValueError, match="use_map off"):
        single([_terms(soft_maps=None, map_fn=None)], torch.zeros(1, 2), torch.tensor([1]), torch.ones(2, 1))
    with pytest.raises(ValueError, match="use_oc off"):
        Stage1Loss()([_terms(hidden=None, w2=None)], torch.zeros(1, 2), torch.tensor([1]), torch.ones(2, 1))
    with pytest.raises(ValueError, match="single_scale"):
        Stage1Loss(mapping_loss_kind="multiscale")


def _head(**kwargs) -> PrototypeHead:
    torch.manual_seed(0)
    return PrototypeHead(3, in_channels=8, num_prototypes=5, **head_fields(embed_dim=6, mapping_dim=7, **kwargs)).eval()


@pytest.mark.parametrize("activation", ["sigmoid", "minmax_soft_mask"])
def test_baseline_map_activations_and_occurrence_weighted_descriptors(activation):
    head = _head(map_activation=activation, addon_activation="sigmoid")
    features = torch.randn(2, 8, 4, 3, 2)
    out = head.run(features)
    mapping = head.mapping
    z = mapping.out_norm(mapping.out_conv(torch.relu(mapping.hidden[1](mapping.hidden[0](features)))))
    if activation == "sigmoid":  # XProtoNet: occurrence map σ(z), no soft mask, no ℓ1 normalisation
        expected_maps = torch.sigmoid(z)
        torch.testing.assert_close(out.raw_maps, expected_maps)
    else:  # MProtoNet: ReLU(z), min-max per sample, σ(10 (· − 0.5))
        torch.testing.assert_close(out.raw_maps, torch.relu(z))
        expected_maps = minmax_soft_mask(torch.relu(z))
    torch.testing.assert_close(out.soft_maps, expected_maps)
    torch.testing.assert_close(out.maps, expected_maps)
    torch.testing.assert_close(head.soft_maps(features), expected_maps)  # the L_map re-run
    g = out.embeddings.flatten(2)
    descriptors = torch.einsum("bkn,ben->bke", expected_maps.flatten(2), g) / g.shape[-1]
    torch.testing.assert_close(out.descriptors, descriptors)
    torch.testing.assert_close(out.similarities, F.cosine_similarity(descriptors, head.prototypes[None], dim=-1))
    assert out.push_similarities is out.similarities


def test_protopnet_head_has_no_mapping_module():
    head = _head(similarity_kind="voxel_topk", addon_activation="sigmoid", similarity_clamp=True)
    assert head.mapping is None and not any("mapping" in name for name, _ in head.named_parameters())
    out = head.run(torch.randn(2, 8, 4, 3, 2))
    assert out.hidden is None and out.raw_maps is None and out.soft_maps is None
    torch.testing.assert_close(out.maps, voxel_similarity_maps(out.embeddings, head.prototypes))
    torch.testing.assert_close(out.similarities, topk_mean_similarity(out.maps).clamp_min(0))
    with pytest.raises(ValueError, match="no mapping module"):
        head.soft_maps(torch.randn(1, 8, 2, 2, 2))
    model = tiny_baseline("protopnet")
    assert model.group_parameters("mapping") == []


def test_maprotonet_addon_reads_layer1_and_refuse_recomputes_features():
    model = tiny_baseline("maprotonet").eval()
    assert model.scales == [2] and model.backbone.encoder.layer2 is None
    assert model.backbone.out_channels == [2 * 8 + 32]
    head = model.head(2)
    assert head.addon[0].in_channels == 32 and head.mapping.hidden[0].in_channels == 48
    x = torch.randn(1, 4, 32, 32, 24)
    with torch.no_grad():
        entry = model.explain(x).per_scale[0]
        stem, layer1 = model.backbone.encoder(x)
        torch.testing.assert_close(entry.features[:, 48 - 32 :], layer1)
        torch.testing.assert_close(entry.fusion_inputs[0], stem)
        torch.testing.assert_close(model.refuse(2, entry.fusion_inputs), entry.features)
        # the add-on never sees the pooled stem channels
        changed = entry.features.clone()
        changed[:, :16] = torch.randn_like(changed[:, :16])
        torch.testing.assert_close(head.run(changed).embeddings, entry.embeddings)
    with pytest.raises(ValueError, match="scale 3"):
        model.refuse(3, entry.fusion_inputs)


def test_truncated_encoder_with_attention_inflates_only_torchvision_keys(tmp_path):
    net2d = ResNet2d(layers=(1, 1))
    torch.save(net2d.state_dict(), tmp_path / "resnet.pth")
    torch.manual_seed(0)
    encoder = ResNetEncoder(layers=(1,), width=8, last_layer="layer1", attention="quadruplet")
    attention_before = {k: v.clone() for k, v in encoder.state_dict().items() if ".attention." in k}
    assert attention_before and not any(k.startswith("layer2.") for k in encoder.state_dict())
    load_imagenet_weights(encoder, tmp_path / "resnet.pth")
    expected = inflate_resnet_state_dict(net2d.state_dict())
    for key, value in encoder.state_dict().items():
        reference = attention_before[key] if key in attention_before else expected[key]
        torch.testing.assert_close(value, reference, rtol=0, atol=0)
    # a block-count mismatch within the kept stage is still an error
    torch.save(ResNet2d(layers=(2, 1)).state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(ValueError, match=re.escape("file key 'layer1.1.")):
        load_imagenet_weights(ResNetEncoder(layers=(1,), width=8, last_layer="layer1"), tmp_path / "deeper.pth")
    model = tiny_baseline("maprotonet", pretrained_path=str(tmp_path / "resnet.pth"))
    torch.testing.assert_close(model.backbone.encoder.conv1.weight, expected["conv1.weight"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ResNetEncoder(layers=(1, 1), width=8, last_layer="layer1"),
        lambda: ResNetEncoder(layers=(1,), width=8, last_layer="layer3"),
        lambda: ResNetEncoder(layers=(1, 1), width=8, attention="triplet"),
        lambda: Backbone(encoder_layers=(1,), scales=(3,), fusion="none", encoder_last_layer="layer1"),
        lambda: Backbone(encoder_layers=(1,), scales=(2,), fusion="gated", encoder_last_layer="layer1"),
        lambda: Backbone(encoder_layers=(1, 1), scales=(3,), fusion="none", feature_fusion="stem_pool_concat"),
        lambda: Backbone(encoder_layers=(1, 1), scales=(2,), fusion="gated", feature_fusion="stem_pool_concat"),
        lambda: Backbone(encoder_layers=(1, 1), feature_fusion="pyramid"),
        lambda: _head(map_activation="softmax"),
        lambda: _head(similarity_kind="l2"),
        lambda: _head(addon_channels=9),
        lambda: UMProtoShare(encoder_layers=(1, 1), encoder_width=8, similarity_kind="voxel"),
    ],
)
def test_bad_baseline_options_raise(build):
    with pytest.raises(ValueError):
        build()
