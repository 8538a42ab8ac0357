"""Push (Eq. 2/20): winners checked against a brute-force search over single-case forward passes."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from monai.data import DataLoader, MetaTensor

from scripts.networks import UMProtoShare
from scripts.push import (
    PUSH_JSON,
    PushResult,
    class_mean_similarity,
    load_push,
    peak_voxel,
    push_prototypes,
    save_push,
)

TINY = {"encoder_layers": (1, 1), "encoder_width": 8, "embed_dim": 16, "mapping_dim": 12}
COUNTS = (2, 4, 2)
SHAPE = (4, 32, 32, 24)
CLASSES = ["LGG", "HGG"]
MAP_SHAPES = {1: [16, 16, 12], 2: [8, 8, 6], 3: [4, 4, 3]}


def tiny(sharing: str = "shared", seed: int = 0) -> UMProtoShare:
    torch.manual_seed(seed)
    return UMProtoShare(**TINY, prototypes_per_scale=COUNTS, prototype_sharing=sharing)


def make_cases(labels: list[int], seed: int = 1) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"image": torch.randn(*SHAPE, generator=generator) + 0.3 * i, "label": label, "case_id": f"case{i}"}
        for i, label in enumerate(labels)
    ]


def batches(cases: list[dict], batch_size: int = 2) -> list[dict]:
    """A hand-made loader: list of collated dict batches."""
    return [
        {
            "image": torch.stack([c["image"] for c in cases[i : i + batch_size]]),
            "label": torch.tensor([c["label"] for c in cases[i : i + batch_size]]),
            "case_id": [c["case_id"] for c in cases[i : i + batch_size]],
        }
        for i in range(0, len(cases), batch_size)
    ]


def brute_force(model: UMProtoShare, cases: list[dict]) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
    """S (N, K_total) and, per case, each scale's descriptors (K_s, E), one case at a time in eval mode."""
    model.eval()
    similarities, descriptors = [], []
    with torch.no_grad():
        for case in cases:
            explanation = model.explain(case["image"][None])
            similarities.append(explanation.similarities[0])
            descriptors.append([entry.descriptors[0] for entry in explanation.per_scale])
    return torch.stack(similarities), descriptors


def check_push(model, pushed, result, cases, owners=None):
    """Every prototype is its named case's descriptor, and that case has the maximal S among eligible cases."""
    similarities, descriptors = brute_force(model, cases)
    index = {c["case_id"]: n for n, c in enumerate(cases)}
    assert [r["column"] for r in result.records] == list(range(model.num_prototypes))
    for record, (s, k) in zip(result.records, model.prototype_columns):
        assert (record["scale"], record["k"]) == (s, k)
        n = index[record["case_id"]]
        assert record["label"] == cases[n]["label"] and record["class_name"] == CLASSES[cases[n]["label"]]
        column_sims = similarities[:, record["column"]]
        if owners is not None:
            own = torch.tensor([c["label"] == owners[record["column"]] for c in cases])
            assert record["label"] == owners[record["column"]]
            column_sims = column_sims.masked_fill(~own, -2.0)
        assert record["similarity"] == pytest.approx(float(column_sims[n]), abs=1e-5)
        assert float(column_sims[n]) >= float(column_sims.max()) - 1e-5
        scale_index = model.scales.index(s)
        assert torch.allclose(pushed.head(s).prototypes[k], descriptors[n][scale_index][k], atol=1e-5)
        assert record["map_shape"] == MAP_SHAPES[s]


def test_eq2_shared_push_takes_the_most_similar_case_over_all_cases():
    model = tiny()
    before = copy.deepcopy(model)
    cases = make_cases([0, 1, 0, 1, 1, 0])
    result = push_prototypes(model, batches(cases), CLASSES)
    check_push(before, model, result, cases)
    assert len({r["case_id"] for r in result.records}) > 1
    # after the push each prototype is maximally similar (S = 1) to its own source case
    similarities, _ = brute_force(model, cases)
    winners = [int(r["case_id"][4:]) for r in result.records]
    own_similarity = similarities[winners, range(model.num_prototypes)]
    assert torch.allclose(own_similarity, torch.ones(model.num_prototypes), atol=1e-5)


@pytest.mark.parametrize("sharing", ["shared", "class_specific"])
def test_class_similarity_is_each_class_mean_s_of_the_pushed_prototypes(sharing):
    model = tiny(sharing)
    cases = make_cases([0, 1, 0, 1, 1, 0, 1])
    result = push_prototypes(model, batches(cases, batch_size=3), CLASSES)
    similarities, _ = brute_force(model, cases)  # S of every case to the pushed prototypes
    labels = torch.tensor([c["label"] for c in cases])
    for record in result.records:
        for label, name in enumerate(CLASSES):
            expected = float(similarities[labels == label, record["column"]].mean())
            assert record["class_similarity"][name] == pytest.approx(expected, abs=1e-5)
    assert json.loads(json.dumps(result.records)) == result.records


def test_class_mean_similarity_hand_computed_and_empty_class():
    # two classes, one prototype p = (3, 4): class 0 has H = (1, 0) and (0, 2) (cos 0.6, 0.8), class 1 none
    units = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]]) + torch.tensor([[[0.0, 1.0]], [[0.0, 0.0]]])
    means = class_mean_similarity(units, torch.tensor([2.0, 0.0]), torch.tensor([[3.0, 4.0]]))
    assert means[0, 0].item() == pytest.approx(0.7)
    assert torch.isnan(means[1, 0])


def test_class_similarity_is_none_where_s_is_not_a_plain_cosine():
    torch.manual_seed(0)
    model = UMProtoShare(**TINY, prototypes_per_scale=COUNTS, similarity_clamp=True)
    result = push_prototypes(model, batches(make_cases([0, 1, 1])), CLASSES)
    assert all(record["class_similarity"] is None for record in result.records)
    result = push_prototypes(tiny(), batches(make_cases([1, 1, 1])), CLASSES)
    assert all(record["class_similarity"]["LGG"] is None for record in result.records)


def test_eq20_class_specific_push_searches_only_the_owning_class():
    model = tiny("class_specific")
    before = copy.deepcopy(model)
    owners = model.ownership.argmax(dim=1).tolist()
    # give the overall most similar case of column 0 the other class, so a class-blind search would pick it
    similarities, _ = brute_force(model, make_cases([0] * 6))
    global_best = int(similarities[:, 0].argmax())
    labels = [owners[0] if n != global_best else 1 - owners[0] for n in range(6)]
    labels[(global_best + 1) % 6] = 1 - owners[0]
    cases = make_cases(labels)
    result = push_prototypes(model, batches(cases, batch_size=4), CLASSES)
    check_push(before, model, result, cases, owners)
    assert result.records[0]["case_id"] != f"case{global_best}"


def test_push_on_monai_loader_with_metatensors_and_wrapped_model():
    model = tiny()
    before = copy.deepcopy(model)
    cases = make_cases([1, 0, 0, 1, 0])
    data = [{**c, "image": MetaTensor(c["image"], meta={"case": c["case_id"]})} for c in cases]
    loader = DataLoader(data, batch_size=2, shuffle=False, num_workers=0)
    result = push_prototypes(torch.nn.DataParallel(model), loader, CLASSES, device="cpu")
    check_push(before, model, result, cases)


def test_push_restores_modes_runs_in_eval_and_keeps_no_grad():
    model = tiny()
    model.train()
    model.set_trainable(["encoder", "mapping", "prototypes"])  # decoder etc. frozen: eval mode
    model.head(3).eval()
    modes = {name: m.training for name, m in model.named_modules()}
    assert len(set(modes.values())) == 2
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    push_prototypes(model, batches(make_cases([0, 1, 1])), CLASSES)
    assert {name: m.training for name, m in model.named_modules()} == modes
    for key, value in stats.items():  # batch-norm statistics would move in train mode
        assert torch.equal(model.state_dict()[key], value), key
    assert all(p.grad is None for p in model.parameters())
    assert all(model.head(s).prototypes.requires_grad for s in model.scales)


def test_ties_go_to_the_first_case():
    model = tiny()
    image = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(5))
    loader = [{"image": image.clone(), "label": torch.tensor([n % 2]), "case_id": [f"same{n}"]} for n in range(3)]
    result = push_prototypes(model, loader, CLASSES)
    assert [r["case_id"] for r in result.records] == ["same0"] * model.num_prototypes


def test_peak_voxel_hand_computed():
    # a one-hot 2x2x2 map at (1, 0, 1) resized to 4x4x4 (align_corners=False): output index 3 samples
    # source 1.25 → clamped to 1 (weight 1), index 2 samples 0.75 (weight 0.75); so the unique peak is (3, 0, 3)
    attention_map = torch.zeros(2, 2, 2)
    attention_map[1, 0, 1] = 1.0
    assert peak_voxel(attention_map, [4, 4, 4]) == [3, 0, 3]
    with pytest.raises(ValueError, match="spatial dim"):
        peak_voxel(attention_map, [4, 4])


@pytest.mark.parametrize("input_size", [None, (64, 48, 40)])
def test_peak_voxel_is_the_argmax_of_the_upsampled_winning_map(input_size):
    model = tiny()
    before = copy.deepcopy(model).eval()
    cases = make_cases([0, 1, 1, 0])
    result = push_prototypes(model, batches(cases), CLASSES, input_size=input_size)
    grid = list(input_size or SHAPE[1:])
    for record in result.records:
        n = int(record["case_id"][4:])
        with torch.no_grad():
            explanation = before.explain(cases[n]["image"][None])
        expected_map = explanation.per_scale[before.scales.index(record["scale"])].maps[0, record["k"]]
        assert torch.allclose(result.maps[record["column"]], expected_map, atol=1e-6)
        resized = F.interpolate(expected_map[None, None], size=grid, mode="trilinear", align_corners=False)[0, 0]
        peak = record["peak_voxel"]
        assert record["input_shape"] == grid
        assert all(0 <= i < n for i, n in zip(peak, grid))
        assert float(resized[tuple(peak)]) == pytest.approx(float(resized.max()))


def test_save_load_round_trip_and_deterministic_json(tmp_path):
    model = tiny()
    twin = copy.deepcopy(model)
    loader = batches(make_cases([0, 1, 0, 1]))
    result = push_prototypes(model, loader, CLASSES)
    path = save_push(result, tmp_path / "a" / "epoch_1")
    assert path == tmp_path / "a" / "epoch_1" / PUSH_JSON
    loaded = load_push(path.parent)
    assert loaded.class_names == CLASSES and loaded.records == result.records
    assert sorted(loaded.maps) == list(range(model.num_prototypes))
    assert all(torch.equal(loaded.maps[c], result.maps[c]) for c in result.maps)
    assert json.loads(path.read_text())["records"][3]["case_id"] == result.records[3]["case_id"]
    second = save_push(push_prototypes(twin, loader, CLASSES), tmp_path / "b")
    assert second.read_bytes() == path.read_bytes()


def test_push_result_state_dict_round_trip(tmp_path):
    result = push_prototypes(tiny(), batches(make_cases([0, 1, 1])), CLASSES)
    torch.save(result.state_dict(), tmp_path / "state.pt")
    restored = PushResult()
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert restored.class_names == result.class_names and restored.records == result.records
    assert all(torch.equal(restored.maps[c], result.maps[c]) for c in result.maps)
    with pytest.raises(ValueError, match="missing"):
        PushResult().load_state_dict({"records": []})


def test_class_specific_push_without_a_class_names_it():
    model = tiny("class_specific")
    prototypes = [model.head(s).prototypes.detach().clone() for s in model.scales]
    with pytest.raises(ValueError, match="HGG"):
        push_prototypes(model, batches(make_cases([0, 0, 0])), CLASSES)
    assert all(torch.equal(model.head(s).prototypes, p) for s, p in zip(model.scales, prototypes))


@pytest.mark.parametrize(
    "loader, class_names, message",
    [
        ([], CLASSES, "no case"),
        (batches(make_cases([0, 1])), ["LGG"], "2 classes"),
        (batches(make_cases([0, 2])), CLASSES, "case1"),
        ([{"image": torch.randn(1, *SHAPE), "label": torch.tensor([0])}], CLASSES, "case_id"),
        (
            [
                {"image": torch.randn(1, *SHAPE), "label": torch.tensor([0]), "case_id": ["a"]},
                {"image": torch.randn(1, 4, 32, 32, 16), "label": torch.tensor([1]), "case_id": ["b"]},
            ],
            CLASSES,
            r"one input size: cases \['b'\]",
        ),
    ],
)
def test_push_input_errors(loader, class_names, message):
    with pytest.raises(ValueError, match=message):
        push_prototypes(tiny(), loader, class_names)
