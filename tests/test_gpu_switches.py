"""The GPU switches of train.json, checked on the CPU: each one leaves the numbers (nearly) as they were.

channels_last_3d and torch.compile change memory layout and kernels, not the function: same logits and
the same training step within float tolerance. bf16 autocast changes precision: logits within a loose
tolerance of fp32 (CPU autocast stands in for CUDA's, which the engine enables only on CUDA).
cudnn_benchmark and compile are checked for reaching the backend and the staged iteration.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines.utils import default_prepare_batch

from scripts.engine import Schedule, StagedIteration, compiled, place, plain_tensor
from scripts.losses import Stage1Loss
from scripts.networks import BackboneCNN, ExplainForward, UMProtoShare

TINY = {"encoder_layers": (1, 1), "encoder_width": 4, "embed_dim": 8}
SCHEDULE = Schedule(warmup_epochs=1, stage1_epochs=1, push_every=1, stage3_epochs=1)
CONFIGS = ["configs/train.json", "configs/quickstart.json"]


def _networks(seed: int = 0) -> tuple[UMProtoShare, BackboneCNN]:
    torch.manual_seed(seed)
    network = UMProtoShare(**TINY, mapping_dim=8)
    return network, BackboneCNN(**TINY, scales=network.scales)


def _images(batch: int = 2, seed: int = 1, size: tuple[int, int, int] = (24, 24, 20)) -> torch.Tensor:
    return torch.randn(batch, 4, *size, generator=torch.Generator().manual_seed(seed))


def _stage1_step(network: UMProtoShare, cnn: BackboneCNN, channels_last_3d: bool) -> tuple[float, torch.Tensor]:
    """One stage-1 step; returns the loss and the encoder's first weight after the step."""
    network.set_trainable(SCHEDULE.trainable_groups("stage1"))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    iteration = StagedIteration(
        network, cnn, SCHEDULE, optimizer, optimizer, torch.nn.CrossEntropyLoss(), Stage1Loss(seed=0),
        channels_last_3d=channels_last_3d,
    )
    engine = SimpleNamespace(
        state=SimpleNamespace(epoch=2, device=torch.device("cpu")), prepare_batch=default_prepare_batch,
        non_blocking=False,
    )
    output = iteration(engine, {"image": _images(size=(16, 16, 16)), "label": torch.tensor([0, 1])})
    return output["loss"], network.backbone.encoder.conv1.weight.detach().contiguous()


@pytest.mark.parametrize("model_index", [0, 1], ids=["umprotoshare", "cnn"])
def test_channels_last_3d_gives_the_same_logits(model_index):
    model = _networks()[model_index].eval()
    reference = copy.deepcopy(model)
    place(model, "cpu", channels_last_3d=True)
    images = _images()
    with torch.no_grad():
        expected = reference(images)
        logits = model(plain_tensor(images, channels_last_3d=True))
    assert model.backbone.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_channels_last_3d_gives_the_same_stage1_step():
    network, cnn = _networks()
    loss, weight = _stage1_step(copy.deepcopy(network), cnn, channels_last_3d=False)
    last_network = place(network, "cpu", channels_last_3d=True)
    last_loss, last_weight = _stage1_step(last_network, place(cnn, "cpu", channels_last_3d=True), True)
    assert last_loss == pytest.approx(loss, rel=1e-4)
    torch.testing.assert_close(last_weight, weight, rtol=1e-4, atol=1e-5)
    assert not torch.equal(weight, _networks()[0].backbone.encoder.conv1.weight)  # the step did change it


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_autocast_stays_near_fp32(seed):
    network, cnn = (m.eval() for m in _networks(seed))
    images = _images(seed=seed + 10)
    for model in (network, cnn):
        with torch.no_grad():
            expected = model(images)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(images)
        assert logits.dtype == torch.bfloat16  # the classifier really ran in bf16
        torch.testing.assert_close(logits.float(), expected, rtol=0.05, atol=0.03)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        explanation = network.explain(images)
    assert all(torch.isfinite(scale.maps.float()).all() for scale in explanation.per_scale)


def test_compile_switch_off_is_the_module_itself():
    network, _ = _networks()
    assert compiled(network, enabled=False) is network


def _parsed(overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS)
    parser["device"] = "$torch.device('cpu')"
    for key, value in overrides.items():
        parser[key] = value
    return parser


@pytest.mark.parametrize("compile_switch", [False, True])
def test_compile_switch_wraps_the_training_forwards(compile_switch):
    iteration = _parsed({"compile": compile_switch}).get_parsed_content("train#iteration")
    warmup, stage1 = iteration.warmup_forward, iteration.stage1_forward
    if compile_switch:
        assert isinstance(warmup, torch._dynamo.eval_frame.OptimizedModule)
        warmup, stage1 = warmup._orig_mod, stage1._orig_mod
    assert warmup is iteration.warmup_network
    assert isinstance(stage1, ExplainForward) and stage1.network is iteration.network


@pytest.mark.parametrize("autotune", [False, True])
def test_cudnn_benchmark_switch_reaches_the_backend(autotune, restore_backends):
    torch.backends.cudnn.benchmark = not autotune
    _parsed({"cudnn_benchmark": autotune, "deterministic": False}).get_parsed_content("initialize")
    assert torch.backends.cudnn.benchmark is autotune


@pytest.mark.slow
def test_compiled_model_gives_the_same_logits_and_explanation():
    """torch.compile (inductor) on the CPU: minutes on two cores, hence slow; the wiring test above is fast."""
    network, cnn = (m.eval() for m in _networks())
    images = _images()
    with torch.no_grad():
        expected, explained = cnn(images), network.explain(images)
        torch.testing.assert_close(compiled(cnn, True)(images), expected, rtol=1e-4, atol=1e-5)
        explanation = compiled(ExplainForward(network), True)(images)
    torch.testing.assert_close(explanation.logits, explained.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(explanation.per_scale[0].maps, explained.per_scale[0].maps, rtol=1e-4, atol=1e-6)
