"""One self-contained HTML page per case: the answer, the contribution table, scrollable axial slices.

Everything is inside the file (slices as embedded PNG data, a few lines of plain JavaScript, no
external reference), so it opens offline in any browser and can be mailed or archived as it is.
The slices are those of :func:`scripts.explain.report.case_report`: the case on its input files' grid
turned to RAS (and cut in-plane to the brain and every peak, :func:`in_plane_box`), each map divided by its maximum and drawn inside the brain only where it reaches
``MAP_FLOOR``; peaks and in-brain flags are the ones ``maps.json`` and ``prediction.json`` carry.

The page shows, for the overlay chosen: a crosshair at its peak, a red flag on every panel when that
peak lies outside the brain, a note when nothing of it is drawn on the slice shown (or anywhere), and
the letters L/R/A/P at the panels' edges. Choosing an overlay moves the slider to its peak slice, or
to its fullest slice when nothing is drawn at the peak.

Deep links: ``report.html#overlay=<id>&z=<slice>`` opens with that overlay (``class`` for the class map,
``s<scale>_k<k>`` for a prototype, empty for none) at that axial slice; the address follows every
choice, so it can be copied to show someone the same view.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from scripts.explain.evidence import SEQUENCE_NAMES, calibration_note, probability_text, support_note
from scripts.explain.input_grid import InputCase, InputMap
from scripts.explain.report import (
    AXIAL_LETTERS,
    COLOUR_BAR_LABEL,
    MAP_COLOURS,
    MAP_FLOOR,
    OUTSIDE,
    class_means_text,
    driving_line,
    grade_line,
    ranking_text,
    separation_verdict,
)
from scripts.prototypes import SEPARATION_FLOOR

__all__ = ["CROSSHAIR", "PANEL_WIDTH", "case_html", "grey_slices", "in_plane_box", "overlay_slices", "start_slice"]

PANEL_WIDTH = 256
"""Width of each slice panel in CSS pixels; the height follows the slice's extent in mm."""
BOX_MARGIN = 4
"""Voxels shown around the brain's bounding box (and every peak) in each axial panel."""
CROSSHAIR = "#ff00ff"
"""Colour of the crosshair at the chosen map's peak (not in the map's colours nor in grey)."""


def _png(pixels: np.ndarray) -> str:
    """A uint8 (rows, cols) or (rows, cols, 4) array as a PNG data URI."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _display(plane: np.ndarray) -> np.ndarray:
    """An (H, W[, 4]) slice as image rows, as ``imshow(origin="lower")`` draws it: j upwards, i to the right."""
    return np.ascontiguousarray(np.swapaxes(plane, 0, 1)[::-1])


def grey_slices(volume: np.ndarray) -> list[str]:
    """Axial slices of one sequence (H, W, D), windowed on the volume's 1st–99.5th percentile, as PNG URIs."""
    low, high = np.percentile(volume, [1, 99.5])
    scaled = np.clip((volume - low) / max(high - low, 1e-6), 0, 1)
    pixels = (scaled * 255).round().astype(np.uint8)
    return [_png(_display(pixels[:, :, z])) for z in range(volume.shape[2])]


def _drawn(attention: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Where an overlay is drawn: inside ``brain`` and at least ``MAP_FLOOR``, bool (H, W, D)."""
    return (attention >= MAP_FLOOR) & brain


def overlay_slices(attention: np.ndarray, brain: np.ndarray) -> list[str | None]:
    """Axial slices of a map in [0, 1] (H, W, D) in ``MAP_COLOURS``, transparent below ``MAP_FLOOR`` and
    outside ``brain``; None for a slice with nothing to draw."""
    colours = (colormaps[MAP_COLOURS](attention) * 255).round().astype(np.uint8)
    colours[..., 3] = np.where(_drawn(attention, brain), 255, 0)
    slices: list[str | None] = []
    for z in range(attention.shape[2]):
        plane = colours[:, :, z]
        slices.append(_png(_display(plane)) if plane[..., 3].any() else None)
    return slices


def in_plane_box(brain: np.ndarray, peaks: Sequence[Sequence[int]], margin: int = BOX_MARGIN) -> tuple[slice, ...]:
    """The axial extent the page shows: the brain's (H, W, D) bounding box in the first two axes, grown to
    hold every peak [i, j, k] and by ``margin`` voxels on each side (within the volume); all slices."""
    points = [np.argwhere(brain.any(axis=2)), np.array([p[:2] for p in peaks]).reshape(-1, 2)]
    points = np.concatenate(points)
    if not len(points):
        return slice(0, brain.shape[0]), slice(0, brain.shape[1]), slice(0, brain.shape[2])
    low = np.maximum(points.min(0) - margin, 0)
    high = np.minimum(points.max(0) + margin + 1, brain.shape[:2])
    return slice(int(low[0]), int(high[0])), slice(int(low[1]), int(high[1])), slice(0, brain.shape[2])


def start_slice(attention: np.ndarray, brain: np.ndarray, peak_z: int) -> int:
    """The slice an overlay opens on: its peak's, where it is drawn there; else the slice where most of
    it is drawn; else (drawn nowhere) the slice with the most brain, so that the panels are never blank."""
    drawn = _drawn(attention, brain).sum(axis=(0, 1))
    if drawn[peak_z]:
        return int(peak_z)
    return int(drawn.argmax()) if drawn.any() else int(brain.sum(axis=(0, 1)).argmax())


def _relative_cells(entry: Mapping[str, Any], classes: Sequence[str]) -> list[str]:
    """S̄ and Δy − w·S̄ per class, or dashes where the record has no reference similarity."""
    relative = entry.get("relative_contribution")
    if relative is None:
        return ["–"] * (len(classes) + 1)
    return [f"{entry['reference_similarity']:.3f}", *(f"{relative[c]:+.3f}" for c in classes)]


def _table(record: Mapping[str, Any]) -> str:
    """The contribution table: one row per prototype, sorted as in ``prediction.json``."""
    classes = record["class_names"]
    sequences = list(record["prototypes"][0]["sequence_evidence"]) if record["prototypes"] else []
    head = ["scale", "k", "S", *(f"w {c}" for c in classes), *(f"Δy {c}" for c in classes), "S̄",
            *(f"Δy − w·S̄ {c}" for c in classes), *(f"ΔS {s}" for s in sequences), "driving", "source",
            "S on training cases", "separates", "peak in brain"]
    rows = []
    for entry in record["prototypes"]:
        source = entry.get("source") or {}
        cells = [entry["scale"], entry["k"], f"{entry['similarity']:.3f}",
                 *(f"{entry['class_weights'][c]:+.2f}" for c in classes),
                 *(f"{entry['contribution'][c]:+.3f}" for c in classes),
                 *_relative_cells(entry, classes),
                 *(f"{entry['sequence_evidence'][s]:+.3f}" for s in sequences),
                 driving_line(entry).split("\n")[0],
                 f"{source.get('case_id', '–')} ({source.get('class_name', '–')})" if source else "–",
                 class_means_text(entry) or "–",
                 separation_verdict(entry) or "–",
                 {True: "yes", False: "NO"}.get(entry.get("peak_in_brain"), "")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


_SCRIPT = """
const data = JSON.parse(document.getElementById('slices').textContent);
const byId = Object.fromEntries(data.overlays.map((o) => [o.id, o]));
const z = document.getElementById('z'), zLabel = document.getElementById('zlabel');
const choice = document.getElementById('overlay'), opacity = document.getElementById('opacity');
const note = document.getElementById('note');
function draw() {
  const slice = Number(z.value), o = byId[choice.value] || null;
  const uri = o ? o.slices[slice] : null;
  zLabel.textContent = 'z = ' + slice + ' / ' + (data.depth - 1) +
    (o ? '; peak of ' + o.label + ' on z = ' + o.peak[2] : '');
  const drawnOn = o ? o.slices.map((u, i) => (u ? i : -1)).filter((i) => i >= 0) : [];
  let message = '';
  if (o && !drawnOn.length) {
    message = o.label + ': nowhere \u2265 ' + data.floor + ' inside the brain, so nothing is drawn on any slice.';
  } else if (o && !uri) {
    message = o.label + ': nothing \u2265 ' + data.floor + ' inside the brain on this slice (drawn on z = ' +
      drawnOn[0] + '\u2013' + drawnOn[drawnOn.length - 1] + ').';
  }
  note.textContent = message;
  note.style.display = message ? 'block' : 'none';
  const x = o ? Math.floor((o.peak[0] + 0.5) / data.shape[0] * data.width) : 0;
  const y = o ? Math.floor((data.shape[1] - o.peak[1] - 0.5) / data.shape[1] * data.height) : 0;
  data.base.forEach((slices, c) => {
    document.getElementById('base' + c).src = slices[slice];
    const top = document.getElementById('top' + c);
    top.style.visibility = uri ? 'visible' : 'hidden';
    if (uri) { top.src = uri; }
    top.style.opacity = opacity.value;
    const h = document.getElementById('hline' + c), v = document.getElementById('vline' + c);
    h.style.display = v.style.display = o ? 'block' : 'none';
    h.style.top = (y - 1) + 'px';
    v.style.left = (x - 1) + 'px';
    document.getElementById('flag' + c).style.display = o && !o.in_brain ? 'block' : 'none';
  });
}
function show(id, slice) {
  choice.value = id in byId ? id : '';
  const o = byId[choice.value];
  if (Number.isInteger(slice)) { z.value = String(Math.min(Math.max(slice, 0), data.depth - 1)); }
  else if (o) { z.value = String(o.start); }
  draw();
}
function remember() {
  try { history.replaceState(null, '', '#overlay=' + encodeURIComponent(choice.value) + '&z=' + z.value); }
  catch (e) { /* an address that cannot change (some file viewers): the page still works */ }
}
function fromAddress() {
  const link = new URLSearchParams(location.hash.slice(1));
  const slice = link.has('z') ? Number(link.get('z')) : undefined;
  if (link.has('overlay') || link.has('z')) { show(link.has('overlay') ? link.get('overlay') : choice.value, slice); }
  else { draw(); }
}
choice.addEventListener('change', () => { show(choice.value); remember(); });
z.addEventListener('input', () => { draw(); remember(); });
opacity.addEventListener('input', draw);
window.addEventListener('hashchange', fromAddress);
fromAddress();
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #111; }
.banner { background: #ffe0e0; border: 2px solid #ff3030; color: #a00000; padding: .6em; margin: .6em 0; }
.grade { font-weight: bold; }
.disagrees { color: #a00000; }
.note { background: #fff3b0; border: 1px solid #c9a400; padding: .3em .6em; margin: .4em 0; }
.views { display: flex; flex-wrap: wrap; gap: 8px; }
.view { position: relative; overflow: hidden; background: #000; }
.view img { position: absolute; left: 0; top: 0; width: 100%; height: 100%; image-rendering: pixelated; }
.view span { position: absolute; color: #fff; font-size: 12px; text-shadow: 0 0 3px #000; }
.view .name { left: 4px; top: 2px; }
.view .L { left: 3px; top: 50%; } .view .R { right: 3px; top: 50%; }
.view .A { left: 50%; top: 2px; } .view .P { left: 50%; bottom: 2px; }
.view .letter { color: #ffff66; font-weight: bold; }
.view .flag { display: none; left: 4px; bottom: 18px; background: OUTSIDE; color: #fff; padding: 1px 4px;
  text-shadow: none; }
.cross { position: absolute; display: none; background: CROSSHAIR; }
.hline { left: 0; width: 100%; height: 2px; } .vline { top: 0; height: 100%; width: 2px; }
.bar { width: 300px; height: 12px; background: linear-gradient(to right, GRADIENT); }
table { border-collapse: collapse; font-size: 12px; margin-top: 1em; }
td, th { border: 1px solid #bbb; padding: 2px 6px; text-align: right; }
"""


def _panel(c: int, name: str, width: int, height: int) -> str:
    """One slice panel: grey slice, overlay, name, orientation letters, out-of-brain flag, crosshair (on top)."""
    letters = "".join(f'<span class="letter {v}">{v}</span>' for v in AXIAL_LETTERS.values())
    return (f'<div class="view" style="width: {width}px; height: {height}px">'
            f'<img id="base{c}" alt="{html.escape(name)}"><img id="top{c}" alt="">'
            f'<span class="name">{html.escape(name)}</span>{letters}'
            f'<span class="flag" id="flag{c}">peak OUTSIDE the brain</span>'
            f'<div class="cross hline" id="hline{c}"></div><div class="cross vline" id="vline{c}"></div></div>')


def case_html(
    path: str | PathLike,
    case_id: str,
    case: InputCase,
    record: Mapping[str, Any],
    class_map: InputMap,
    maps: Mapping[int, InputMap],
) -> Path:
    """Write the page of one case.

    Args:
        path: the HTML file to write.
        case_id: shown in the title.
        case: the case on its input files' grid.
        record: ``prediction.json``'s content (its ``true_class``, when known, is shown beside the prediction).
        class_map: the predicted class's evidence map on that grid, with its peak.
        maps: classifier column → a top prototype's map on that grid, with its peak.
    """
    columns = {entry["column"]: entry for entry in record["prototypes"]}
    named = {"class": (f"class map {record['predicted_class']}", class_map)}
    named |= {f"s{columns[c]['scale']}_k{columns[c]['k']}": (f"prototype s{columns[c]['scale']} k{columns[c]['k']}", m)
              for c, m in maps.items()}
    peaks = {key: case.display_index(attention.peak.voxel) for key, (_, attention) in named.items()}
    box = in_plane_box(case.display(case.brain), list(peaks.values()))
    brain = case.display(case.brain)[box]
    overlays = []
    for key, (label, attention) in named.items():
        volume = case.display(attention.volume)[box]
        peak = [peaks[key][0] - box[0].start, peaks[key][1] - box[1].start, peaks[key][2]]
        overlays.append({"id": key, "label": label, "peak": peak, "in_brain": attention.peak.in_brain,
                         "start": start_slice(volume, brain, peak[2]), "slices": overlay_slices(volume, brain)})
    shape = list(brain.shape)
    spacing = case.display_spacing()
    height = max(1, round(PANEL_WIDTH * shape[1] * spacing[1] / (shape[0] * spacing[0])))
    data = {"depth": shape[2], "shape": shape, "width": PANEL_WIDTH, "height": height, "floor": MAP_FLOOR,
            "base": [grey_slices(case.display(c)[box]) for c in case.channels], "overlays": overlays}
    names = [SEQUENCE_NAMES[c] if c < len(SEQUENCE_NAMES) else f"channel {c}" for c in range(len(case.channels))]
    views = "".join(_panel(c, n, PANEL_WIDTH, height) for c, n in enumerate(names))
    options = '<option value="">none</option>' + "".join(
        f'<option value="{o["id"]}"{" selected" if i == 0 else ""}>{html.escape(o["label"])}</option>'
        for i, o in enumerate(overlays)
    )
    predicted = record["predicted_class"]
    probabilities = ", ".join(html.escape(probability_text(n, v)) for n, v in record["probabilities"].items())
    note = calibration_note(record.get("calibration", {}), record.get("flip_average", False), record.get("precision", "fp32"))
    probabilities += f" ({html.escape(note)})"
    grade = grade_line(record)
    disagrees = grade and record["true_class"] != predicted
    known = (f'<p id="grade" class="grade{" disagrees" if disagrees else ""}">predicted {html.escape(predicted)}; '
             f"{html.escape(grade)}</p>" if grade else "")
    reach = support_note(record.get("brain_in_support"))
    reach = "" if reach is None else f'<p id="reach">{html.escape(reach[0].upper() + reach[1:])}.</p>'
    banners = "".join(f'<div class="banner">CAUTION: {html.escape(w)}</div>' for w in record.get("warnings", []))
    stops = ", ".join(
        "#%02x%02x%02x" % tuple(int(255 * v) for v in colormaps[MAP_COLOURS](x)[:3]) for x in np.linspace(0, 1, 9)
    )
    style = _STYLE.replace("GRADIENT", stops).replace("CROSSHAIR", CROSSHAIR).replace("OUTSIDE", OUTSIDE)
    payload = json.dumps(data).replace("</", "<\\/")  # no "</script>" inside the script element
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(case_id)}: {html.escape(predicted)}</title>
<style>{style}</style></head>
<body>
<h1>{html.escape(case_id)}: predicted {html.escape(predicted)}</h1>
{known}<p>{probabilities}. Research use only: not a diagnosis.</p>
{reach}
{banners}
<p><label>overlay <select id="overlay">{options}</select></label>
<label> opacity <input id="opacity" type="range" min="0" max="1" step="0.05" value="0.5"></label></p>
<p>I <input id="z" type="range" min="0" max="{shape[2] - 1}" value="{overlays[0]['start']}"
 style="width: 520px"> S <span id="zlabel"></span></p>
<p id="note" class="note" style="display: none"></p>
<div class="views">{views}</div>
<p>Axial slices on the input files' grid, turned to RAS and cut to the brain (and every peak): the
patient's right on the right (R), anterior at the top (A); the slider runs from inferior (I) to
superior (S). The crosshair marks the chosen map's
peak (the voxel <code>maps.json</code> gives); it is flagged when that voxel lies outside the brain.
Link to a view: <code>report.html#overlay=s1_k0&amp;z=20</code>.</p>
<div class="bar"></div><p style="font-size: 12px">0 → 1: {html.escape(COLOUR_BAR_LABEL)}</p>
<h2>Prototype evidence</h2>
<p>Sorted: {html.escape(ranking_text(record))}. S: similarity; w: classifier weight; Δy = S·w, the
prototype's contribution to each class logit (Eq. 31); S̄: the mean of its S over the training cases, each class
weighted alike; Δy − w·S̄ = w·(S − S̄): its contribution compared with a training case of average similarity (a
prototype every case matches alike adds about nothing there, however large its Δy);
ΔS: change of S when a sequence is set to its mean (negative: the sequence supports the match);
S on training cases: the prototype's mean S over each class's training cases (the push set); "separates": whether
that mean is higher, by at least {SEPARATION_FLOOR}, for the class it votes for than for any other (a prototype that
does not is a match every class shows: weak evidence for the grade).</p>
{_table(record)}
<script type="application/json" id="slices">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
