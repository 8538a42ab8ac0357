"""Class attention maps (SPEC §6, Appendix F.2): Grad-CAM and Occlusion find a constructed model's evidence,
Occlusion matches a brute-force window search, prototype maps follow Eq. 26 and Eq. 27–28."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scripts.explain.attribution import class_map, grad_cam_layers, grad_cam_map, occlusion_map
from scripts.networks import BackboneCNN, UMProtoShare

CUBE = (slice(6, 16), slice(4, 14), slice(10, 20))
"""The bright cube of channel 0 in a 24³ volume: the only evidence of the constructed CNN."""


def evidence_cnn() -> BackboneCNN:
    """Two-scale encoder-only CNN whose class-1 logit is the mean brightness of channel 0 seen through box filters.

    Every convolution is zero except: the stem averages input channel 0 (7³ box), each first-block
    shortcut averages its input channels (the residual branches give 0), each add-on convolution
    averages its input channels; batch norms keep their identity initialisation (eval mode). So every
    feature is a non-negative blur of channel 0, and logit_1 = −logit_0 = sum over scales of its mean.
    """
    cnn = BackboneCNN(encoder_layers=(1, 1), encoder_width=4, embed_dim=4, scales=(2, 3), fusion="none").eval()
    with torch.no_grad():
        for module in cnn.modules():
            if isinstance(module, nn.Conv3d):
                module.weight.zero_()
        cnn.backbone.encoder.conv1.weight[:, 0] = 1 / 343
        for layer in (cnn.backbone.encoder.layer1, cnn.backbone.encoder.layer2):
            shortcut = layer[0].downsample[0]
            shortcut.weight.fill_(1 / shortcut.in_channels)
        for head in cnn.heads.values():
            for conv in (head.addon[0], head.addon[3]):
                conv.weight.fill_(1 / conv.in_channels)
        cnn.classifier.weight.copy_(torch.tensor([[-1.0] * 8, [1.0] * 8]))
        cnn.classifier.bias.zero_()
    return cnn


def evidence_image() -> torch.Tensor:
    image = torch.zeros(1, 4, 24, 24, 24)
    image[(0, 0, *CUBE)] = 1.0
    return image


def in_cube(index: tuple[int, ...]) -> bool:
    return all(part.start <= i < part.stop for i, part in zip(index, CUBE))


def argmax_voxel(volume: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in torch.unravel_index(volume.argmax(), volume.shape))


def test_grad_cam_maximum_lies_in_the_evidence():
    cnn = evidence_cnn()
    image = evidence_image()
    assert cnn(image)[0, 1] > 0
    maps = class_map(cnn, torch.cat([image, image]), [1, 0])
    assert maps.shape == (2, 24, 24, 24)
    assert in_cube(argmax_voxel(maps[0]))
    # the map of class 0, whose logit the cube lowers, is empty after Grad-CAM's ReLU (so the target is used)
    assert torch.count_nonzero(maps[1]) == 0
    # each scale's map is scaled to [0, 1] before the mean over the two scales
    assert 0.5 < float(maps[0].max()) <= 1.0 and float(maps[0].min()) >= 0.0


def test_grad_cam_leaves_the_model_untouched():
    cnn = evidence_cnn()
    layers = grad_cam_layers(cnn)
    assert layers == ["heads.scale2.addon.5", "heads.scale3.addon.5"]
    state = {k: v.clone() for k, v in cnn.state_dict().items()}
    cnn.train()
    grad_cam_map(cnn, evidence_image(), [1], layers)
    assert cnn.training
    assert all(not m._forward_hooks and not m._backward_hooks for m in cnn.modules())
    assert all(p.grad is None for p in cnn.parameters())
    assert all(torch.equal(v, cnn.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="heads.scale1"):
        grad_cam_map(cnn, evidence_image(), [1], ["heads.scale1.addon.5"])


def test_occlusion_maximum_lies_in_the_evidence():
    cnn = evidence_cnn()
    maps = class_map(cnn, evidence_image(), [1], method="occlusion")
    assert maps.shape == (1, 24, 24, 24) and type(maps) is torch.Tensor
    assert in_cube(argmax_voxel(maps[0]))
    assert float(maps.max()) == 1.0 and float(maps.min()) == 0.0


class LinearScore(nn.Module):
    """logits = (−s, s) with s = Σ w ⊙ x: occluding a window changes s by exactly −Σ_window w ⊙ x."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape, generator=torch.Generator().manual_seed(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.weight).flatten(1).sum(dim=1)
        return torch.stack([-score, score], dim=1)


def window_starts(size: int, window: int = 11, stride: int = 5) -> list[int]:
    """Starts 0, stride, 2·stride, … while the window fits, and one window flush with the end if needed."""
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else [*starts, size - window]


@pytest.mark.parametrize("target", [0, 1])
def test_occlusion_equals_brute_force_window_search(target):
    shape = (2, 12, 13, 16)
    model = LinearScore(shape)
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(4))
    assert [window_starts(n) for n in shape[1:]] == [[0, 1], [0, 2], [0, 5]]
    sign = 1.0 if target == 1 else -1.0
    total, count = torch.zeros(shape[1:]), torch.zeros(shape[1:])
    for corner in itertools.product(*(window_starts(n) for n in shape[1:])):
        region = tuple(slice(c, c + 11) for c in corner)
        # drop of the target logit when the window is set to 0 in every channel
        total[region] += sign * (image[0][(slice(None), *region)] * model.weight[(slice(None), *region)]).sum()
        count[region] += 1
    drop = total / count
    expected = (drop - drop.min()) / (drop.max() - drop.min())
    maps = occlusion_map(model, image, [target], batch_size=3)
    torch.testing.assert_close(maps[0], expected, rtol=1e-4, atol=1e-5)


def tiny_model(**kwargs) -> UMProtoShare:
    torch.manual_seed(0)
    sizes = {"encoder_layers": (1, 1), "encoder_width": 8, "embed_dim": 16, "mapping_dim": 12}
    return UMProtoShare(**{**sizes, **kwargs}).eval()


def upsample(volume: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return F.interpolate(volume[None, None], size=size, mode="trilinear", align_corners=False)[0, 0]


def test_eq27_eq28_shared_map_averages_supporting_prototypes_per_scale_and_sums_scales():
    model = tiny_model(prototypes_per_scale=(2, 3, 2))
    with torch.no_grad():  # class 1 is supported by columns 1 (scale 1), 2 and 4 (scale 2); scale 3 by none
        model.classifier.weight.copy_(-torch.ones(2, 7))
        model.classifier.weight[1, [1, 2, 4]] = torch.tensor([0.3, 2.0, 0.1])
    image = torch.randn(1, 4, 32, 32, 24)
    size = (32, 32, 24)
    maps = class_map(model, image, [1], combination="sum")
    with torch.no_grad():
        explanation = model.explain(image)
    s1, s2 = explanation.per_scale[0].maps[0], explanation.per_scale[1].maps[0]
    expected = upsample(s1[1], size) + upsample((s2[0] + s2[2]) / 2, size)
    torch.testing.assert_close(maps[0], expected)
    assert torch.count_nonzero(class_map(model, image, [0])) == 0  # no positive weight for class 0


@pytest.mark.parametrize("kwargs", [{"map_activation": "sigmoid"}, {"similarity_kind": "voxel_topk"}])
def test_eq26_class_specific_map_averages_the_owned_prototypes(kwargs):
    model = tiny_model(prototypes_per_scale=(0, 0, 6), prototype_sharing="class_specific", fusion="none", **kwargs)
    image = torch.randn(2, 4, 32, 32, 24)
    maps = class_map(model, image, [1, 0])
    with torch.no_grad():
        per_prototype = model.explain(image).per_scale[0].maps  # occurrence maps / per-voxel similarities
    torch.testing.assert_close(maps[0], upsample(per_prototype[0, 3:].mean(dim=0), (32, 32, 24)))
    torch.testing.assert_close(maps[1], upsample(per_prototype[1, :3].mean(dim=0), (32, 32, 24)))


def test_class_map_methods_and_errors():
    model = tiny_model(prototypes_per_scale=(0, 0, 6), prototype_sharing="class_specific", fusion="none")
    image = torch.randn(1, 4, 32, 32, 24)
    with pytest.raises(ValueError, match="does not apply to a UMProtoShare"):
        class_map(model, image, [0], method="grad_cam")
    with pytest.raises(ValueError, match="prototype_maps"):
        class_map(model, image, [0], method="cam")
    with pytest.raises(ValueError, match="2 images"):
        class_map(model, torch.cat([image, image]), [0])
    with pytest.raises(TypeError, match="UMProtoShare or a BackboneCNN"):
        class_map(nn.Conv3d(4, 2, 1), image, [0])
    with pytest.raises(ValueError, match="does not apply to a BackboneCNN"):
        class_map(evidence_cnn(), evidence_image(), [0], method="prototype_maps")
    wrapped = torch.nn.DataParallel(model)
    torch.testing.assert_close(class_map(wrapped, image, [1]), class_map(model, image, [1]))


@pytest.mark.parametrize("method", ["grad_cam", "occlusion"])
def test_brain_only_sets_the_map_to_its_minimum_outside_the_known_brain(method):
    # the constructed image is zero except channel 0 in CUBE: its brain is exactly CUBE
    image = evidence_image()
    free = class_map(evidence_cnn(), image, [1], method=method)[0]
    inside = class_map(evidence_cnn(), image, [1], method=method, brain_only=True)[0]
    cube = torch.zeros(24, 24, 24, dtype=torch.bool)
    cube[CUBE] = True
    assert free[~cube].max() > free[~cube].min()  # without the option the map varies outside the brain
    torch.testing.assert_close(inside[cube], free[cube])
    assert torch.all(inside[~cube] == free.min())
