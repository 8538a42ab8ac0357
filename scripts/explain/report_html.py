"""One self-contained HTML page per case: the answer, the contribution table, scrollable axial slices.

Everything is inside the file (slices as embedded PNG data, a few lines of plain JavaScript, no
external reference), so it opens offline in any browser and can be mailed or archived as it is.
The slices are those of :func:`scripts.explain.report.case_report`: the preprocessed case on the network
grid, each map divided by its maximum and drawn inside the brain only where it reaches ``MAP_FLOOR``.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from PIL import Image

from scripts.explain.evidence import SEQUENCE_NAMES, unit_scaled
from scripts.metrics import brain_mask
from scripts.explain.report import COLOUR_BAR_LABEL, MAP_COLOURS, MAP_FLOOR, driving_line, map_peak

__all__ = ["case_html", "grey_slices", "overlay_slices"]


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


def overlay_slices(attention: np.ndarray, brain: np.ndarray) -> list[str | None]:
    """Axial slices of a map in [0, 1] (H, W, D) in ``MAP_COLOURS``, transparent below ``MAP_FLOOR`` and
    outside ``brain``; None for a slice with nothing to draw."""
    colours = (colormaps[MAP_COLOURS](attention) * 255).round().astype(np.uint8)
    colours[..., 3] = np.where((attention >= MAP_FLOOR) & brain, 255, 0)
    slices: list[str | None] = []
    for z in range(attention.shape[2]):
        plane = colours[:, :, z]
        slices.append(_png(_display(plane)) if plane[..., 3].any() else None)
    return slices


def _table(record: Mapping[str, Any]) -> str:
    """The contribution table: one row per prototype, sorted as in ``prediction.json``."""
    classes = record["class_names"]
    sequences = list(record["prototypes"][0]["sequence_evidence"]) if record["prototypes"] else []
    head = ["scale", "k", "S", *(f"w {c}" for c in classes), *(f"Δy {c}" for c in classes),
            *(f"ΔS {s}" for s in sequences), "driving", "source", "peak in brain"]
    rows = []
    for entry in record["prototypes"]:
        source = entry.get("source") or {}
        cells = [entry["scale"], entry["k"], f"{entry['similarity']:.3f}",
                 *(f"{entry['class_weights'][c]:+.2f}" for c in classes),
                 *(f"{entry['contribution'][c]:+.3f}" for c in classes),
                 *(f"{entry['sequence_evidence'][s]:+.3f}" for s in sequences),
                 driving_line(entry).split("\n")[0],
                 f"{source.get('case_id', '–')} ({source.get('class_name', '–')})" if source else "–",
                 {True: "yes", False: "NO"}.get(entry.get("peak_in_brain"), "")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


_SCRIPT = """
const data = JSON.parse(document.getElementById('slices').textContent);
const z = document.getElementById('z'), zLabel = document.getElementById('zlabel');
const choice = document.getElementById('overlay'), opacity = document.getElementById('opacity');
function draw() {
  const slice = Number(z.value), key = choice.value;
  zLabel.textContent = 'z = ' + slice + ' / ' + (data.depth - 1);
  data.base.forEach((slices, c) => {
    document.getElementById('base' + c).src = slices[slice];
    const top = document.getElementById('top' + c);
    const uri = key ? data.overlays[key].slices[slice] : null;
    top.style.visibility = uri ? 'visible' : 'hidden';
    if (uri) { top.src = uri; }
    top.style.opacity = opacity.value;
  });
}
choice.addEventListener('change', () => {
  if (choice.value) { z.value = data.overlays[choice.value].peak[2]; }
  draw();
});
z.addEventListener('input', draw);
opacity.addEventListener('input', draw);
draw();
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #111; }
.banner { background: #ffe0e0; border: 2px solid #ff3030; color: #a00000; padding: .6em; margin: .6em 0; }
.views { display: flex; flex-wrap: wrap; gap: 8px; }
.view { position: relative; width: 256px; height: 256px; }
.view img { position: absolute; left: 0; top: 0; width: 256px; height: 256px; image-rendering: pixelated; }
.view span { position: absolute; left: 4px; top: 2px; color: #fff; font-size: 12px; text-shadow: 0 0 3px #000; }
.bar { width: 300px; height: 12px; background: linear-gradient(to right, GRADIENT); }
table { border-collapse: collapse; font-size: 12px; margin-top: 1em; }
td, th { border: 1px solid #bbb; padding: 2px 6px; text-align: right; }
"""


def case_html(
    path: str | PathLike,
    case_id: str,
    image: np.ndarray,
    record: Mapping[str, Any],
    class_map: np.ndarray,
    maps: Mapping[int, np.ndarray],
) -> Path:
    """Write the page of one case.

    Args:
        path: the HTML file to write.
        case_id: shown in the title.
        image: the preprocessed case, (C_in, H, W, D).
        record: ``prediction.json``'s content.
        class_map: the predicted class's evidence map, (H, W, D).
        maps: classifier column → a top prototype's map, (H, W, D).
    """
    brain = brain_mask(image).numpy()
    columns = {entry["column"]: entry for entry in record["prototypes"]}
    overlays: dict[str, Any] = {}
    named = {f"class map {record['predicted_class']}": class_map}
    named |= {f"prototype s{columns[c]['scale']} k{columns[c]['k']}": m for c, m in maps.items()}
    for name, volume in named.items():
        scaled = unit_scaled(volume)[0]
        overlays[name] = {"peak": map_peak(scaled, brain)[0], "slices": overlay_slices(scaled, brain)}
    first = next(iter(overlays))
    data = {"depth": int(image.shape[3]), "base": [grey_slices(np.asarray(c)) for c in image], "overlays": overlays}
    names = [SEQUENCE_NAMES[c] if c < len(SEQUENCE_NAMES) else f"channel {c}" for c in range(image.shape[0])]
    views = "".join(
        f'<div class="view"><img id="base{c}" alt="{html.escape(n)}"><img id="top{c}" alt="">'
        f"<span>{html.escape(n)}</span></div>"
        for c, n in enumerate(names)
    )
    options = '<option value="">none</option>' + "".join(
        f'<option value="{html.escape(n)}"{" selected" if n == first else ""}>{html.escape(n)}</option>'
        for n in overlays
    )
    predicted = record["predicted_class"]
    probabilities = ", ".join(f"p({html.escape(n)}) = {v:.3f}" for n, v in record["probabilities"].items())
    known = f"; true grade {html.escape(str(record['true_class']))}" if record.get("true_class") else ""
    banners = "".join(f'<div class="banner">CAUTION: {html.escape(w)}</div>' for w in record.get("warnings", []))
    stops = ", ".join(
        "#%02x%02x%02x" % tuple(int(255 * v) for v in colormaps[MAP_COLOURS](x)[:3]) for x in np.linspace(0, 1, 9)
    )
    payload = json.dumps(data).replace("</", "<\\/")  # no "</script>" inside the script element
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(case_id)}: {html.escape(predicted)}</title>
<style>{_STYLE.replace("GRADIENT", stops)}</style></head>
<body>
<h1>{html.escape(case_id)}: predicted {html.escape(predicted)}</h1>
<p>{probabilities}{known}. Research use only: not a diagnosis.</p>
{banners}
<p><label>overlay <select id="overlay">{options}</select></label>
<label> opacity <input id="opacity" type="range" min="0" max="1" step="0.05" value="0.5"></label></p>
<p><input id="z" type="range" min="0" max="{image.shape[3] - 1}" value="{overlays[first]['peak'][2]}"
 style="width: 520px"> <span id="zlabel"></span></p>
<div class="views">{views}</div>
<p>Axial slices on the network grid (patient's right on the right); the slider starts at the overlay's peak.</p>
<div class="bar"></div><p style="font-size: 12px">0 → 1: {html.escape(COLOUR_BAR_LABEL)}</p>
<h2>Prototype evidence</h2>
<p>S: similarity; w: classifier weight; Δy = S·w, the prototype's contribution to each class logit (Eq. 31);
ΔS: change of S when a sequence is set to its mean (negative: the sequence supports the match).</p>
{_table(record)}
<script type="application/json" id="slices">{payload}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path
