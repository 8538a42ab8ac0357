"""report.html in a real browser: headless Chromium opens deep links (an overlay and a slice, as a reader
would choose them), and the screenshot's pixels and the rendered DOM show the crosshair at the peak, the
overlay, the out-of-brain flag and the empty-slice note.

Skips without Chromium (``apt-get install chromium``), except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from test_evidence_report import SHAPE, _constructed_case

from scripts.explain.report import OUTSIDE
from scripts.explain.report_html import CROSSHAIR, PANEL_WIDTH, case_html

WINDOW = (1200, 1000)


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable; skip (fail under CI) without one."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "Chromium is not installed (apt-get install chromium); the browser test of report.html needs it"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    case, _, maps, record = _constructed_case()
    path = tmp_path_factory.mktemp("browser") / "report.html"
    return case_html(path, "case", case, record, maps["inside"], {0: maps["outside"], 1: maps["inside"]})


def _open(chromium: str, page: Path, link: str, out: Path) -> tuple[np.ndarray, str]:
    """Screenshot (rows, cols, 3) in [0, 1] and rendered DOM of ``page`` opened at ``#link``."""
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
             f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=3000"]
    url = page.as_uri() + (f"#{link}" if link else "")
    shot = out / "shot.png"
    env = {**os.environ, "HOME": str(out)}
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True, env=env, cwd=out)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True, env=env,
                         cwd=out).stdout
    return imread(shot)[..., :3], dom


def _near(pixels: np.ndarray, colour: str) -> np.ndarray:
    return (np.abs(pixels - np.array(to_rgb(colour))) < 0.04).all(-1)


def _crosshairs(pixels: np.ndarray) -> list[dict[str, int]]:
    """Each panel's crosshair: the horizontal line's rows and extent (the panel's width), the vertical line's."""
    magenta = _near(pixels, CROSSHAIR)
    rows = np.flatnonzero(magenta.sum(1) >= PANEL_WIDTH)  # the horizontal lines span every panel
    found = []
    for start, stop in _runs(np.flatnonzero(magenta[rows[0]])):
        columns = [c for c in range(start, stop) if magenta[:, c].sum() > 2 * len(rows)]  # vertical line
        top = int(np.flatnonzero(magenta[:, columns[0]])[0])
        bottom = int(np.flatnonzero(magenta[:, columns[0]])[-1]) + 1
        found.append({"left": start, "width": stop - start, "top": top, "height": bottom - top,
                      "x": columns[0] - start, "y": int(rows[0]) - top})
    return found


def _inside(pixels: np.ndarray, panel: dict[str, int]) -> np.ndarray:
    """The pixels of one panel."""
    return pixels[panel["top"]: panel["top"] + panel["height"], panel["left"]: panel["left"] + panel["width"]]


def _runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive runs of sorted indices as [start, stop)."""
    breaks = np.flatnonzero(np.diff(indices) > 1)
    starts = [indices[0], *indices[breaks + 1]]
    stops = [*indices[breaks] + 1, indices[-1] + 1]
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def test_crosshair_at_the_peak_with_the_overlay_drawn_and_no_flag(chromium, page, tmp_path):
    pixels, dom = _open(chromium, page, "overlay=s1_k1&z=3", tmp_path)
    panels = _crosshairs(pixels)
    assert len(panels) == 4 and all(p["width"] == PANEL_WIDTH for p in panels)
    # the inside map peaks at input voxel (5, 4, 3) of an LPS grid: RAS display voxel (6, 5, 3)
    display = (SHAPE[0] - 1 - 5, SHAPE[1] - 1 - 4)
    for panel in panels:
        x = int((display[0] + 0.5) / SHAPE[0] * panel["width"])
        y = int((SHAPE[1] - display[1] - 0.5) / SHAPE[1] * panel["height"])
        assert abs(panel["x"] - x) <= 1 and abs(panel["y"] - y) <= 1, panel
        # a few pixels off the crosshair, still in the peak voxel: the overlay's colour, not grey
        r, g, b = pixels[panel["top"] + panel["y"] + 4, panel["left"] + panel["x"] + 5]
        assert r - b > 0.15 and r - g > 0.15
    assert not any(_near(_inside(pixels, p), OUTSIDE).any() for p in panels)  # no out-of-brain flag
    assert "z = 3 / 7; peak of prototype s1 k1 on z = 3" in dom
    assert re.search(r'id="note"[^>]*style="display: none;?"', dom)
    assert dom.count('class="letter') == 4 * 4  # L, R, A, P on every panel


def test_an_empty_slice_gets_a_note_and_an_outside_peak_its_flag(chromium, page, tmp_path):
    pixels, dom = _open(chromium, page, "overlay=s1_k0&z=0", tmp_path)
    note = re.search(r'<p id="note"[^>]*>(.*?)</p>', dom).group(1)
    assert "prototype s1 k0: nothing ≥ 0.3 inside the brain on this slice (drawn on z = 1–6)" in note
    assert len(re.findall(r'id="flag\d" style="display: block;"', dom)) == 4
    panels = _crosshairs(pixels)
    assert len(panels) == 4
    for panel in panels:  # the crosshair at the far corner of the RAS display (input voxel (0, 0)), the flag on it
        assert abs(panel["x"] - int((SHAPE[0] - 0.5) / SHAPE[0] * panel["width"])) <= 1
        assert abs(panel["y"] - int(0.5 / SHAPE[1] * panel["height"])) <= 1
        assert _near(_inside(pixels, panel), OUTSIDE).sum() > 100


def test_opening_without_a_link_shows_the_class_map_on_a_drawn_slice(chromium, page, tmp_path):
    _, dom = _open(chromium, page, "", tmp_path)
    label = re.search(r'<span id="zlabel">(.*?)</span>', dom).group(1)
    assert label == "z = 3 / 7; peak of class map HGG on z = 3"
    assert re.search(r'id="note"[^>]*style="display: none;?"', dom)
    assert 'id="top0" alt="" src="data:image/png' in dom and 'id="top0" alt="" src="data:image/png;base64,' in dom
