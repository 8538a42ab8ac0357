"""Sharedness (Appendix G): Eq. 29 scores, Eq. 30 selection per scale, Eq. 31 contributions, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_evidence_fixtures import CONSTRUCTED, GEOMETRY, constructed_model, push_on, write_case

from scripts.data import preprocessing_transforms
from scripts.data.synthetic import brats_affine
from scripts.explain.sharedness import case_sharedness, main, most_shared, sharedness_report, sharedness_scores
from scripts.push import save_push

COLUMNS = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
S_LGG = torch.tensor([0.9, 0.2, 0.7, 0.5, 0.6])
S_HGG = torch.tensor([0.3, 0.8, 0.75, 0.55, 0.1])
WEIGHT = torch.tensor([[1.0, 0.5, -1.0, 2.0, 0.0], [-0.5, 1.0, 3.0, -1.0, 1.0]])


def test_eq29_sharedness_is_the_smaller_similarity():
    torch.testing.assert_close(sharedness_scores(S_LGG, S_HGG), torch.tensor([0.3, 0.2, 0.7, 0.5, 0.1]))


def test_eq30_most_shared_prototype_per_scale():
    # φ = [0.3, 0.2, 0.7 | 0.5, 0.1]: k1* = 2 (column 2), k2* = 0 (column 3)
    assert most_shared(sharedness_scores(S_LGG, S_HGG), COLUMNS) == {1: 2, 2: 3}
    # a prototype strong on one case only never wins: column 0 has S 0.9 on LGG but 0.3 on HGG
    assert most_shared(torch.tensor([0.4, 0.4, 0.1, 0.2, 0.2]), COLUMNS) == {1: 0, 2: 3}  # ties: first k


def test_eq31_contributions_of_the_most_shared_prototypes():
    report = sharedness_report({"LGG": S_LGG, "HGG": S_HGG}, WEIGHT, COLUMNS, ["LGG", "HGG"])
    assert [(e["scale"], e["k"], e["column"]) for e in report] == [(1, 2, 2), (2, 0, 3)]
    fine, mid = report
    assert fine["sharedness"] == pytest.approx(0.7)
    assert fine["class_weights"] == {"LGG": -1.0, "HGG": 3.0}
    # column 2: w = (-1, 3); S_LGG 0.7 → (-0.7, 2.1); S_HGG 0.75 → (-0.75, 2.25)
    assert fine["cases"]["LGG"]["contribution"] == pytest.approx({"LGG": -0.7, "HGG": 2.1})
    assert fine["cases"]["HGG"]["contribution"] == pytest.approx({"LGG": -0.75, "HGG": 2.25})
    # column 3: w = (2, -1); S_LGG 0.5 → (1.0, -0.5); S_HGG 0.55 → (1.1, -0.55)
    assert mid["cases"]["LGG"]["contribution"] == pytest.approx({"LGG": 1.0, "HGG": -0.5})
    assert mid["cases"]["HGG"]["contribution"] == pytest.approx({"LGG": 1.1, "HGG": -0.55})
    assert mid["cases"]["HGG"]["similarity"] == pytest.approx(0.55)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sharedness_scores(torch.zeros(3), torch.zeros(4)),
        lambda: most_shared(torch.zeros(4), COLUMNS),
        lambda: sharedness_report({"LGG": S_LGG}, WEIGHT, COLUMNS, ["LGG", "HGG"]),
    ],
)
def test_bad_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    cases = [write_case(root / f"c{i}", f"c{i}", seed=50 + i, high_grade=bool(i % 2), shape=(48, 48, 36),
                        affine=brats_affine((48, 48, 36))) for i in range(2)]
    model = constructed_model()
    push = push_on(model, cases, **GEOMETRY)
    torch.save(model.state_dict(), root / "model.pt")
    save_push(push, root)
    return root, model, cases, push


def test_function_api_on_two_preprocessed_cases(trained):
    _, model, cases, push = trained
    preprocessing = preprocessing_transforms(**GEOMETRY)
    images = {name: torch.as_tensor(preprocessing(c)["image"]) for name, c in zip(("LGG", "HGG"), cases)}
    report, evidence = case_sharedness(model, images, ["LGG", "HGG"], push.records)
    with torch.no_grad():
        similarities = {n: model.similarities(i[None])[0] for n, i in images.items()}
    phi = torch.minimum(similarities["LGG"], similarities["HGG"])
    assert report[0]["column"] == int(phi.argmax())
    assert report[0]["source"]["case_id"] == push.records[report[0]["column"]]["case_id"]
    assert report[0]["cases"]["LGG"]["sequence_evidence"]["T1"] == 0.0  # the constructed model reads FLAIR only
    torch.testing.assert_close(evidence["HGG"].similarities, similarities["HGG"])


def test_command_writes_json_and_figure(trained, tmp_path, capsys):
    root, _, cases, _ = trained
    folders = [str(Path(c["image"][0]).parent) for c in cases]
    main("configs/inference.json", str(root / "model.pt"), folders[0], folders[1], output_dir=str(tmp_path),
         device="cpu", datalist_file=str(tmp_path / "none.json"), **CONSTRUCTED, **GEOMETRY)
    written = json.loads((tmp_path / "sharedness.json").read_text())
    assert written == json.loads(capsys.readouterr().out)
    assert [entry["scale"] for entry in written["scales"]] == [1]
    assert (tmp_path / "sharedness.png").stat().st_size > 10_000
