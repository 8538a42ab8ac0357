"""Encoder layout and taps, decoder, fusion blocks and the per-scale prototype head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from scripts.networks import (
    Backbone,
    ConcatFusion,
    Decoder,
    GatedFusion,
    PrototypeHead,
    ResNetEncoder,
    gated_fusion,
    l1_normalise,
    prototype_descriptors,
    soft_mask,
)
from tests.helpers import head_fields


def test_default_encoder_is_resnet152_layout_with_taps_64_256_512():
    encoder = ResNetEncoder().eval()
    assert encoder.channels == (64, 256, 512)
    assert (len(encoder.layer1), len(encoder.layer2)) == (3, 8)
    keys = encoder.state_dict()
    # torchvision names, k×k → k×k×k, stride on the 3×3 conv of the first layer2 block
    assert keys["conv1.weight"].shape == (64, 4, 7, 7, 7)
    assert keys["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1, 1)
    assert "layer1.0.downsample.1.running_var" in keys
    assert keys["layer2.7.conv3.weight"].shape == (512, 128, 1, 1, 1)
    assert encoder.layer2[0].conv2.stride == (2, 2, 2)
    assert not any(isinstance(m, nn.Conv3d) and m.bias is not None for m in encoder.modules())
    with torch.no_grad():
        taps = encoder(torch.randn(1, 4, 16, 16, 16))
    assert [tuple(t.shape) for t in taps] == [(1, 64, 8, 8, 8), (1, 256, 4, 4, 4), (1, 512, 2, 2, 2)]


def test_tiny_encoder_widths_and_strides():
    encoder = ResNetEncoder(layers=(1, 2), width=8)
    assert encoder.channels == (8, 32, 64)
    taps = encoder(torch.randn(2, 4, 32, 32, 24))
    assert [tuple(t.shape) for t in taps] == [(2, 8, 16, 16, 12), (2, 32, 8, 8, 6), (2, 64, 4, 4, 3)]


@pytest.mark.parametrize("layers, width", [((1,), 8), ((1, 0), 8), ((1, 1), 0)])
def test_encoder_rejects_bad_configuration(layers, width):
    with pytest.raises(ValueError):
        ResNetEncoder(layers=layers, width=width)


def test_decoder_has_no_skips_and_matches_odd_tap_sizes():
    encoder = ResNetEncoder(layers=(1, 1), width=8)
    decoder = Decoder(3, encoder.channels).eval()
    taps = encoder(torch.randn(1, 4, 34, 30, 26))
    assert [tuple(t.shape[2:]) for t in taps] == [(17, 15, 13), (9, 8, 7), (5, 4, 4)]
    decoded = decoder(taps)
    assert [tuple(d.shape) for d in decoded] == [(1, 64, 5, 4, 4), (1, 32, 9, 8, 7), (1, 8, 17, 15, 13)]
    # f̃ depends on f3 only: changing the finer taps changes nothing
    other = decoder([torch.randn_like(taps[0]), torch.randn_like(taps[1]), taps[2]])
    for a, b in zip(decoded, other):
        torch.testing.assert_close(a, b)
    assert not decoder.blocks["scale3"].upsample and decoder.blocks["scale2"].upsample
    assert decoder.blocks["scale3"].conv[0].kernel_size == (3, 3, 3)


def test_lite_decoder_convolves_before_it_upsamples_with_the_same_weights():
    torch.manual_seed(0)
    taps = ResNetEncoder(layers=(1, 1), width=8)(torch.randn(1, 4, 34, 30, 26))
    paper, lite = Decoder(3, (8, 32, 64)).eval(), Decoder(3, (8, 32, 64), kind="lite").eval()
    lite.load_state_dict(paper.state_dict())  # the same parameters, key for key
    with torch.no_grad():
        expected = [paper.blocks["scale3"].conv(taps[2])]
        for scale, tap in ((2, taps[1]), (1, taps[0])):
            convolved = paper.blocks[f"scale{scale}"].conv(expected[-1])
            expected.append(torch.nn.functional.interpolate(convolved, size=tap.shape[2:], mode="trilinear"))
        decoded, upsampled_first = lite(taps), paper(taps)
    assert [d.shape for d in decoded] == [d.shape for d in upsampled_first]  # the grids of the paper's decoder
    for got, want in zip(decoded, expected):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(decoded[2], upsampled_first[2])  # a different function from the paper's
    with pytest.raises(ValueError, match="lite"):
        Decoder(3, (8, 32, 64), kind="light")


def test_lite_decoder_cuts_the_forward_arithmetic():
    from torch.utils.flop_counter import FlopCounterMode

    from scripts.networks import UMProtoShare

    flops = {}
    for kind in ("paper", "lite"):
        network = UMProtoShare(encoder_layers=(1, 1), encoder_width=8, embed_dim=16, mapping_dim=12,
                               decoder_kind=kind).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.randn(1, 4, 32, 32, 24))
        flops[kind] = counter.get_total_flops()
    assert flops["lite"] < 0.7 * flops["paper"]


def test_decoder_stops_at_finest_scale():
    decoder = Decoder(3, (8, 32, 64), finest_scale=2)
    assert list(decoder.blocks) == ["scale3", "scale2"]


def test_gated_fusion_gate_in_unit_interval_and_eq11():
    fusion = GatedFusion(3, 32)
    assert fusion.gate_net[0].out_channels == 4 and fusion.gate_net[0].in_channels == 64
    assert GatedFusion(3, 512).gate_net[0].out_channels == 64
    f, f_dec = torch.randn(2, 32, 4, 3, 2), torch.randn(2, 32, 4, 3, 2)
    alpha = fusion.gate(f, f_dec)
    assert alpha.shape == (2, 32, 1, 1, 1)
    assert torch.all(alpha > 0) and torch.all(alpha < 1)
    torch.testing.assert_close(fusion(f, f_dec), gated_fusion(f, f_dec, alpha))


def test_concat_fusion_is_a_bias_free_projection_of_the_concatenation():
    fusion = ConcatFusion(3, 8)
    assert fusion.project.bias is None and fusion.project.weight.shape == (8, 16, 1, 1, 1)
    f, f_dec = torch.randn(1, 8, 2, 2, 2), torch.randn(1, 8, 2, 2, 2)
    w = fusion.project.weight.flatten(1)
    expected = torch.einsum("oc,bcxyz->boxyz", w[:, :8], f) + torch.einsum("oc,bcxyz->boxyz", w[:, 8:], f_dec)
    torch.testing.assert_close(fusion(f, f_dec), expected)


def test_backbone_without_fusion_builds_no_decoder_and_returns_encoder_taps():
    backbone = Backbone(encoder_layers=(1, 1), encoder_width=8, scales=(1, 3), fusion="none").eval()
    assert backbone.decoder is None and len(backbone.fusion) == 0
    x = torch.randn(1, 4, 32, 32, 24)
    taps = backbone.encoder(x)
    fused = backbone(x)
    assert len(fused) == 2
    torch.testing.assert_close(fused[0], taps[0])
    torch.testing.assert_close(fused[1], taps[2])


@pytest.mark.parametrize("scales", [(), (0, 1), (2, 2)])
def test_backbone_rejects_bad_scales(scales):
    with pytest.raises(ValueError, match="scales"):
        Backbone(encoder_layers=(1, 1), encoder_width=8, scales=scales)


def _head(**kwargs) -> PrototypeHead:
    return PrototypeHead(3, in_channels=8, num_prototypes=5, **head_fields(embed_dim=6, mapping_dim=7, **kwargs)).eval()


def test_head_order_sigmoid_then_mask_then_normalise():
    head = _head()
    features = torch.randn(2, 8, 4, 3, 2)
    out = head.run(features)
    hidden = torch.relu(head.mapping.hidden[1](head.mapping.hidden[0](features)))
    raw = torch.sigmoid(head.mapping.out_norm(head.mapping.out_conv(hidden)))
    torch.testing.assert_close(out.hidden, hidden)
    torch.testing.assert_close(out.raw_maps, raw)
    torch.testing.assert_close(out.soft_maps, soft_mask(raw))
    torch.testing.assert_close(out.maps, l1_normalise(soft_mask(raw)))
    assert not torch.allclose(out.maps, soft_mask(l1_normalise(raw)))
    torch.testing.assert_close(out.maps.sum(dim=(2, 3, 4)), torch.ones(2, 5), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.descriptors, prototype_descriptors(out.embeddings, out.maps))
    assert out.descriptors.shape == (2, 5, 6) and out.similarities.shape == (2, 5)
    assert torch.all(out.similarities.abs() <= 1 + 1e-6)


def test_head_rerun_methods_match_the_forward_path():
    head = _head(soft_mask_weight=4.0, soft_mask_threshold=0.3)
    features = torch.randn(1, 8, 3, 3, 3)
    out = head.run(features)
    torch.testing.assert_close(head.soft_maps(features), out.soft_maps)
    torch.testing.assert_close(out.soft_maps, soft_mask(out.raw_maps, weight=4.0, threshold=0.3))
    torch.testing.assert_close(head.mapping_hidden(features), out.hidden)
    torch.testing.assert_close(head(features), out.similarities)
    assert head.mapping.projection_weight.shape == (5, 7)
    torch.testing.assert_close(head.mapping.projection_weight, head.mapping.out_conv.weight[:, :, 0, 0, 0])


def test_head_prototypes_uniform_init_and_addon_activation():
    head = _head(addon_activation="sigmoid")
    assert head.prototypes.shape == (5, 6)
    assert torch.all(head.prototypes >= 0) and torch.all(head.prototypes < 1)
    assert isinstance(head.addon[-1], nn.Sigmoid) and isinstance(_head().addon[-1], nn.ReLU)
    assert torch.all(_head(similarity_clamp=True)(torch.randn(2, 8, 2, 2, 2)) >= 0)
    with pytest.raises(ValueError):
        _head(addon_activation="tanh")
