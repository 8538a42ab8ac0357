"""Prototype gallery after training: maps on each source case's grid, strips, provenance; train.json wiring."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from ignite.engine import Engine, Events
from test_engine_micro import micro_workflow
from test_evidence_fixtures import GEOMETRY, ODD_AFFINE, ODD_SHAPE, constructed_model, push_on, write_case

from scripts.data import preprocessing_transforms
from scripts.explain.gallery import GALLERY_JSON, PrototypeGallery, write_gallery
from scripts.push import PushResult


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    items = [write_case(root / f"s{i}", f"s{i}", seed=60 + i, high_grade=bool(i % 2)) for i in range(3)]
    return items, push_on(constructed_model(), items, **GEOMETRY)


def test_gallery_maps_lie_on_their_source_case_where_the_push_found_them(pushed, tmp_path):
    items, push = pushed
    preprocessing = preprocessing_transforms(**GEOMETRY)
    write_gallery(push, items, preprocessing, tmp_path)
    provenance = json.loads((tmp_path / GALLERY_JSON).read_text())
    assert [(r["scale"], r["k"], r["case_id"]) for r in provenance["records"]] == [
        (r["scale"], r["k"], r["case_id"]) for r in push.records]
    by_id = {item["case_id"]: item for item in items}
    for record in provenance["records"]:
        source = by_id[record["case_id"]]
        assert record["image_files"] == source["image"]
        written = nib.load(str(tmp_path / record["map_file"]))
        assert written.shape == ODD_SHAPE
        np.testing.assert_allclose(written.affine, ODD_AFFINE, atol=1e-5)
        volume = written.get_fdata()
        # The record's peak (network grid) and the written map's peak (source grid) are one place in mm.
        network_affine = np.asarray(preprocessing(source)["image"].affine)
        world = network_affine @ np.array([*record["peak_voxel"], 1.0])
        peak = np.array(np.unravel_index(int(volume.argmax()), volume.shape))
        assert np.linalg.norm(world[:3] - (ODD_AFFINE @ np.array([*peak, 1.0]))[:3]) < 2.0  # one 2 mm voxel
        # The constructed maps follow FLAIR: the tumour holds far more of the map than of the volume.
        tumour = nib.load(source["seg"]).get_fdata() > 0
        assert (volume * tumour).sum() / volume.sum() > 3 * tumour.mean()
        assert (tmp_path / record["strip_file"]).stat().st_size > 5_000


def test_gallery_refuses_records_of_unknown_cases(pushed, tmp_path):
    items, push = pushed
    missing = push.records[0]["case_id"]
    with pytest.raises(ValueError, match="not among"):
        others = [i for i in items if i["case_id"] != missing]
        write_gallery(push, others, preprocessing_transforms(**GEOMETRY), tmp_path)


def test_handler_writes_on_completion_and_skips_without_push(pushed, tmp_path):
    items, push = pushed
    engine = Engine(lambda e, b: None)
    PrototypeGallery(push, items, preprocessing_transforms(**GEOMETRY), tmp_path / "g").attach(engine)
    PrototypeGallery(PushResult(), items, preprocessing_transforms(**GEOMETRY), tmp_path / "none").attach(engine)
    engine.run([0], max_epochs=1)
    assert (tmp_path / "g" / GALLERY_JSON).is_file()
    assert not (tmp_path / "none").exists()
    assert Events.COMPLETED in engine._event_handlers


@pytest.mark.parametrize("rank0", [True, False])
def test_train_json_runs_the_gallery_on_rank0_only(data_synthetic_root, tmp_path, rank0):
    workflow = micro_workflow(tmp_path / "run", data_synthetic_root, is_not_rank0=not rank0)
    workflow.initialize()
    galleries = [h for h in workflow.parser.get_parsed_content("train#handlers") if isinstance(h, PrototypeGallery)]
    assert len(galleries) == int(rank0)
    if rank0:
        gallery = galleries[0]
        assert gallery.record is workflow.parser.get_parsed_content("push_record")
        assert gallery.directory == tmp_path / "run" / "out" / "fold0" / "gallery"
        train_ids = {item["case_id"] for item in workflow.parser.get_parsed_content("train#items")}
        assert {item["case_id"] for item in gallery.items} == train_ids
