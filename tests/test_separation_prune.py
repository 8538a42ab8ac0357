"""Training's optional pruning of the prototypes that do not separate the classes, after the last push only."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

import scripts.engine.handlers as handlers_module
from scripts.engine import PushHandler, Schedule
from scripts.networks import UMProtoShare
from scripts.push import PushResult

SCHEDULE = Schedule(warmup_epochs=1, stage1_epochs=4, push_every=2, stage3_epochs=1)  # pushes after epochs 3 and 5
MEANS = [{"LGG": 0.9, "HGG": 0.5}, {"LGG": 0.8, "HGG": 0.78}, {"LGG": 0.3, "HGG": 0.9}, {"LGG": 0.7, "HGG": 0.6}]


def _model() -> UMProtoShare:
    torch.manual_seed(0)
    model = UMProtoShare(encoder_layers=(1, 1), encoder_width=4, embed_dim=8, mapping_dim=8, prototypes_per_scale=(4, 0, 0))
    with torch.no_grad():  # favoured: LGG, LGG, HGG, HGG
        model.classifier.weight.copy_(torch.tensor([[1.0, 1.0, -0.5, -0.5], [-0.5, -0.5, 1.0, 1.0]]))
    return model


def _run(monkeypatch, tmp_path, model, prune: bool, means=MEANS) -> tuple[PushHandler, list[list[int]], Engine]:
    seen: list[list[int]] = []

    def push(network, *args, **kwargs) -> PushResult:
        seen.append(network.classifier.pruned())  # what was pruned when each push ran
        return PushResult(["LGG", "HGG"], [{"column": c, "scale": 1, "k": c, "class_similarity": m, "similarity": 1.0}
                                           for c, m in enumerate(means)])

    monkeypatch.setattr(handlers_module, "push_prototypes", push)
    handler = PushHandler(model, SCHEDULE, [], ["LGG", "HGG"], tmp_path, write_files=False, prune_non_separating=prune)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=SCHEDULE.max_epochs)
    return handler, seen, engine


def test_the_last_push_prunes_what_does_not_separate_and_marks_the_records(monkeypatch, tmp_path):
    model = _model()
    handler, seen, engine = _run(monkeypatch, tmp_path, model, prune=True)
    assert seen == [[], []]  # nothing pruned before or at the first push
    # separations: 0.4, 0.02, 0.6, -0.1 (favoured HGG: 0.6 - 0.7) → columns 1 and 3 go
    assert model.classifier.pruned() == [1, 3]
    assert torch.equal(model.classifier.effective_weight[:, [1, 3]], torch.zeros(2, 2))
    assert [r["pruned"] for r in handler.record.records] == [False, True, False, True]
    assert engine.state.metrics["push/pruned"] == 2.0


def test_off_unless_asked_and_every_class_keeps_a_prototype(monkeypatch, tmp_path):
    model = _model()
    _run(monkeypatch, tmp_path, model, prune=False)
    assert model.classifier.pruned() == []
    model = _model()
    alike = [{"LGG": 0.8, "HGG": 0.8}] * 4  # nothing separates: each class keeps one (its first on ties)
    handler, _, _ = _run(monkeypatch, tmp_path, model, prune=True, means=alike)
    assert model.classifier.pruned() == [1, 3] and [r["pruned"] for r in handler.record.records] == [
        False, True, False, True]


def test_a_push_record_without_class_means_stops_with_the_prototypes_name(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="prototype s1_k0: its push record has no class means"):
        _run(monkeypatch, tmp_path, _model(), prune=True, means=[None] * 4)
