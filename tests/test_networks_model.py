"""UM-ProtoShare and BackboneCNN: ablation settings, one feature path, TorchScript, groups, warm-up loading."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from scripts.networks import BackboneCNN, ConcatFusion, GatedFusion, UMProtoShare

TINY = {"encoder_layers": (1, 1), "encoder_width": 8, "embed_dim": 16, "mapping_dim": 12}
SHAPE = (1, 4, 32, 32, 24)
TAP_SHAPES = {1: (8, 16, 16, 12), 2: (32, 8, 8, 6), 3: (64, 4, 4, 3)}

# name: (prototype_sharing, prototypes_per_scale, fusion) as in the paper's Table 1 / Appendix E
ABLATIONS = {
    "A1": ("class_specific", (0, 0, 30), "none"),
    "A2": ("shared", (0, 0, 30), "none"),
    "B": ("shared", (10, 10, 10), "none"),
    "C": ("shared", (10, 10, 10), "concat"),
    "D": ("shared", (10, 10, 10), "gated"),
    "E1": ("shared", (15, 9, 6), "gated"),
    "E2": ("shared", (9, 15, 6), "gated"),
    "E3": ("shared", (6, 9, 15), "gated"),
}


def tiny(**kwargs) -> UMProtoShare:
    return UMProtoShare(**{**TINY, **kwargs})


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_settings_build_the_right_model(name):
    sharing, counts, fusion = ABLATIONS[name]
    model = tiny(prototypes_per_scale=counts, fusion=fusion, prototype_sharing=sharing).eval()
    scales = [s for s, k in zip((1, 2, 3), counts) if k]
    assert model.scales == scales
    assert list(model.heads) == [f"scale{s}" for s in scales]
    assert [model.head(s).prototypes.shape for s in scales] == [(counts[s - 1], 16) for s in scales]
    assert model.classifier.weight.shape == (2, 30) and model.classifier.bias is None
    fusion_type = {"none": None, "concat": ConcatFusion, "gated": GatedFusion}[fusion]
    if fusion_type is None:
        assert model.backbone.decoder is None
        assert model.group_parameters("decoder") == [] and model.group_parameters("fusion") == []
        assert not any("decoder" in name for name in model.state_dict())
    else:
        assert all(isinstance(block, fusion_type) for block in model.backbone.fusion.values())
        assert len(model.group_parameters("decoder")) > 0
    assert (model.ownership is not None) == (sharing == "class_specific")
    explanation = model.explain(torch.randn(*SHAPE))
    assert [e.features.shape[1:] for e in explanation.per_scale] == [TAP_SHAPES[s] for s in scales]
    assert explanation.logits.shape == (1, 2) and explanation.similarities.shape == (1, 30)


def test_explanation_shapes_maps_and_gates():
    model = tiny().eval()
    explanation = model.explain(torch.randn(2, 4, 32, 32, 24))
    for entry, s, k in zip(explanation.per_scale, (1, 2, 3), (9, 15, 6)):
        c, *spatial = TAP_SHAPES[s]
        assert entry.scale == s
        assert entry.features.shape == (2, c, *spatial)
        assert entry.gate.shape == (2, c, 1, 1, 1)
        assert torch.all(entry.gate > 0) and torch.all(entry.gate < 1)
        assert entry.hidden.shape == (2, 12, *spatial)
        for maps in (entry.raw_maps, entry.soft_maps, entry.maps):
            assert maps.shape == (2, k, *spatial)
        torch.testing.assert_close(entry.maps.sum(dim=(2, 3, 4)), torch.ones(2, k), atol=1e-5, rtol=0)
        assert entry.embeddings.shape == (2, 16, *spatial)
        assert entry.descriptors.shape == (2, k, 16) and entry.similarities.shape == (2, k)


def test_fused_features_follow_eq11_with_the_matching_decoder_scale():
    model = tiny().eval()
    x = torch.randn(*SHAPE)
    taps, decoded = model.backbone.encode_decode(x)
    explanation = model.explain(x)
    for entry in explanation.per_scale:
        s = entry.scale
        expected = entry.gate * taps[s - 1] + (1 - entry.gate) * decoded[3 - s]
        torch.testing.assert_close(entry.features, expected)
    for fused, entry in zip(model.fused_features(x), explanation.per_scale):
        torch.testing.assert_close(fused, entry.features)


def test_forward_is_classifier_of_explained_similarities():
    model = tiny(num_classes=3, prototypes_per_scale=(6, 9, 3)).eval()
    x = torch.randn(2, 4, 32, 32, 24)
    explanation = model.explain(x)
    torch.testing.assert_close(explanation.similarities, torch.cat([e.similarities for e in explanation.per_scale], 1))
    logits = model(x)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, model.classifier(explanation.similarities))
    torch.testing.assert_close(logits, explanation.similarities @ model.classifier.weight.T)


def test_prototype_columns_table_and_column_slices():
    model = tiny(prototypes_per_scale=(9, 15, 6)).eval()
    expected = [(1, k) for k in range(9)] + [(2, k) for k in range(15)] + [(3, k) for k in range(6)]
    assert model.prototype_columns == expected
    assert model.columns(1) == slice(0, 9) and model.columns(2) == slice(9, 24) and model.columns(3) == slice(24, 30)
    single = tiny(prototypes_per_scale=(0, 0, 30))
    assert single.columns(3) == slice(0, 30) and single.prototype_columns[-1] == (3, 29)
    with pytest.raises(ValueError, match="scale 1"):
        single.columns(1)
    explanation = model.explain(torch.randn(*SHAPE))
    for entry in explanation.per_scale:
        torch.testing.assert_close(explanation.similarities[:, model.columns(entry.scale)], entry.similarities)


def test_class_specific_ownership_and_initial_weights_for_three_classes():
    model = tiny(num_classes=3, prototypes_per_scale=(6, 9, 3), prototype_sharing="class_specific")
    owners = [0, 0, 1, 1, 2, 2] + [0, 0, 0, 1, 1, 1, 2, 2, 2] + [0, 1, 2]
    expected_ownership = torch.zeros(18, 3)
    expected_ownership[torch.arange(18), torch.tensor(owners)] = 1
    torch.testing.assert_close(model.ownership, expected_ownership)
    expected_weight = torch.full((3, 18), -0.5)
    expected_weight[torch.tensor(owners), torch.arange(18)] = 1.0
    torch.testing.assert_close(model.classifier.weight.detach(), expected_weight)
    assert "ownership" not in model.state_dict()
    with pytest.raises(ValueError, match="scale 1 has K_s=10"):
        tiny(num_classes=3, prototypes_per_scale=(10, 10, 10), prototype_sharing="class_specific")


def test_shared_prototypes_use_default_linear_init():
    model = tiny()
    weight = model.classifier.weight.detach()
    bound = 1 / 30**0.5
    assert torch.all(weight.abs() <= bound) and weight.std() > 0
    assert model.ownership is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prototypes_per_scale": (0, 0, 0)},
        {"prototypes_per_scale": (10, 20)},
        {"prototypes_per_scale": (-1, 16, 15)},
        {"num_classes": 1},
        {"fusion": "attention"},
        {"prototype_sharing": "soft"},
    ],
)
def test_bad_model_configuration_raises(kwargs):
    with pytest.raises(ValueError):
        tiny(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prototypes_per_scale": (0, 0, 30), "fusion": "none", "prototype_sharing": "class_specific"},
        {"map_support": "brain", "map_support_margin": 3, "map_support_cells": "majority"},
    ],
)
def test_torchscript_logits_equal_python(kwargs):
    model = tiny(**kwargs).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, 4, 32, 32, 24)
    x[:, :, :4] = -3.0  # a background slab: the brain support has a border
    torch.testing.assert_close(scripted(x), model(x))


def test_monai_ckpt_export_round_trip(tmp_path):
    from monai.bundle import ckpt_export

    arguments = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    config = {"network_def": {"_target_": "scripts.networks.UMProtoShare", **arguments}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "metadata.json").write_text(json.dumps({"version": "0.0.1"}))
    model = tiny()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(tmp_path / "metadata.json"),
        config_file=str(tmp_path / "config.json"),
    )
    exported = torch.jit.load(str(tmp_path / "model.ts")).eval()
    x = torch.randn(*SHAPE)
    torch.testing.assert_close(exported(x), model.eval()(x))


def test_parameter_groups_partition_the_parameters():
    model = tiny()
    groups = ("encoder", "decoder", "fusion", "addon", "mapping", "prototypes", "classifier")
    ids = [id(p) for group in groups for p in model.group_parameters(group)]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.group_parameters("prototypes")} == {id(h.prototypes) for h in model.heads.values()}
    assert [id(p) for p in model.group_parameters("classifier")] == [id(model.classifier.weight)]
    with pytest.raises(ValueError):
        model.group_parameters("gates")


def _running_means(module: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_frozen_groups_stay_in_eval_mode_under_train():
    model = tiny()
    model.set_trainable(["encoder", "fusion", "addon", "mapping", "prototypes"])  # stage 1: decoder frozen
    model.train()
    assert not model.backbone.decoder.training and all(not m.training for m in model.backbone.decoder.modules())
    assert model.backbone.encoder.training and model.heads["scale1"].addon.training
    assert not any(p.requires_grad for p in model.group_parameters("decoder") + model.group_parameters("classifier"))
    assert all(p.requires_grad for p in model.group_parameters("encoder") + model.group_parameters("prototypes"))
    decoder_before, encoder_before = _running_means(model.backbone.decoder), _running_means(model.backbone.encoder)
    model(torch.randn(2, 4, 32, 32, 24))
    for before, after in zip(decoder_before, _running_means(model.backbone.decoder)):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert any(not torch.equal(b, a) for b, a in zip(encoder_before, _running_means(model.backbone.encoder)))

    model.set_trainable(["classifier"])  # stage 3
    model.train()
    assert all(not m.training for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    everything_before = _running_means(model)
    model(torch.randn(2, 4, 32, 32, 24))
    for before, after in zip(everything_before, _running_means(model)):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    model.set_trainable(["encoder", "decoder", "fusion", "addon", "mapping", "prototypes", "classifier"])
    assert all(m.training for m in model.modules())


def _trained_cnn(**kwargs) -> BackboneCNN:
    """A tiny CNN whose batch-norm statistics have moved away from their initial values."""
    cnn = BackboneCNN(**{**{k: v for k, v in TINY.items() if k != "mapping_dim"}, **kwargs}).train()
    with torch.no_grad():
        for _ in range(2):
            cnn(torch.randn(2, 4, 32, 32, 24) * 2 + 1)
    return cnn.eval()


def test_backbone_cnn_state_dict_initialises_umprotoshare_backbone():
    cnn = _trained_cnn(scales=(1, 2, 3), fusion="gated")
    model = tiny(prototypes_per_scale=(9, 15, 6), fusion="gated").eval()
    unused = model.load_backbone(cnn.state_dict())
    assert sorted(unused) == ["classifier.bias", "classifier.weight"]
    x = torch.randn(*SHAPE)
    for ours, theirs in zip(model.fused_features(x), cnn.backbone(x)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    explanation = model.explain(x)
    for entry, embedding in zip(explanation.per_scale, cnn.embeddings(x)):
        torch.testing.assert_close(entry.embeddings, embedding, rtol=0, atol=0)


def test_load_backbone_reports_missing_keys():
    cnn = _trained_cnn(scales=(3,), fusion="gated")
    model = tiny(prototypes_per_scale=(9, 15, 6))
    with pytest.raises(ValueError, match=r"missing keys .*heads\.scale1\.addon"):
        model.load_backbone(cnn.state_dict())
    wider = tiny(encoder_width=16)
    with pytest.raises(ValueError, match="shape mismatches"):
        wider.load_backbone(_trained_cnn().state_dict())


def test_encoder_only_cnn_loads_into_single_scale_model():
    cnn = _trained_cnn(scales=(3,), fusion="none")
    assert cnn.backbone.decoder is None and cnn.classifier.in_features == 16
    model = tiny(prototypes_per_scale=(0, 0, 30), fusion="none", prototype_sharing="class_specific").eval()
    assert model.load_backbone(cnn.state_dict()) == ["classifier.weight", "classifier.bias"]
    x = torch.randn(*SHAPE)
    torch.testing.assert_close(model.explain(x).per_scale[0].embeddings, cnn.embeddings(x)[0], rtol=0, atol=0)


def test_backbone_cnn_forward_scripted_and_three_classes():
    cnn = BackboneCNN(num_classes=3, encoder_layers=(1, 1), encoder_width=8, embed_dim=16, scales=(2, 3)).eval()
    x = torch.randn(2, 4, 32, 32, 24)
    logits = cnn(x)
    assert logits.shape == (2, 3) and cnn.classifier.in_features == 32
    embeddings = cnn.embeddings(x)
    pooled = torch.cat([g.mean(dim=(2, 3, 4)) for g in embeddings], dim=1)
    torch.testing.assert_close(logits, cnn.classifier(pooled))
    torch.testing.assert_close(torch.jit.script(cnn)(x), logits)
    assert cnn.group_parameters("prototypes") == [] and len(cnn.group_parameters("addon")) > 0


def test_two_dimensional_variant_runs():
    model = tiny(spatial_dims=2).eval()
    x = torch.randn(2, 4, 32, 24)
    explanation = model.explain(x)
    assert [e.features.shape[2:] for e in explanation.per_scale] == [(16, 12), (8, 6), (4, 3)]
    torch.testing.assert_close(model(x), explanation.logits)


def test_balanced_classifier_start_deals_each_scales_prototypes_to_the_classes_in_turn():
    from scripts.prototypes import soft_class_coefficients

    model = UMProtoShare(encoder_layers=(1, 1), encoder_width=4, embed_dim=8, mapping_dim=8,
                         prototypes_per_scale=(3, 2, 0), num_classes=2, classifier_init="balanced")
    # scale 1: k = 0, 1, 2 -> classes 0, 1, 0; scale 2: k = 0, 1 -> classes 0, 1; +1 own, -0.5 other
    expected = torch.tensor([[1.0, -0.5, 1.0, 1.0, -0.5], [-0.5, 1.0, -0.5, -0.5, 1.0]])
    torch.testing.assert_close(model.classifier.weight.detach(), expected)
    assert soft_class_coefficients(model.classifier.weight).amax(dim=0).min() > 0.99  # zeta starts one-hot
    with pytest.raises(ValueError):
        UMProtoShare(encoder_layers=(1, 1), encoder_width=4, embed_dim=8, mapping_dim=8, classifier_init="random")


def test_map_init_coverage_starts_each_map_on_that_share_of_the_voxels():
    # BN output ~ N(beta, 1) over a batch's voxels in train mode; beta = Phi^-1(0.05) = -1.6449 puts
    # sigma(z) above 0.5 (the soft mask's centre) on about 5 % of them.
    torch.manual_seed(0)
    model = UMProtoShare(encoder_layers=(1, 1), encoder_width=4, embed_dim=8, mapping_dim=8, map_init_coverage=0.05)
    bias = model.heads["scale1"].mapping.out_norm.bias.detach()
    torch.testing.assert_close(bias, torch.full_like(bias, -1.6449), atol=1e-4, rtol=0)
    explanation = model.train().explain(torch.randn(4, 4, 32, 32, 24))
    for entry in explanation.per_scale:
        assert 0.03 < float((entry.soft_maps > 0.5).float().mean()) < 0.07
    with pytest.raises(ValueError, match="init_coverage"):
        UMProtoShare(encoder_layers=(1, 1), encoder_width=4, embed_dim=8, mapping_dim=8, map_init_coverage=1.5)
