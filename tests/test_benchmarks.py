"""Benchmarks: the report's shape on a minimal tiny run (no timing asserted), measuring helpers, IDS batching."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import gpu, speed
from benchmarks.bundle import build_parts, load_config
from benchmarks.measure import MIB, Runs, peak_memory, side_by_side
from benchmarks.run import TARGETS, main
from scripts.metrics import deletion_curve


def test_tiny_report_prints_one_json_with_every_section(tmp_path, capsys):
    out = tmp_path / "report.json"
    settings = {"repeats": 1, "cases": 1, "batch": 1, "ids_steps": 1, "ids_batch": 2, "warmup": 0}
    main(tiny=True, **settings, out=str(out), workdir=str(tmp_path))
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert report["settings"]["configuration"] == "tiny" and report["settings"]["input_shape"] == [4, 72, 72, 54]
    for name in ("inference", "push", "ids", "training_iteration", "epochs", "data"):
        for ratio in ("ratio", "cpu_ratio"):
            assert math.isfinite(report[name][ratio]) and report[name][ratio] > 0, (name, ratio)
        assert all(len(seconds) >= 1 for runs in report[name]["runs"].values() for seconds in runs.values()), name
    for name, target in TARGETS.items():
        assert report[name]["target"] == target
        for met, ratio in (("met", report[name]["ratio"]), ("met_cpu", report[name]["cpu_ratio"])):
            assert report[name][met] == (ratio < target if name == "data" else ratio <= target), (name, met)
    assert report["ids"]["copies"] == 2 and report["ids"]["forward_passes"] == 1  # 1 case x (1 step + 1)
    assert report["inference"]["umprotoshare_peak_mib_per_volume"] > 0


FAKE_OFFICIAL = {
    "models.py": """
import torch
from torch import nn
class UM_Proto_Share(nn.Module):
    def __init__(self, in_size, p_mode, f_dist, freeze_unet):
        super().__init__()
        self.linear = nn.Linear(in_size[0], 2)
    def forward(self, x):
        return self.linear(x.mean(dim=(2, 3, 4)))
""",
    "train.py": """
CALLS = []
def train_one_epoch_UM_ProtoShare(stage, model, loader, optimiser, class_weights, loss_class, loss_coefs,
                                  use_l1_mask, scaler, lr_scheduler, class_assignments):
    print("their epoch line")
    for subject_id, image, label, seg in loader:
        optimiser.zero_grad()
        loss = loss_class(model(image), label.argmax(dim=1))
        scaler.scale(loss).backward()
        scaler.step(optimiser)
        lr_scheduler.step()
        CALLS.append((stage, model.training, subject_id, image, label, class_weights, loss_coefs, class_assignments))
""",
    "utils.py": """
import torch
FocalLoss = torch.nn.CrossEntropyLoss
def warmup_cosine_scheduler(optimiser, num_epochs, use_warmup, warmup_ratio):
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
def get_loss_coefs():
    return {"loss_class_coe": 1.0}
""",
}


def test_official_stage1_step_runs_their_joint_stage_on_our_batch(tmp_path, capsys):
    for name, text in FAKE_OFFICIAL.items():
        (tmp_path / name).write_text(text)
    images, labels = torch.randn(2, 4, 3, 3, 3), torch.tensor([1, 0])
    try:
        step = speed.official_stage1_step(tmp_path, images, labels)
        train = sys.modules["train"]
        step()
        step()
        stage, training, subject_id, image, label, weights, coefs, assignment = train.CALLS[-1]
    finally:
        for name in ("models", "train", "utils"):
            sys.modules.pop(name, None)
    assert len(train.CALLS) == 2  # one call of their epoch over a one-batch loader per step
    assert (stage, training, assignment, coefs) == ("joint", True, "soft", {"loss_class_coe": 1.0})
    assert image is images and torch.equal(label, torch.tensor([[0.0, 1.0], [1.0, 0.0]])) and len(subject_id) == 2
    assert weights.tolist() == pytest.approx([293 / 369, 76 / 369])
    assert "their epoch line" not in capsys.readouterr().out


def test_stage1_section_reports_our_steps_over_the_authors_of_the_same_batch(tmp_path):
    for name, text in FAKE_OFFICIAL.items():
        (tmp_path / name).write_text(text)
    parts = build_parts(load_config("tiny", "cpu"))
    try:
        section = speed.stage1_section(parts, 1, (10, 1), seed=0, official_src=str(tmp_path))
    finally:
        for name in ("models", "train", "utils"):
            sys.modules.pop(name, None)
    seconds, speedup = section["seconds"], section["speedup_over_official_fp32"]
    ours = {f"batch{b}{suffix}" for b in (1, 10) for suffix in ("", "_bf16", "_system_allocator")}
    assert set(speedup) == ours  # batch 10's steps against batch 10's, never batch 1's
    for name in ours:
        b = name.split("_")[0].removeprefix("batch")
        assert speedup[name] == pytest.approx(seconds[f"official_batch{b}"] / seconds[name], abs=1e-3)
    assert section["allocators"]["official_batch1"] == "system"
    assert section["allocators"]["official_batch10_bundle_allocator"] == "retain"


def test_unknown_configuration_is_refused():
    with pytest.raises(ValueError, match="huge"):
        load_config("huge", "cpu")


def test_cpu_peak_memory_replays_allocations_and_frees():
    def allocate() -> None:
        first = torch.empty(100 * MIB, dtype=torch.uint8)
        second = torch.empty(50 * MIB, dtype=torch.uint8)
        del first
        third = torch.empty(20 * MIB, dtype=torch.uint8)
        del second, third

    # 100 + 50 live together (150 MiB); after the free, 50 + 20 = 70 MiB is less
    assert peak_memory(allocate, torch.device("cpu")) == 150 * MIB


def test_side_by_side_alternates_the_order():
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b", "c")}
    runs = side_by_side(calls, 3, torch.device("cpu"))
    assert order == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert {name: len(values) for name, values in runs.wall.items()} == {"a": 3, "b": 3, "c": 3}
    assert {name: len(values) for name, values in runs.cpu.items()} == {"a": 3, "b": 3, "c": 3}


def test_side_by_side_prepares_each_call_untimed_before_it():
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in ("a", "b")}
    prepare = {"b": lambda: (order.append("prepare b"), time.sleep(0.05))}
    runs = side_by_side(calls, 2, torch.device("cpu"), prepare=prepare)
    assert order == ["a", "prepare b", "b", "prepare b", "b", "a"]
    assert max(runs.wall["b"]) < 0.05  # the preparation's sleep is not in b's time


def test_runs_medians_and_ratios_per_clock():
    runs = Runs()
    for wall, cpu in ((3.0, 2.0), (1.0, 4.0), (2.0, 6.0)):
        runs.add("model", (wall, cpu))
    for wall, cpu in ((1.0, 2.0), (2.0, 2.0), (4.0, 8.0)):
        runs.add("reference", (wall, cpu))
    # medians: model wall 2, cpu 4; reference wall 2, cpu 2
    assert runs.ratio("model", "reference") == 1.0 and runs.ratio("model", "reference", "cpu") == 2.0
    with pytest.raises(ValueError, match="wall"):
        runs.median("model", "gpu")


def test_ids_reuses_one_input_tensor_and_keeps_the_copies_exact():
    images = torch.rand(2, 2, 4, 4, 4) + 1.0
    maps = torch.arange(128, dtype=torch.float32).view(2, 4, 4, 4)
    storages, copies = set(), []

    def model(batch: torch.Tensor) -> torch.Tensor:
        storages.add(batch.untyped_storage().data_ptr())
        copies.append(batch.clone())
        return torch.zeros(batch.shape[0], 2)

    deletion_curve(model, images, maps, [0, 1], batch_size=3, steps=2)
    assert len(storages) == 1  # 5 copies in batches of 3, 2 (one tensor reused)
    # case 0's steps 0, 1, 2, then case 1's steps 0, 1: its step 2 is the all-zero image already run
    copies = torch.cat(copies)
    # step 1 deletes values >= the median of 0..63 (31.5), i.e. the upper 32 voxels of each case
    upper = (maps - maps.flatten(1).min(1).values.view(2, 1, 1, 1)) >= 31.5
    assert torch.equal(copies[[1, 4]], images.masked_fill(upper[:, None], 0))
    assert torch.equal(copies[[0, 3]], images) and not copies[2].any() and len(copies) == 5


def test_ids_images_of_different_sizes():
    small, large = torch.rand(1, 4, 4, 4) + 1, torch.rand(1, 6, 6, 6) + 1
    maps = [torch.rand(4, 4, 4), torch.rand(6, 6, 6)]
    seen: list[tuple[int, ...]] = []

    def model(batch: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(batch.shape))
        return torch.zeros(batch.shape[0], 2)

    deletion_curve(model, [small, large], maps, [0, 1], batch_size=2, steps=1)  # one case per batch
    assert seen == [(2, 1, 4, 4, 4), (2, 1, 6, 6, 6)]
    with pytest.raises(ValueError, match="case 1: image"):
        deletion_curve(model, [small, large], maps, [0, 1], batch_size=3, steps=1)  # a batch spans both


def test_gpu_report_runs_its_measurements_on_any_device(restore_backends):
    report = gpu.throughput_report("tiny", "cpu", batch=2, steps=1, warmup=0, budget_s=60.0)
    assert report["settings"]["batch"] == 2 and report["settings"]["channels_last_3d"] is True
    for group, names in (("inference", ("umprotoshare", "cnn")), ("training", ("stage1", "cnn"))):
        for name in names:
            entry = report[group][name]
            assert entry["timed_batches"] == 1 and entry["volumes_per_s"] > 0 and entry["peak_mib"] > 0, (group, name)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_script_refuses_without_cuda(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main()
    assert exit_info.value.code == 2
    assert "needs a CUDA device" in capsys.readouterr().err


def test_objectives_passes_the_thread_count_to_each_run(tmp_path, monkeypatch):
    from benchmarks import objectives

    commands = []
    monkeypatch.setattr(objectives.subprocess, "run", lambda command, **kwargs: commands.append(command))
    objectives.run_variant(["configs/train.json"], "mean", 0, tmp_path / "a", num_threads=1)
    objectives.run_variant(["configs/train.json"], "mean", 0, tmp_path / "b")
    assert commands[0][-2:] == ["--num_threads", "1"] and "--num_threads" not in commands[1]


def test_speed_report_with_a_reference_on_the_tiny_network(tmp_path, capsys):
    reference = tmp_path / "reference.json"
    speed.main(tiny=True, repeats=1, batch_sizes=(1,), save_reference=str(reference))
    first = json.loads(capsys.readouterr().out)
    speed.main(tiny=True, repeats=1, batch_sizes=(1,), reference=str(reference))
    second = json.loads(capsys.readouterr().out)
    assert set(first["forward"]["seconds"]) == {
        "fp32", "folded_fp32", "bf16", "cnn_fp32", "fp32_channels_last", "bf16_channels_last",
        "bf16_channels_last_rechecked", "fp32_system_allocator"
    }
    assert first["forward"]["allocators"]["fp32_system_allocator"] == "system"
    assert first["forward"]["allocators"]["fp32"] == "retain"
    assert set(first["stage1_step"]["seconds"]) == {"batch1", "batch1_bf16", "batch1_system_allocator"}
    assert first["forward"]["folded_max_abs_logit_difference"] < 1e-4
    assert first["forward"]["channels_last_max_abs_logit_difference"] < 1e-4
    assert 0 < first["forward"]["bf16_max_probability_difference"] < 0.05
    for name, before in first["forward"]["seconds"].items():
        after = second["forward"]["seconds"][name]
        assert second["reference"]["ratio"][f"forward.{name}"] == pytest.approx(after / before, abs=1e-3)
    assert all(isinstance(first[section]["quiet"], bool) for section in ("forward", "stage1_step"))


def test_ids_section_times_the_variants_on_phantoms_with_equal_curves(tmp_path):
    parts = build_parts(load_config("tiny", "cpu"))
    section = speed.ids_section(parts, 1, tmp_path, seed=0)
    (case,) = section["cases"]
    assert set(case["seconds"]) == set(speed.IDS_VARIANTS) and section["curves_equal"] is case["curves_equal"] is True
    # every copy runs without reuse; with it, only the steps inside the brain, plus the all-zero image
    assert case["copies"]["every_copy"] == case["copies"]["before_0.11"] == 51
    assert case["copies"]["each_distinct_copy_once"] <= round(51 * case["brain_share"]) + 2
    assert 0 < case["brain_share"] < 1 and section["ratio_over_before_0.11"]["before_0.11"] == 1.0
    kernel = next(p for p in parts.network.parameters() if p.ndim == 5 and p.shape[2] > 1)
    # training's placement (channels-last on a CPU) is restored after the contiguous variants
    assert parts.settings["channels_last_3d"] is True and kernel.is_contiguous(memory_format=torch.channels_last_3d)


def test_allocator_switch_regrows_each_kept_heap_untimed_after_a_system_call():
    from scripts.engine import allocator_mode, configure_allocator

    before = allocator_mode()
    ran: list[str] = []
    allocators = {"ours": "retain", "theirs": "system", "ours_again": "retain"}
    calls = {name: (lambda name=name: ran.append(name)) for name in allocators}
    switches = speed._allocator_switches(allocators, calls)
    try:
        switches["ours"]()  # no system call yet: nothing has been returned, nothing to regrow
        assert ran == [] and allocator_mode() == "retain"
        switches["theirs"]()  # into system: its calls fault pages in anyway
        assert ran == [] and allocator_mode() == "system"
        switches["ours_again"]()  # back to retain: one untimed call regrows the heap
        assert ran == ["ours_again"] and allocator_mode() == "retain"
        switches["ours"]()  # a system call ran since ours last did: ours_again's heap may be too small for it
        assert ran == ["ours_again", "ours"]
        switches["ours"](), switches["ours_again"]()  # nothing returned since either ran: nothing more
        assert ran == ["ours_again", "ours"]
        switches["theirs"](), switches["ours"]()
        assert ran == ["ours_again", "ours", "ours"]
    finally:
        configure_allocator(before)


def test_other_load_sees_another_process_use_the_cpu():
    with speed.OtherLoad() as idle:
        time.sleep(0.5)
    with speed.OtherLoad() as busy:
        subprocess.run([sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"],
                       check=True)
    assert busy.other >= 1.0 and busy.as_dict()["quiet"] is False
    assert idle.other < busy.other


def test_peak_rss_is_reset_before_each_call():
    def allocate() -> None:
        torch.ones(100 * MIB).add_(1)  # 400 MiB touched

    small, large = speed.peak_rss(lambda: None), speed.peak_rss(allocate)
    assert large - small >= 300 * MIB


@pytest.mark.parametrize("module", ["benchmarks.run", "benchmarks.speed"])
def test_help_lists_the_forwarded_flags(module):
    # main(tiny, out, ..., **options) forwards options to report(); fire used to pass --help on as an option and crash
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                          env={"PAGER": "cat", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    shown = done.stdout + done.stderr  # fire writes help to stderr when not on a terminal
    assert "--repeats" in shown and "--tiny" in shown and "--out" in shown
