"""The whole schedule through train.json on the micro configuration: warm-up, stage 1, two pushes, stage 3."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_engine_micro import MICRO, micro_workflow

from scripts.calibration import Calibration, fit_temperature
from scripts.data import split_fold
from scripts.engine import validation_logits
from scripts.networks import BACKBONE_GROUPS, group_of

PUSH_EPOCHS = (3, 5)
STAGE1_EPOCHS = (2, 3, 4, 5)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _entries(state: dict, group: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if group_of(k) == group}


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _LogRecords(logging.Handler):
    """Collects the messages of every INFO-or-above record."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def run(data_synthetic_root, tmp_path_factory):
    """One micro run with snapshots of the network at each epoch's start, end of iterations and end, and its log;
    the prototypes that do not separate the classes are pruned after the last push (an option, off by default)."""
    workdir = tmp_path_factory.mktemp("e2e") / "run"
    workflow = micro_workflow(workdir, data_synthetic_root, prune_non_separating=True)
    workflow.initialize()
    parser = workflow.parser
    trainer, network = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("network")
    snapshots: dict[tuple[str, int], dict] = {}

    @trainer.on(Events.EPOCH_STARTED)
    def at_start(engine):
        snapshots[("start", engine.state.epoch)] = _state(network)

    @trainer.on(Events.ITERATION_COMPLETED)
    def after_iterations(engine):  # before the epoch's push and stage 3
        if engine.state.iteration % engine.state.epoch_length == 0:
            snapshots[("iterations", engine.state.epoch)] = _state(network)

    @trainer.on(Events.EPOCH_COMPLETED)
    def at_end(engine):  # attached after the config's handlers: after push and stage 3
        snapshots[("end", engine.state.epoch)] = _state(network)

    root, log = logging.getLogger(), _LogRecords()
    level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(log)
    try:
        workflow.run()
    finally:
        root.removeHandler(log)
        root.setLevel(level)
    workflow.finalize()
    fold_dir = workdir / "out" / "fold0"
    return SimpleNamespace(
        parser=parser, trainer=trainer, network=network, snapshots=snapshots, fold_dir=fold_dir, log=log.messages
    )


def test_warmup_backbone_starts_stage1(run):
    cnn = run.parser.get_parsed_content("warmup_network")
    start = run.snapshots[("start", 2)]
    for group in BACKBONE_GROUPS:
        entries = _entries(start, group)
        assert entries and _equal(entries, {k: v for k, v in cnn.state_dict().items() if k in entries})
    assert not _equal(_entries(run.snapshots[("start", 1)], "decoder"), _entries(start, "decoder"))


def test_decoder_weights_and_statistics_unchanged_after_warmup(run):
    decoder = _entries(run.snapshots[("start", 2)], "decoder")
    assert any("running_mean" in k for k in decoder)
    assert _equal(decoder, _entries(_state(run.network), "decoder"))


def test_classifier_unchanged_by_stage1_and_changed_by_stage3(run):
    for epoch in STAGE1_EPOCHS:
        before = _entries(run.snapshots[("start", epoch)], "classifier")
        assert _equal(before, _entries(run.snapshots[("iterations", epoch)], "classifier"))
        assert not _equal(_entries(run.snapshots[("start", epoch)], "encoder"),
                          _entries(run.snapshots[("iterations", epoch)], "encoder"))
    for epoch in PUSH_EPOCHS:
        before, after = run.snapshots[("iterations", epoch)], run.snapshots[("end", epoch)]
        assert not _equal(_entries(before, "classifier"), _entries(after, "classifier"))
        assert not _equal(_entries(before, "prototypes"), _entries(after, "prototypes"))
        untouched = {k for k in before if group_of(k) not in ("classifier", "prototypes")}
        assert _equal({k: before[k] for k in untouched}, {k: after[k] for k in untouched})


def test_every_prototype_is_a_named_training_case_descriptor(run):
    datalist = run.parser.get_parsed_content("datalist")
    train_items, test_items = split_fold(datalist, 0)
    by_id = {item["case_id"]: item for item in train_items}
    record = json.loads((run.fold_dir / "push.json").read_text())
    assert len(record["records"]) == run.network.num_prototypes == 30
    preprocessing = run.parser.get_parsed_content("preprocessing")
    network = run.network.eval()
    test_ids = {item["case_id"] for item in test_items}
    for entry in record["records"]:
        assert entry["case_id"] in by_id and entry["case_id"] not in test_ids
        assert entry["class_name"] == by_id[entry["case_id"]]["label_name"]
        image = torch.as_tensor(preprocessing(by_id[entry["case_id"]])["image"])[None]
        with torch.no_grad():
            explanation = network.explain(image)
        descriptor = explanation.per_scale[network.scales.index(entry["scale"])].descriptors[0, entry["k"]]
        prototype = network.head(entry["scale"]).prototypes[entry["k"]]
        assert torch.allclose(descriptor, prototype, rtol=1e-4, atol=1e-6), entry


def test_fold_outputs_and_final_weights(run):
    fold_dir = run.fold_dir
    for epoch in PUSH_EPOCHS:
        assert (fold_dir / "push" / f"epoch_{epoch}" / "push.json").is_file()
    assert (fold_dir / "push.json").read_text() == (fold_dir / "push" / "epoch_5" / "push.json").read_text()
    assert (fold_dir / "checkpoint_last.pt").is_file()
    bac = json.loads((fold_dir / "heldout_bac.json").read_text())
    assert bac["fold"] == 0 and 0.0 <= bac["bac"] <= 1.0
    parser = ConfigParser()
    parser.read_config("configs/inference.json")
    parser.update({k: MICRO[k] for k in ("encoder_layers", "encoder_width", "embed_dim")})
    parser["network_def"]["mapping_dim"] = MICRO["mapping_dim"]
    fresh = parser.get_parsed_content("network_def")
    fresh.load_state_dict(torch.load(fold_dir / "model.pt", weights_only=True))
    assert _equal(_state(fresh), _state(run.network))
    # prune_non_separating: after the last push, what does not separate the classes on the push set goes
    records = json.loads((fold_dir / "push.json").read_text())["records"]
    pruned = [r["pruned"] for r in records]
    assert pruned == (fresh.classifier.active == 0).tolist()
    assert not any("pruned" in r for r in json.loads((fold_dir / "push" / "epoch_3" / "push.json").read_text())["records"])
    assert torch.equal(fresh.classifier.effective_weight[:, [c for c, gone in enumerate(pruned) if gone]],
                       torch.zeros(2, sum(pruned)))  # (which ones: tests/test_separation_prune.py)


def test_the_test_fold_is_logged_as_held_out_never_as_a_best_metric(run):
    assert any(message.startswith("fold 0, held-out test fold (never used for selection): bac=") for message in run.log)
    assert not [message for message in run.log if "best metric of test" in message]
    assert "test_bac" in run.parser.get_parsed_content("test#evaluator").state.metrics


def test_loss_terms_lr_and_stage_are_logged_per_epoch(run):
    metrics = run.trainer.state.metrics
    for term in ("cls", "clst", "sep", "map", "oc", "div"):
        assert f"stage1/{term}" in metrics
    assert {"stage3/cls", "stage3/l1", "lr", "push/similarity", "time/push", "time/stage3"} <= set(metrics)
    events = EventAccumulator(str(run.fold_dir / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"warmup/cls", "stage1/clst", "stage1/oc", "stage3/l1", "lr"} <= scalars
    assert [e.step for e in events.Scalars("stage1/clst")] == list(STAGE1_EPOCHS)
    assert [e.step for e in events.Scalars("stage3/l1")] == list(PUSH_EPOCHS)


def test_held_in_validation_after_pushes_never_sees_the_test_fold(data_synthetic_root, tmp_path):
    workflow = micro_workflow(tmp_path / "run", data_synthetic_root, val_fraction=0.3)
    workflow.initialize()
    parser = workflow.parser
    trainer, validator = parser.get_parsed_content("train#trainer"), parser.get_parsed_content("validate#evaluator")
    validated = []
    validator.add_event_handler(Events.COMPLETED, lambda _: validated.append(trainer.state.epoch))
    workflow.run()
    assert validated == list(PUSH_EPOCHS)  # val_interval defaults to push_every, counted from the end of warm-up
    assert 0.0 <= validator.state.metrics["val_bac"] <= 1.0
    ids = {
        part: {item["case_id"] for item in parser.get_parsed_content(f"{part}#items")}
        for part in ("train", "validate", "test")
    }
    assert ids["validate"] and not ids["validate"] & ids["test"] and not ids["validate"] & ids["train"]
    record = json.loads((tmp_path / "run" / "out" / "fold0" / "push.json").read_text())
    assert {entry["case_id"] for entry in record["records"]} <= ids["train"]
    # the fold's calibration is fitted on the held-in split alone, with the final model's logits
    saved = json.loads((tmp_path / "run" / "out" / "fold0" / "calibration.json").read_text())
    assert set(saved["validation"]["case_ids"]) == ids["validate"] and saved["cases"] == len(ids["validate"])
    logits, labels, _ = validation_logits(
        parser.get_parsed_content("network"), parser.get_parsed_content("validate#calibration_loader"), "cpu"
    )
    torch.testing.assert_close(logits, torch.tensor(saved["validation"]["logits"]), rtol=0, atol=1e-5)
    assert saved["method"] == "prior_nll"
    assert saved["temperature"] == pytest.approx(fit_temperature(logits, labels, "prior_nll"), rel=1e-6)
    assert Calibration.load(tmp_path / "run" / "out" / "fold0" / "model.pt").temperature == saved["temperature"]
