"""The rules of the evidence a reader sees: "driven by", confidence warnings, brain-only overlays, flagged
peaks, colour bar, and the self-contained HTML page; each on constructed inputs."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from scripts.explain.evidence import (
    DRIVING_THRESHOLD,
    LOW_PROBABILITY,
    LOW_SIMILARITY_SPREAD,
    confidence_warnings,
    driving_sequence,
    unit_scaled,
)
from scripts.explain.input_grid import InputCase, InputMap, map_peak
from scripts.explain.report import COLOUR_BAR_LABEL, MAP_FLOOR, OUTSIDE, SourceView, case_figure
from scripts.explain.report_html import case_html, in_plane_box, start_slice

SHAPE = (12, 10, 8)


def test_driving_sequence_needs_a_drop_above_noise_that_dominates():
    # the case: all four drops are noise
    assert driving_sequence({"T1": -0.01, "T1-CE": -0.02, "T2": -0.015, "FLAIR": -0.01}) is None
    assert driving_sequence({"T1": -0.05, "T1-CE": 0.0, "T2": -0.02, "FLAIR": 0.01}) == "T1"  # at the threshold
    assert driving_sequence({"T1": -0.049, "T1-CE": 0.0, "T2": 0.0, "FLAIR": 0.0}) is None  # just below
    assert driving_sequence({"T1": -0.1, "T1-CE": -0.02, "T2": -0.15, "FLAIR": -0.6}) == "FLAIR"  # 0.6 ≥ 2 × 0.15
    assert driving_sequence({"T1": 0.0, "T1-CE": -0.2, "T2": -0.3, "FLAIR": 0.0}) is None  # 0.3 < 2 × 0.2
    assert driving_sequence({"T1": 0.0, "T1-CE": -0.1, "T2": 0.5, "FLAIR": 0.0}) == "T1-CE"  # a rise is no drop
    assert DRIVING_THRESHOLD == pytest.approx(0.05)


def test_confidence_warnings_on_low_probability_or_collapsed_similarities():
    collapsed = confidence_warnings({"LGG": 0.48, "HGG": 0.52}, [1.0, 0.999, 1.0, 0.998])
    assert len(collapsed) == 2 and "0.52" in collapsed[0] and "spread" in collapsed[1]
    assert confidence_warnings({"LGG": 0.01, "HGG": 0.99}, [0.1, 0.9, 0.5, 0.2]) == []
    just = LOW_PROBABILITY - 0.01
    assert len(confidence_warnings({"LGG": 1 - just, "HGG": just}, [0.0, 1.0])) == 1
    spread = [0.5 - LOW_SIMILARITY_SPREAD * 0.9, 0.5 + LOW_SIMILARITY_SPREAD * 0.9]  # std 0.9 × the threshold
    assert "spread" in confidence_warnings({"LGG": 0.0, "HGG": 1.0}, spread)[0]


def test_unit_scaled_divides_by_the_maximum():
    scaled, peak = unit_scaled(np.array([[0.0, 0.002], [0.004, 0.001]]))
    np.testing.assert_allclose(scaled, [[0.0, 0.5], [1.0, 0.25]])
    assert peak == pytest.approx(0.004)
    zeros, none = unit_scaled(np.zeros((2, 2)))
    assert none == 0.0 and not zeros.any()


LPS = np.diag([-2.0, -1.0, 1.5, 1.0])
"""An input grid whose first two axes run to the patient's left and posterior (BraTS files do), voxels 2 x 1 x 1.5 mm."""


def _constructed_case():
    """A 4-channel case on an LPS grid whose brain is a box (background = channel minimum), a map peaking
    outside it and one inside, and a record with one noise-only and one FLAIR-driven prototype."""
    image = np.zeros((4, *SHAPE), dtype=np.float32)
    brain = np.zeros(SHAPE, dtype=bool)
    brain[2:10, 2:8, 1:7] = True
    image[:, brain] = 1.0 + np.random.default_rng(0).random((4, int(brain.sum())))
    inside = np.zeros(SHAPE, dtype=np.float32)
    inside[4:7, 3:6, 2:5] = 0.5
    inside[5, 4, 3] = 1.0
    outside = np.full(SHAPE, 0.4, dtype=np.float32)
    outside[0, 0, 0] = 1.0  # peak in the background corner; 0.4 everywhere else
    entry = {"scale": 1, "class_weights": {"LGG": -0.5, "HGG": 1.0}, "contribution": {"LGG": -0.5, "HGG": 1.0},
             "similarity": 1.0, "source": None}
    record = {
        "predicted_class": "HGG", "class_names": ["LGG", "HGG"], "logits": {"LGG": 0.0, "HGG": 0.1},
        "probabilities": {"LGG": 0.48, "HGG": 0.52}, "scale_combination": "product", "true_class": "LGG",
        "warnings": confidence_warnings({"LGG": 0.48, "HGG": 0.52}, [1.0, 1.0]),
        "prototypes": [
            {**entry, "column": 0, "k": 0, "driving_sequence": None, "peak_in_brain": False,
             "sequence_evidence": {"T1": -0.01, "T1-CE": -0.02, "T2": -0.01, "FLAIR": -0.01}},
            {**entry, "column": 1, "k": 1, "driving_sequence": "FLAIR", "peak_in_brain": True,
             "sequence_evidence": {"T1": -0.01, "T1-CE": 0.0, "T2": -0.02, "FLAIR": -0.7}},
        ],
    }
    case = InputCase(image, LPS)
    maps = {name: InputMap(f"{name}.nii.gz", volume, 1.0, case.peak(volume))
            for name, volume in (("inside", inside), ("outside", outside))}
    return case, brain, maps, record


def _ras(volume: np.ndarray) -> np.ndarray:
    """An LPS volume in RAS order: the first two axes reversed (independent of the code under test)."""
    return np.asarray(volume)[::-1, ::-1, :]


def test_map_peak_flags_a_peak_outside_the_brain():
    case, brain, maps, _ = _constructed_case()
    assert map_peak(maps["inside"].volume, brain)[:2] == ([5, 4, 3], True)
    assert map_peak(maps["outside"].volume, brain)[:2] == ([0, 0, 0], False)
    assert map_peak(maps["outside"].volume, None).in_brain is True
    assert maps["inside"].peak.world_mm == [-10.0, -4.0, 4.5]  # LPS affine: -2 i, -1 j, 1.5 k


def test_display_turns_the_input_grid_to_ras_exactly():
    case, _, maps, _ = _constructed_case()
    np.testing.assert_array_equal(case.display(maps["inside"].volume), _ras(maps["inside"].volume))
    assert case.display_index([5, 4, 3]) == [SHAPE[0] - 1 - 5, SHAPE[1] - 1 - 4, 3]
    assert case.display_spacing() == [2.0, 1.0, 1.5]
    swapped = InputCase(np.zeros((1, 3, 4, 5)), np.array([[0, 2, 0, 0], [-1, 0, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]]))
    hot = np.zeros((3, 4, 5))
    hot[2, 1, 4] = 1  # axis 0 runs posterior (−y), axis 1 right (+x)
    shown = swapped.display(hot)
    assert shown.shape == (4, 3, 5) and swapped.display_index([2, 1, 4]) == [1, 0, 4] and shown[1, 0, 4] == 1
    assert swapped.display_spacing() == [2.0, 1.0, 3.0]


def test_start_slice_is_the_peak_slice_else_the_fullest_never_blank():
    brain = np.zeros((4, 4, 5), dtype=bool)
    brain[1:3, 1:3, 1:4] = True
    attention = np.zeros((4, 4, 5))
    attention[0, 0, 0] = 1.0  # the peak, outside the brain
    attention[1:3, 1:3, 2] = 0.5  # drawn on slice 2 only
    assert start_slice(attention, brain, 0) == 2
    attention[1, 1, 3] = 0.9
    assert start_slice(attention, brain, 3) == 3
    assert start_slice(np.zeros((4, 4, 5)), brain, 0) == 1  # drawn nowhere: the first slice with the most brain


def test_the_page_shows_the_brain_and_every_peak_in_plane_and_every_slice():
    brain = np.zeros((20, 20, 3), dtype=bool)
    brain[5:8, 6:9, 1] = True
    assert in_plane_box(brain, []) == (slice(1, 12), slice(2, 13), slice(0, 3))
    assert in_plane_box(brain, [[0, 19, 0]]) == (slice(0, 12), slice(2, 20), slice(0, 3))
    assert in_plane_box(np.zeros_like(brain), []) == (slice(0, 20), slice(0, 20), slice(0, 3))


def test_report_page_banner_brain_only_overlays_flagged_peaks_letters_and_grade():
    case, brain, maps, record = _constructed_case()
    source = SourceView("src", "HGG", maps["inside"].volume, [5, 4, 3], case.channels)
    figure = case_figure("case", case, record, maps["inside"], {0: maps["outside"], 1: maps["inside"]},
                         {0: None, 1: source})
    title = figure.get_suptitle()
    assert title.startswith("CAUTION: low confidence: top probability 0.52")
    assert title.count("\n") == len(record["warnings"]) + 2  # a line per warning, the case and grade lines, the ranking
    assert "predicted HGG (p(HGG) = 0.520, uncalibrated softmax)" in title
    assert "true grade LGG (prediction DISAGREES)" in title
    certain = {**record, "probabilities": {"LGG": 2e-5, "HGG": 0.99998}, "warnings": [],
               "calibration": {"temperature": 3.0, "method": "platt_targets", "cases": 12, "separated": True}}
    title = case_figure("case", case, certain, maps["inside"], {}, {}).get_suptitle()
    assert "p(HGG) > 0.999, calibrated (T = 3.00 on 12 validation cases)" in title and "1.00" not in title
    texts = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert any("no single sequence dominates" in t for t in texts) and any("driven by FLAIR" in t for t in texts)
    assert not any("of the brain" in t for t in texts)  # no brain_in_support: no note
    reached = case_figure("case", case, {**record, "brain_in_support": 0.42}, maps["inside"], {}, {})
    notes = [t.get_text() for ax in reached.axes for t in ax.texts if "class evidence map" in t.get_text()]
    assert len(notes) == 1 and "42 % of" in notes[0] and "shows no evidence" in notes[0].replace("\n", " ")
    assert any(ax.get_xlabel() == COLOUR_BAR_LABEL for ax in figure.axes)  # the colour bar, with its unit
    overlays = [(ax, ax.images[-1]) for ax in figure.axes if len(ax.images) == 2]
    assert len(overlays) == 4 * 3 + 1  # class map and two prototypes over 4 sequences; one source panel
    shown = _ras(brain)
    for ax, overlay in overlays:
        z = int(re.search(r"z=(\d+)", ax.get_title()).group(1))
        hidden = np.ma.getmaskarray(overlay.get_array())
        assert hidden[~shown[:, :, z].T].all()  # nothing drawn outside the brain
        values = np.asarray(overlay.get_array())
        assert (hidden[shown[:, :, z].T] == (values[shown[:, :, z].T] < MAP_FLOOR)).all()
        assert {t.get_text() for t in ax.texts} >= {"L", "R", "A", "P"}
    flagged = [ax for ax in figure.axes if "OUTSIDE the brain" in ax.get_title()]
    assert len(flagged) == 4 and all(ax.title.get_color() == OUTSIDE for ax in flagged)  # the outside map's row
    assert all("z=0" in ax.get_title() for ax in flagged)
    marker = flagged[0].lines[0]  # the input voxel (0, 0, 0) of an LPS grid is the RAS display's far corner
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (SHAPE[0] - 1, SHAPE[1] - 1)


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def test_html_page_is_self_contained_with_scrollable_slices_and_brain_only_overlays(tmp_path):
    case, brain, maps, record = _constructed_case()
    path = case_html(tmp_path / "report.html", "case", case, record, maps["inside"],
                     {0: maps["outside"], 1: maps["inside"]})
    page = path.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "http://" not in page.replace("http://www.w3", "")
    assert "CAUTION: low confidence" in page and "no single sequence dominates" in page
    assert "p(LGG) = 0.480, p(HGG) = 0.520 (uncalibrated softmax)" in page
    assert 'id="reach"' not in page  # a record without brain_in_support: maps over the whole volume
    reached = case_html(tmp_path / "reach.html", "case", case, {**record, "brain_in_support": 0.42}, maps["inside"], {})
    reach = re.search(r'<p id="reach">(.*?)</p>', reached.read_text(encoding="utf-8")).group(1)
    assert reach.startswith("Maps can show evidence in 42 % of the brain") and "a tumour there shows no evidence" in reach
    assert "true grade LGG (prediction DISAGREES)" in re.search(r'<p id="grade"[^>]*>(.*?)</p>', page).group(1)
    rows = re.findall(r"<tr><td>", page)
    assert len(rows) == len(record["prototypes"])
    data = json.loads(re.search(r'<script type="application/json" id="slices">(.*?)</script>', page, re.S).group(1))
    assert data["depth"] == SHAPE[2] and len(data["base"]) == 4 and all(len(b) == SHAPE[2] for b in data["base"])
    overlays = {o["id"]: o for o in data["overlays"]}
    assert set(overlays) == {"class", "s1_k0", "s1_k1"}
    first = _decode(data["base"][0][3])
    assert first.shape == (SHAPE[1], SHAPE[0])  # rows = j, columns = i
    assert data["height"] == round(256 * SHAPE[1] * 1.0 / (SHAPE[0] * 2.0))  # the slice's extent in mm
    overlay = overlays["s1_k0"]
    assert overlay["peak"] == [SHAPE[0] - 1, SHAPE[1] - 1, 0] and overlay["in_brain"] is False
    assert overlay["start"] != 0 and overlay["slices"][overlay["start"]]  # never the blank peak slice
    for z, uri in enumerate(overlay["slices"]):
        alpha = _decode(uri)[..., 3] if uri else np.zeros((SHAPE[1], SHAPE[0]))
        drawn = np.flipud(alpha > 0)  # back to origin-lower rows: (j, i)
        expected = (_ras(brain)[:, :, z] & (_ras(maps["outside"].volume)[:, :, z] >= MAP_FLOOR)).T
        np.testing.assert_array_equal(drawn, expected)
    script = re.findall(r"<script>(.*?)</script>", page, re.S)[-1]
    if shutil.which("node"):  # run the page's script on a stand-in DOM: it draws the start slice of the overlay
        harness = NODE_DOM.replace("PAYLOAD", json.dumps(json.dumps(data))) + script + NODE_REPORT
        ran = subprocess.run(["node", "-"], input=harness, text=True, capture_output=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        state = json.loads(ran.stdout)
        z = overlays["s1_k0"]["start"]
        assert state["zlabel"].startswith(f"z = {z} / {SHAPE[2] - 1}") and state["base0"] == data["base"][0][z]
        assert state["top0"] == overlays["s1_k0"]["slices"][z] and state["flag0"] == "block"
        assert state["vline0"] == f"{int((SHAPE[0] - 0.5) / SHAPE[0] * 256) - 1}px"
        assert state["hash"] == f"#overlay=s1_k0&z={z}"


NODE_DOM = """
const elements = {};
function element(id) {
  if (!elements[id]) {
    elements[id] = {id, value: '', src: '', textContent: '', style: {}, listeners: {},
                    addEventListener(kind, f) { this.listeners[kind] = f; }};
  }
  return elements[id];
}
const document = {getElementById: element};
const location = {hash: ''};
const history = {replaceState(state, title, url) { location.hash = url; }};
const window = {addEventListener() {}};
element('slices').textContent = PAYLOAD;
element('overlay').value = 'class';
element('opacity').value = '0.5';
"""
NODE_REPORT = """
element('overlay').value = 's1_k0';
element('overlay').listeners.change();
console.log(JSON.stringify({zlabel: element('zlabel').textContent, base0: element('base0').src,
                            top0: element('top0').src, flag0: element('flag0').style.display,
                            vline0: element('vline0').style.left, hash: location.hash}));
"""
