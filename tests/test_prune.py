"""Pruning and forgetting prototypes (scripts/prune.py, configs/prune.json): the mask, the rules, the workflow."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import run
from monai.data import DataLoader, Dataset
from test_engine_micro import MICRO, run_micro
from test_evaluate import SHORT as EVALUATED_FOLD
from test_evidence_fixtures import GEOMETRY, constructed_model, write_case

from scripts.cli import load_weights
from scripts.data import preprocessing_transforms
from scripts.data.synthetic import brats_affine
from scripts.engine import train_last_layer_epoch
from scripts.losses import LastLayerLoss, forget_loss
from scripts.networks import UMProtoShare
from scripts.prototypes import SEPARATION_FLOOR
from scripts.prune import (
    PrototypeUsage,
    duplicate_prototypes,
    merge_duplicates,
    outside_brain_prototypes,
    prototype_usage,
    unused_prototypes,
)
from scripts.push import non_separating_columns
from scripts.weights import fit, optional_state_keys

TINY = {"encoder_layers": (1, 1), "encoder_width": 4, "embed_dim": 8, "mapping_dim": 8, "prototypes_per_scale": (3, 4, 2)}


def _tiny(**overrides) -> UMProtoShare:
    torch.manual_seed(0)
    return UMProtoShare(**{**TINY, **overrides}).eval()


def test_pruning_by_name_subtracts_exactly_the_removed_contributions():
    model = _tiny()
    x = torch.randn(2, 4, 16, 16, 16)
    with torch.no_grad():
        before = model(x)
        similarities = model.explain(x).similarities
        weight = model.classifier.weight.clone()
        columns = [model.column_of(name) for name in ("s1_k1", "prototype_s3_k0")]
        model.classifier.prune(columns)
        after, explained = model(x), model.explain(x).logits
    assert columns == [1, 7]
    expected = before - sum(similarities[:, [c]] * weight[:, c][None] for c in columns)
    assert torch.allclose(after, expected, atol=1e-5)
    assert torch.allclose(explained, after, atol=1e-6)
    assert model.active_columns.tolist() == [c not in columns for c in range(9)]
    assert model.classifier.pruned() == columns
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), after, atol=1e-5)


def test_bad_names_and_pruning_everything_are_refused():
    model = _tiny()
    with pytest.raises(ValueError, match="not a prototype name"):
        model.column_of("scale1_k0")
    with pytest.raises(ValueError, match="no prototype 's2_k4'"):
        model.column_of("s2_k4")
    with pytest.raises(ValueError, match="no prototype"):
        model.classifier.prune(range(9))


def test_a_state_dict_from_before_pruning_loads_with_every_prototype_active(tmp_path):
    model = _tiny()
    state = model.state_dict()
    del state["classifier.active"]
    other = _tiny()
    other.classifier.prune([0])
    other.load_state_dict(state)
    assert other.active_columns.all()
    # the command-line loader (inference, MONAI Label's checks) takes it too, and still refuses a real gap
    torch.save(state, tmp_path / "before.pt")
    other.classifier.prune([0])
    load_weights(other, tmp_path / "before.pt", "ckpt_path")
    assert other.active_columns.all()
    assert optional_state_keys(other) == {"classifier.active", "addon_reads_encoder"}
    assert fit(state, other.state_dict()).missing == ["classifier.active"]
    del state["classifier.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(SystemExit):
        load_weights(other, tmp_path / "broken.pt", "ckpt_path", errors_dir=tmp_path)


def test_the_mask_travels_in_the_state_dict():
    model = _tiny()
    model.classifier.prune([2, 5])
    fresh = _tiny()
    fresh.load_state_dict(model.state_dict())
    assert fresh.classifier.pruned() == [2, 5]


def test_stage_3_cannot_give_a_pruned_prototype_weight_back():
    model = _tiny()
    model.classifier.prune([0, 4])
    model.set_trainable(["classifier"])
    images = torch.randn(4, 4, 16, 16, 16)
    loader = [{"image": images[:2], "label": torch.tensor([0, 1])}, {"image": images[2:], "label": torch.tensor([1, 0])}]
    optimizer = torch.optim.Adam(model.group_parameters("classifier"), lr=0.1)
    before = model.classifier.weight.detach().clone()
    train_last_layer_epoch(model, loader, optimizer, LastLayerLoss(), torch.device("cpu"))
    weight = model.classifier.weight.detach()
    assert torch.equal(weight[:, [0, 4]], torch.zeros(2, 2))
    assert not torch.equal(weight[:, [1, 2, 3]], before[:, [1, 2, 3]])  # the others learn


def test_forget_loss_hand_computed():
    descriptors = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[-1.0, 0.0], [1.0, 1.0]]])  # (B=2, K=2, E=2)
    forbidden = torch.tensor([[1.0, 0.0]])
    # cosines: case 0 (1, 0) → max 1; case 1 (-1, 1/√2) → max 0.7071; mean 0.8536
    assert forget_loss(descriptors, forbidden).item() == pytest.approx((1 + 1 / math.sqrt(2)) / 2, abs=1e-6)
    assert forget_loss(-descriptors[:1], forbidden).item() == 0.0  # cosines (-1, 0): nothing alike
    with pytest.raises(ValueError, match="forbidden patches"):
        forget_loss(descriptors, torch.ones(3))


def test_duplicates_by_vector_or_by_source_go_to_the_partner_with_larger_weights():
    model = constructed_model()  # classifier columns (1, -1), (-0.5, 0.8), (0.2, 0.3): norms 1.41, 0.94, 0.36
    with torch.no_grad():
        prototypes = model.head(1).prototypes
        prototypes[0] = torch.linspace(0.1, 1.0, 8)
        prototypes[1] = 3.0 * prototypes[0]  # cosine 1 with k0
        prototypes[2] = torch.tensor([1.0, -1.0] * 4)  # cosine about 0.1 with k0
    records = [{"case_id": "a", "peak_voxel": [1, 2, 3]}, {"case_id": "b", "peak_voxel": [1, 2, 3]},
               {"case_id": "c", "peak_voxel": [4, 4, 4]}]
    maps = torch.tensor([[1.0, 0.5, 0.9], [0.5, 1.0, 0.2], [0.9, 0.2, 1.0]])  # k0 and k1 look at different places
    usage = PrototypeUsage(cases=4, outside_brain=torch.zeros(3), top_count=torch.ones(3), map_cosine={1: maps})
    assert duplicate_prototypes(model, records, usage, 0.99, 0.85, [0, 1, 2]) == {}
    usage.map_cosine[1][0, 1] = usage.map_cosine[1][1, 0] = 0.9  # now alike in what and where
    found = duplicate_prototypes(model, records, usage, 0.99, 0.85, [0, 1, 2])
    assert list(found) == [1]
    assert found[1]["duplicate_of"] == "s1_k0" and found[1]["merged_into"] == 0
    assert found[1]["cosine"] == pytest.approx(1.0, abs=1e-6) and not found[1]["same_source"]
    records[2] = {"case_id": "a", "peak_voxel": [1, 2, 3]}  # k2 pushed from k0's voxel
    found = duplicate_prototypes(model, records, usage, 0.99, 0.85, [0, 1, 2])
    assert sorted(found) == [1, 2] and found[2]["same_source"] and found[2]["duplicate_of"] == "s1_k0"
    weight = model.classifier.weight.detach().clone()
    merge_duplicates(model, {c: {"figures": f} for c, f in found.items()})
    assert torch.allclose(model.classifier.weight[:, 0], weight[:, 0] + weight[:, 1] + weight[:, 2])


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """A loader over four preprocessed phantoms (two per grade) on the constructed model's grid."""
    root = tmp_path_factory.mktemp("prune_phantoms")
    cases = [write_case(root / f"p{i}", f"p{i}", seed=40 + i, high_grade=bool(i % 2), shape=(48, 48, 36),
                        affine=brats_affine((48, 48, 36))) for i in range(4)]
    preprocessing = preprocessing_transforms(keep_keys=["case_id"], **GEOMETRY)
    items = [{"case_id": c["case_id"], "image": c["image"], "label": c["label"]} for c in cases]
    return DataLoader(Dataset(items, preprocessing), batch_size=2)


def test_a_constant_map_peaks_outside_the_brain_and_is_flagged(phantoms):
    model = constructed_model()
    model.map_support = "volume"  # read on the whole grid, as a volume-supported model's reports read it
    with torch.no_grad():
        model.head(1).mapping.out_conv.weight[2] = 0.0  # prototype k2: z = β, a constant map, peak at voxel 0
        model.head(1).mapping.out_norm.bias[2] = 0.0
    usage = prototype_usage(model, phantoms, 3, torch.device("cpu"), keep_images=["p1"])
    assert usage.cases == 4 and list(usage.images) == ["p1"]
    cosines = usage.map_cosine[1]
    assert torch.allclose(cosines.diagonal(), torch.ones(3), atol=1e-4) and torch.allclose(cosines, cosines.T)
    assert cosines[0, 1] > 0.9 > 0.5 > cosines[0, 2]  # k0, k1 both follow FLAIR; the constant map does not
    assert usage.outside_brain.tolist() == [0.0, 0.0, 1.0]  # k0, k1 peak in the bright FLAIR of the tumour
    assert list(outside_brain_prototypes(usage, 0.5, [0, 1, 2])) == [2]
    assert outside_brain_prototypes(usage, 0.5, [0, 1]) == {}


def test_unused_prototypes_by_top_contributions_and_by_weight(phantoms):
    model = constructed_model()
    with torch.no_grad():
        model.classifier.weight[:, 2] = torch.tensor([1e-4, -2e-4])
    every = prototype_usage(model, phantoms, 3, torch.device("cpu"))
    assert every.top_count.tolist() == [4, 4, 4]  # top 3 of 3: every prototype, every case
    found = unused_prototypes(model, every, 1e-3, 3, [0, 1, 2])
    assert list(found) == [2] and found[2]["max_abs_weight"] == pytest.approx(2e-4)
    usage = PrototypeUsage(cases=4, outside_brain=torch.zeros(3), top_count=torch.tensor([4, 0, 4]))
    assert list(unused_prototypes(model, usage, 1e-5, 1, [0, 1, 2])) == [1]


def test_top_contributors_are_counted_as_ranked_against_the_reference(phantoms):
    model = constructed_model()  # w_LGG = 1, -0.5, 0.2; w_HGG = -1, 0.8, 0.3
    reference = torch.tensor([1.0, 0.0, 0.0])  # column 0 adds nothing to LGG until a case matches it fully
    usage = prototype_usage(model, phantoms, 1, torch.device("cpu"), reference=reference)
    expected = torch.zeros(3, dtype=torch.long)
    for batch in phantoms:
        with torch.no_grad():
            explanation = model.explain(batch["image"])
        for similarities, logits in zip(explanation.similarities, explanation.logits):
            weight = model.classifier.weight[int(logits.argmax())]  # the class's voters (w > 0) first
            expected[int(torch.where(weight > 0, (similarities - reference) * weight, -torch.inf).argmax())] += 1
    assert usage.top_count.tolist() == expected.tolist()
    assert usage.top_count.tolist() != prototype_usage(model, phantoms, 1, torch.device("cpu")).top_count.tolist()


def test_non_separating_prototypes_by_the_push_sets_class_means():
    model = _tiny(prototypes_per_scale=(4, 0, 0))
    weight = torch.tensor([[1.0, -0.5, -0.5, -0.5], [-0.5, 1.0, 1.0, 1.0]])  # favoured: LGG, HGG, HGG, HGG
    means = [{"LGG": 0.90, "HGG": 0.70}, {"LGG": 0.82, "HGG": 0.80}, {"LGG": 0.60, "HGG": 0.50},
             {"LGG": 0.40, "HGG": 0.90}]  # separations 0.20, −0.02, −0.10, 0.50
    records = [{"class_similarity": m} for m in means]
    names = ["LGG", "HGG"]
    found = non_separating_columns(records, weight, names, 0.05, [0, 1, 2, 3])
    assert list(found) == [1, 2]
    assert found[1]["separation"] == pytest.approx(-0.02) and found[2]["separation"] == pytest.approx(-0.10)
    assert found[2]["favoured_class"] == "HGG" and found[2]["class_similarity"] == means[2]
    assert list(non_separating_columns(records, weight, names, -0.05, [0, 1, 2, 3])) == [2]
    assert list(non_separating_columns(records, weight, names, 0.05, [0])) == []  # candidates only
    # every HGG candidate below the floor: the best-separating one (column 1) stays, so HGG keeps evidence
    assert list(non_separating_columns(records, weight, names, 0.05, [0, 1, 2])) == [2]
    assert list(non_separating_columns(records, weight, names, 0.6, [0, 1, 2, 3])) == [1, 2]  # LGG keeps column 0
    with pytest.raises(ValueError, match="s1_k1: its push record has no class means"):
        non_separating_columns([records[0], {}, *records[2:]], weight, names, 0.05, [0, 1, 2, 3], model.prototype_name)


SHORT = {**EVALUATED_FOLD, "ids_steps": 2}
"""One epoch of each stage on a 16^3 grid (as the evaluation tests); two IDS steps."""


@pytest.fixture(scope="module")
def pruned(data_synthetic_root, tmp_path_factory):
    """A micro fold trained, then ``run prune`` with a name, the unused rule and a forbidden prototype."""
    workdir = tmp_path_factory.mktemp("prune") / "run"
    run_micro(workdir, data_synthetic_root, **SHORT)
    configs = ["configs/train.json", "configs/evaluate.json", "configs/prune.json"]
    options = {"prune_prototypes": ["s1_k0", "s2_k3"], "prune_rules": ["unused"], "forbid_prototypes": ["s3_k1"],
               "forget_epochs": 1}
    run_micro(workdir, data_synthetic_root, "prune", configs, None, **SHORT, **options)
    fold_dir = workdir / "out" / "fold0"
    out = fold_dir / "pruned"
    return SimpleNamespace(fold_dir=fold_dir, out=out, record=json.loads((out / "prune.json").read_text()),
                           workdir=workdir)


def test_the_record_says_what_went_by_whom_and_before_and_after(pruned):
    record = pruned.record
    names = [entry["prototype"] for entry in record["removed"]]
    assert [e["prototype"] for e in record["removed"] if e["by"] == "user"] == ["s1_k0", "s2_k3"]
    by_rule = [e for e in record["removed"] if e["by"] != "user"]
    assert by_rule and all(e["by"] == "rule:unused" and e["figures"]["top_contributor_cases"] == 0 for e in by_rule)
    assert "s3_k1" not in names  # forbidden: kept and fine-tuned, never a rule's candidate
    assert record["rules"]["separation_floor"] == SEPARATION_FLOOR
    assert record["rules"]["unused_ranking"] == "relative"  # as evaluation ranks: the micro push has class means
    assert [f["prototype"] for f in record["forbidden"]] == ["s3_k1"]
    similarity = record["forgetting"]
    for key in ("heldout_patch_similarity_before", "heldout_patch_similarity_after"):
        assert set(similarity[key]) == {"max", "mean"} and -1.0 <= similarity[key]["max"] <= 1.0
    assert record["before"]["prototypes"] == 30 and record["after"]["prototypes"] == 30 - len(names)
    metrics = json.loads((pruned.out / "metrics.json").read_text())
    assert record["after"]["bac"] == metrics["bac"] and record["after"]["ap"] == metrics["ap"]
    assert (pruned.out / "per_case.csv").is_file() and (pruned.out / "calibration.json").is_file()
    state = torch.load(pruned.out / "model.pt", weights_only=True)
    pruned_columns = (state["classifier.active"] == 0).nonzero().flatten().tolist()
    assert len(pruned_columns) == len(names) and 0 in pruned_columns and 9 + 3 in pruned_columns
    assert torch.equal(state["classifier.weight"][:, pruned_columns], torch.zeros(2, len(pruned_columns)))
    push = json.loads((pruned.out / "push.json").read_text())
    assert [r["column"] for r in push["records"] if r["pruned"]] == pruned_columns
    assert 0 < record["seconds_prune"] <= record["seconds_total"]
    gallery = json.loads((pruned.out / "gallery" / "provenance.json").read_text())["records"]
    assert [r["column"] for r in gallery] == [r["column"] for r in push["records"] if not r["pruned"]]
    forbidden = next(r for r in gallery if (r["scale"], r["k"]) == (3, 1))  # re-pushed after forgetting
    assert forbidden["case_id"] == push["records"][9 + 15 + 1]["case_id"]
    assert (pruned.out / "gallery" / "s3_k1.png").is_file()


def test_inference_serves_the_pruned_folder_without_extra_settings(pruned, tmp_path):
    settings = {key: MICRO[key] for key in ("encoder_layers", "encoder_width", "embed_dim", "mapping_dim")}
    datalist = pruned.workdir.parent / "datalist.json"
    case = json.loads(datalist.read_text())["training"][0]
    run(config_file="configs/inference.json", logging_file=False, input_files=case["image"], case_id="c0",
        ckpt_path=str(pruned.out / "model.pt"), output_dir=str(tmp_path), datalist_file=str(datalist),
        roi_size=MICRO["roi_size"], target_spacing=SHORT["target_spacing"], device="cpu", **settings)
    prediction = json.loads((tmp_path / "c0" / "prediction.json").read_text())
    pruned_names = {entry["prototype"] for entry in pruned.record["removed"]}
    listed = {f"s{p['scale']}_k{p['k']}" for p in prediction["prototypes"]}
    assert listed and not listed & pruned_names and len(listed) == 30 - len(pruned_names)
    maps = {path.name for path in (tmp_path / "c0").glob("prototype_s*_k*.nii.gz")}
    assert maps and not {f"prototype_{name}.nii.gz" for name in pruned_names} & maps
    assert prediction["push_record"].startswith(str(pruned.out))
