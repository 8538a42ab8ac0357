"""multi_gpu_train.json: ``torchrun --nproc_per_node=2`` on the CPU (gloo) through the micro schedule.

One run of the bundle command line (train.json + multi_gpu_train.json + a micro override): warm-up,
stage 1, two pushes each followed by stage 3, held-in validation and the held-out evaluation. Each
rank's output_dir is its own folder, so a file written by rank 1 would show; each rank dumps its
final state at the end of ``finalize`` (outside the output folders) for the comparison.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from monai.bundle import ConfigParser
from test_engine_micro import MICRO

from scripts.engine import Schedule, distributed_forward
from scripts.metrics import balanced_accuracy
from scripts.networks import ExplainForward
from tests.helpers import assert_identical, run_process_group
from tests.test_push import SHAPE, tiny

WORLD = 2
PUSH_EPOCHS = (3, 5)

DUMP = (
    "$torch.save({"
    "'state': {name: obj.state_dict() for name, obj in @checkpoint_objects.items() if name != 'rng'}, "
    "'train_indices': list(@train#sampler), 'train_sampler_epoch': @train#sampler.epoch, "
    "'push_indices': list(@train#push_sampler), 'epoch': @train#trainer.state.epoch, "
    "'val_bac': @validate#evaluator.state.metrics['val_bac'], 'test_bac': @test#evaluator.state.metrics['test_bac']"
    "}, os.path.join({dump!r}, 'rank' + os.environ['RANK'] + '.pt'))"
)
"""Appended to ``finalize``: what each rank holds at the end (RNG states differ by design and are left out)."""


def _settings(root: Path, dataset_dir: Path) -> dict:
    return {
        **MICRO,
        "dataset_dir": str(dataset_dir),
        "datalist_file": str(root / "datalist.json"),
        "cache_dir": str(root / "cache"),
        "output_dir": "$os.path.join(" + repr(str(root)) + ", 'out' + os.environ['RANK'])",
        "val_fraction": 0.2,  # 7 training cases (odd: the train sampler pads, push must not), 2 held-in
    }


@pytest.fixture(scope="module")
def run(data_synthetic_root, tmp_path_factory):
    """The torchrun command on two CPU ranks; returns the rank dumps, the folders and the parser of one rank."""
    root = tmp_path_factory.mktemp("ddp")
    dump = root / "dump"
    dump.mkdir()
    override = {
        **_settings(root, data_synthetic_root),
        # each rank notes whether the datalist existed when it first needed the dataset folder
        "dataset_dir": f"$[open(os.path.join({str(root)!r}, 'datalist_seen_by_rank' + os.environ['RANK']), 'w')"
        f".write(str(os.path.isfile(@datalist_file))), {str(data_synthetic_root)!r}][1]",
        # the gallery's rendering is rank 0's alone and slow; it is not what this test is about
        "train#trainer#train_handlers": "$[h for h in @train#handlers if type(h).__name__ != 'PrototypeGallery']",
        "+finalize": [DUMP.replace("{dump!r}", repr(str(dump)))],
    }
    override_file = root / "micro_ddp.json"
    override_file.write_text(json.dumps(override, indent=2))
    configs = ["configs/train.json", "configs/multi_gpu_train.json", str(override_file)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}",
        "-m", "monai.bundle", "run", "training", "--config_file", repr(configs),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = run_process_group(command, env, timeout=480)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    parser = ConfigParser()
    parser.read_config("configs/train.json")
    parser.update({**_settings(root, data_synthetic_root), "output_dir": str(root / "out0")})
    return ranks, root, parser


def test_both_ranks_end_with_identical_prototypes_weights_and_optimisers(run):
    ranks, _, _ = run
    assert [r["epoch"] for r in ranks] == [5, 5]
    assert_identical(ranks[0]["state"], ranks[1]["state"])
    network = ranks[0]["state"]["network"]
    assert any(key.endswith("running_mean") for key in network)  # batch-norm statistics are compared too
    assert any(".prototypes" in key for key in network) and any(key.startswith("classifier") for key in network)


def test_the_ranks_train_on_different_shards_and_push_searches_each_case_once(run):
    ranks, _, parser = run
    train_count = len(parser.get_parsed_content("train#items"))
    assert all(r["train_sampler_epoch"] == 5 for r in ranks)  # set_epoch ran every epoch
    assert len(ranks[0]["train_indices"]) == len(ranks[1]["train_indices"])  # same number of steps
    assert ranks[0]["train_indices"] != ranks[1]["train_indices"]
    shards = [r["push_indices"] for r in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(train_count))  # every case once, no padding


def test_prototypes_are_descriptors_of_training_cases_found_across_both_shards(run):
    ranks, root, parser = run
    record = json.loads((root / "out0" / "fold0" / "push.json").read_text())
    assert record["records"] == ranks[1]["state"]["push_record"]["records"]
    train_ids = [item["case_id"] for item in parser.get_parsed_content("train#items")]
    test_ids = {item["case_id"] for item in parser.get_parsed_content("test#items")}
    winners = {entry["case_id"] for entry in record["records"]}
    assert winners <= set(train_ids) and not winners & test_ids
    shard_ids = [{train_ids[i] for i in r["push_indices"]} for r in ranks]
    assert all(winners & ids for ids in shard_ids)  # the global argmax took cases from both ranks
    model = torch.load(root / "out0" / "fold0" / "model.pt", weights_only=True)
    assert_identical(model, ranks[1]["state"]["network"])


def test_rank0_builds_the_datalist_before_the_other_ranks_read_it(run):
    _, root, _ = run
    seen = [(root / f"datalist_seen_by_rank{r}").read_text() for r in range(WORLD)]
    assert seen == ["False", "True"]


def test_only_rank0_writes_the_fold_outputs(run):
    _, root, _ = run
    fold_dir = root / "out0" / "fold0"
    for name in ("model.pt", "push.json", "push_maps.pt", "checkpoint_last.pt", "heldout_bac.json"):
        assert (fold_dir / name).is_file(), name
    assert [p.name for p in sorted((fold_dir / "push").iterdir())] == [f"epoch_{e}" for e in PUSH_EPOCHS]
    assert any((fold_dir / "tb").iterdir())
    assert not (root / "out1").exists()


def test_distributed_held_out_bac_counts_each_test_case_once(run):
    ranks, root, parser = run
    report = json.loads((root / "out0" / "fold0" / "heldout_bac.json").read_text())
    items = parser.get_parsed_content("test#items")
    assert report["cases"] == len(items) and len(items) % WORLD  # unequal shards: 2 and 1 cases
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "out0" / "fold0" / "model.pt", weights_only=True))
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    with torch.no_grad():
        predicted = [int(network(torch.as_tensor(preprocessing(item)["image"])[None]).argmax()) for item in items]
    expected = balanced_accuracy([item["label"] for item in items], predicted, 2)
    assert report["bac"] == pytest.approx(expected)
    assert ranks[0]["test_bac"] == ranks[1]["test_bac"] == report["bac"]
    assert ranks[0]["val_bac"] == ranks[1]["val_bac"]


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of this process alone."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_stage_wrappers_survive_stage3_steps_between_stage1_steps(one_rank_group):
    # one DDP over the whole network would count stage 3's classifier gradients as used and fail at the
    # next stage-1 step ("gradient which is undefined, but still allreduced")
    model, schedule = tiny(seed=0), Schedule()
    stage1 = distributed_forward(ExplainForward(model), model, schedule.trainable_groups("stage1"), "cpu")
    stage3 = distributed_forward(model.classifier, model, schedule.trainable_groups("stage3"), "cpu")
    images = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    for stage in ("stage1", "stage3", "stage1", "stage3", "stage1"):
        model.set_trainable(schedule.trainable_groups(stage))
        model.zero_grad(set_to_none=True)
        if stage == "stage1":
            stage1(images).logits.sum().backward()
        else:
            with torch.no_grad():
                similarities = model.similarities(images)
            stage3(similarities).sum().backward()
        groups = ("encoder", "decoder", "prototypes", "classifier")
        trained = {group for group in groups if model.group_parameters(group)[0].grad is not None}
        assert trained == ({"encoder", "prototypes"} if stage == "stage1" else {"classifier"})


def test_a_wrapper_without_parameters_of_its_groups_is_refused():
    model = tiny(seed=0)
    with pytest.raises(ValueError, match=r"PrototypeClassifier holds no parameter of the groups \['prototypes'\]"):
        distributed_forward(model.classifier, model, ["prototypes"], "cpu")
