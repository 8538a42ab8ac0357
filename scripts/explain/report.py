"""Figure-5-style pages: a case's prototype evidence, gallery strips, sharedness rows.

Drawn on bare matplotlib ``Figure`` objects (no pyplot), so importing this never switches a backend.

The case page (:func:`case_figure`) draws the case on its input files' grid, turned to RAS for display
(:class:`~scripts.explain.input_grid.InputCase`), with the maps and peaks that ``maps.json`` and
``prediction.json`` carry (:class:`~scripts.explain.input_grid.InputMap`); source cases, gallery strips
and sharedness rows are on the network grid (RAS too). Slices are axial, shown with the patient's right
on the right and anterior at the top (neurological view), letters on every panel.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from scripts.data.foreground import brain_mask
from scripts.explain.evidence import (
    DRIVING_DOMINANCE,
    DRIVING_THRESHOLD,
    SEQUENCE_NAMES,
    calibration_note,
    probability_text,
    support_note,
    unit_scaled,
)
from scripts.explain.input_grid import InputCase, InputMap, map_peak
from scripts.maps import DEFAULT_SCALE_COMBINATION
from scripts.prototypes import SEPARATION_FLOOR

__all__ = [
    "MAP_COLOURS",
    "MAP_FLOOR",
    "SourceView",
    "case_figure",
    "case_report",
    "class_means_text",
    "contribution_lines",
    "driving_line",
    "grade_line",
    "overlay_panel",
    "prototype_strip",
    "ranking_text",
    "separation_line",
    "separation_verdict",
    "sharedness_figure",
    "source_panel",
]

MAP_FLOOR = 0.3
"""Map values (divided by the map's maximum) below this are left transparent in overlays."""
MAP_COLOURS = "jet"
"""Colour map of every overlay (and of the colour bar)."""
COLOUR_BAR_LABEL = (
    f"map value / the map's maximum (1 = its peak); below {MAP_FLOOR} and outside the brain not drawn"
)
OUTSIDE = "#ff3030"
"""Colour of a peak that lies outside the brain (marker and title), and of nothing else on a page."""
CAUTION = "#a00000"
"""Colour of the caution banner's text."""
AXIAL_LETTERS = {"left": "L", "right": "R", "top": "A", "bottom": "P"}
"""Patient directions at the edges of an axial RAS slice drawn with ``origin="lower"``."""
EMPTY_NOTE = f"nothing ≥ {MAP_FLOOR} in the brain on this slice"


@dataclass
class SourceView:
    """The training case a prototype was pushed from, as far as it can be shown."""

    case_id: str
    class_name: str
    attention_map: np.ndarray
    """The pushed map on the source's network grid, (H, W, D)."""
    peak: Sequence[int]
    """Peak voxel of the map on that grid, [i, j, l]."""
    image: np.ndarray | None = None
    """The preprocessed source case, (C_in, H, W, D), or None when its files are unavailable."""
    note: str = ""
    """Why the image is missing, shown in place of it."""


def _axial(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of (H, W, D), transposed for ``imshow(origin="lower")``."""
    return np.asarray(volume)[:, :, int(z)].T


def _brain(image: np.ndarray | None) -> np.ndarray | None:
    """Brain mask (H, W, D) of a preprocessed case (C_in, H, W, D), or None without an image."""
    return None if image is None else brain_mask(np.asarray(image)).numpy()


def grade_line(prediction: Mapping[str, Any]) -> str:
    """"true grade X (prediction agrees | DISAGREES)" when ``prediction["true_class"]`` is known, else ""."""
    true_class = prediction.get("true_class")
    if not true_class:
        return ""
    agrees = true_class == prediction["predicted_class"]
    return f"true grade {true_class} ({'prediction agrees' if agrees else 'prediction DISAGREES'})"


def overlay_panel(
    ax: Axes,
    background: np.ndarray | None,
    attention: np.ndarray,
    title: str,
    peak: Sequence[int] | None = None,
    brain: np.ndarray | None = None,
    peak_in_brain: bool = True,
) -> None:
    """A 2-D slice in grey with a map slice in [0, 1] on top, drawn only inside ``brain`` (2-D, when given)
    and where it reaches ``MAP_FLOOR``.

    ``peak`` ([i, j], array indices of the untransposed slice) is marked with a white cross, or with a red
    cross and a red title when ``peak_in_brain`` is False.
    """
    if background is not None:
        low, high = np.percentile(background, [1, 99.5])
        ax.imshow(background, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), origin="lower")
    hidden = attention < MAP_FLOOR if brain is None else (attention < MAP_FLOOR) | ~brain
    alpha = 0.45 if background is not None else 1.0
    ax.imshow(np.ma.masked_where(hidden, attention), cmap=MAP_COLOURS, vmin=0, vmax=1, alpha=alpha, origin="lower")
    colour = "white" if peak_in_brain else OUTSIDE
    if peak is not None:
        ax.plot([peak[0]], [peak[1]], marker="x" if not peak_in_brain else "+", color=colour, markersize=8,
                markeredgewidth=1.5)
    if not (~hidden).any():
        ax.text(0.5, 0.02, EMPTY_NOTE, transform=ax.transAxes, ha="center", va="bottom", fontsize=5, color="white",
                bbox={"facecolor": "black", "alpha": 0.6, "pad": 1})
    for edge, letter in AXIAL_LETTERS.items():
        x, y = {"left": (0.02, 0.5), "right": (0.98, 0.5), "top": (0.5, 0.98), "bottom": (0.5, 0.02)}[edge]
        ax.text(x, y, letter, transform=ax.transAxes, ha={"left": "left", "right": "right"}.get(edge, "center"),
                va={"top": "top", "bottom": "bottom"}.get(edge, "center"), fontsize=6, color="yellow")
    ax.set_title(title + ("" if peak_in_brain else "\npeak OUTSIDE the brain"), fontsize=7,
                 color="black" if peak_in_brain else OUTSIDE)
    ax.set_xticks([])
    ax.set_yticks([])


def source_panel(ax: Axes, source: SourceView | None, sequence: int) -> None:
    """The source case at its own peak slice, on sequence ``sequence``; the map alone with a note otherwise."""
    if source is None:
        ax.text(0.5, 0.5, "no push record:\nsource unknown", ha="center", va="center", fontsize=7)
        ax.axis("off")
        return
    z = int(source.peak[2])
    brain = _brain(source.image)
    inside = True if brain is None else bool(brain[tuple(int(i) for i in source.peak)])
    background = None if source.image is None else _axial(source.image[sequence], z)
    label = SEQUENCE_NAMES[sequence] if source.image is not None else "map only"
    title = f"source {source.case_id} ({source.class_name})\n{label}, z={z}"
    overlay_panel(ax, background, _axial(unit_scaled(source.attention_map)[0], z), title, source.peak[:2],
                  None if brain is None else _axial(brain, z), inside)
    if source.image is None:
        ax.text(0.5, 0.02, textwrap.fill(source.note, 34), transform=ax.transAxes, ha="center", va="bottom",
                fontsize=5, color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1})


def driving_line(entry: Mapping[str, Any]) -> str:
    """"driven by <sequence>" when :func:`scripts.explain.evidence.driving_sequence` found one, else why not."""
    if entry["driving_sequence"] is not None:
        return f"driven by {entry['driving_sequence']}"
    return f"no single sequence dominates\n  (needs ΔS ≤ −{DRIVING_THRESHOLD}, {DRIVING_DOMINANCE:g}× any other)"


def separation_verdict(entry: Mapping[str, Any]) -> str | None:
    """"yes" (``separates_classes``), "NO: matches the other class as well" / "... better" (separation at or
    below −floor), or None when unknown."""
    if entry.get("separates_classes") is None:
        return None
    if entry["separates_classes"]:
        return "yes"
    return "NO: matches the other class " + ("better" if entry["separation"] <= -SEPARATION_FLOOR else "as well")


def class_means_text(entry: Mapping[str, Any]) -> str | None:
    """The prototype's mean S on each class's training (push-set) cases, "LGG 0.81, HGG 0.83"; None if not recorded."""
    means = (entry.get("source") or {}).get("class_similarity")
    if not means:
        return None
    return ", ".join(f"{name} {'–' if v is None else f'{v:.2f}'}" for name, v in means.items())


def separation_line(entry: Mapping[str, Any]) -> str:
    """:func:`class_means_text`, and a warning when the prototype does not separate the classes."""
    means = class_means_text(entry)
    if means is None:
        return "training cases: S per class not recorded"
    verdict = separation_verdict(entry)
    text = f"training S: {means}"
    return text if verdict in (None, "yes") else f"{text}\n  ! {verdict.removeprefix('NO: ')}: weak evidence"


def ranking_text(record: Mapping[str, Any]) -> str:
    """How a ``prediction.json`` record's prototypes are sorted (its ``evidence_ranking``), for both pages."""
    predicted = record["predicted_class"]
    if record.get("evidence_ranking", "contribution") == "relative":
        return (f"those voting for {predicted} (w > 0) first, each by its contribution to {predicted} relative to "
                "the training cases' mean S")
    return f"by contribution to {predicted}"


def contribution_lines(entry: Mapping[str, Any]) -> list[str]:
    """"similarity × weight = contribution" per class, the same relative to the training cases' mean S (when
    recorded), the push-set means, then the per-sequence similarity change."""
    similarity = entry["similarity"]
    lines = [f"scale {entry['scale']}, k {entry['k']}:  S = {similarity:.2f}"]
    for name, weight in entry["class_weights"].items():
        lines.append(f"{name}: {similarity:.2f} × {weight:+.2f} = {entry['contribution'][name]:+.2f}")
    relative = entry.get("relative_contribution")
    if relative is not None:
        lines.append(f"vs training mean S {entry['reference_similarity']:.2f}:")
        lines.append("  " + "  ".join(f"{name} {value:+.2f}" for name, value in relative.items()))
    lines += separation_line(entry).split("\n")
    changes = [f"{name} {delta:+.2f}" for name, delta in entry["sequence_evidence"].items()]
    lines.append("ΔS, sequence set to its mean:")
    lines += ["  " + "  ".join(changes[i : i + 2]) for i in range(0, len(changes), 2)]
    lines.append(driving_line(entry))
    return lines


def _sequence_row(fig: Figure, cells: Sequence[Any], case: InputCase, channels: Sequence[np.ndarray],
                  brain: np.ndarray, attention: InputMap, label: str) -> list[Axes]:
    """The case's sequences (``channels``, ``brain``: displayed) at the axial slice through the map's peak."""
    peak = case.display_index(attention.peak.voxel)
    volume = case.display(attention.volume)
    z = peak[2]
    axes = []
    for c, cell in enumerate(cells):
        name = SEQUENCE_NAMES[c] if c < len(SEQUENCE_NAMES) else f"channel {c}"
        ax = fig.add_subplot(cell)
        overlay_panel(ax, _axial(channels[c], z), _axial(volume, z), f"{label}: {name}, z={z}", peak[:2],
                      _axial(brain, z), attention.peak.in_brain)
        axes.append(ax)
    return axes


def _text(fig: Figure, cell: Any, lines: Sequence[str]) -> None:
    ax = fig.add_subplot(cell)
    ax.axis("off")
    ax.text(0.0, 0.5, "\n".join(lines), va="center", fontsize=7, family="monospace")


def case_figure(
    case_id: str,
    case: InputCase,
    prediction: Mapping[str, Any],
    class_map: InputMap,
    maps: Mapping[int, InputMap],
    sources: Mapping[int, SourceView | None],
) -> Figure:
    """The page of :func:`case_report`: the class evidence map, then a row per top prototype (those in
    ``maps``), by scale then rank (:func:`ranking_text`); a red banner first when ``prediction["warnings"]``
    is not empty.

    Each prototype row: the case's sequences at the axial slice of the prototype's peak with its map,
    the source case at the prototype's own peak (on the sequence that drives the match, else FLAIR),
    and "S × w = contribution" per class (and relative to the training mean S) with the per-sequence
    similarity change. Maps are divided by their maximum and drawn inside the brain only, on one colour
    bar; a peak outside the brain is flagged in red. The title gives the true grade and whether the
    prediction agrees when ``prediction["true_class"]`` is known.

    Args:
        case_id: shown in the title.
        case: the case on its input files' grid.
        prediction: ``prediction.json``'s content (:func:`scripts.explain.evidence.prediction_record` and more).
        class_map: the predicted class's evidence map on that grid, with its peak.
        maps: column → the prototype's map on that grid, with its peak.
        sources: column → its source case (None when no push record).
    """
    entries = [e for e in prediction["prototypes"] if e["column"] in maps]
    entries.sort(key=lambda e: (e["scale"], list(maps).index(e["column"])))
    channels = [case.display(c) for c in case.channels]
    brain = case.display(case.brain)
    warnings = list(prediction.get("warnings", []))
    rows = len(entries) + 1
    fig = Figure(figsize=(2.0 * (len(channels) + 1) + 3.0, 2.4 * rows + 0.9 + 0.3 * len(warnings)), dpi=100,
                 layout="constrained")
    grid = fig.add_gridspec(rows, len(channels) + 2, width_ratios=[1] * (len(channels) + 1) + [1.5])
    predicted = prediction["predicted_class"]
    logits = ", ".join(f"{n} {v:+.2f}" for n, v in prediction["logits"].items())
    known = f"  |  {grade_line(prediction)}" if grade_line(prediction) else ""
    probability = probability_text(predicted, prediction["probabilities"][predicted])
    calibration = calibration_note(
        prediction.get("calibration", {}), prediction.get("flip_average", False), prediction.get("precision", "fp32")
    )
    title = (f"{case_id}: predicted {predicted} ({probability}, {calibration})\nlogits {logits}"
             f"{known}; research use only\ntop prototypes per scale: {ranking_text(prediction)}")
    if warnings:
        title = "CAUTION: " + "\n".join(warnings) + "\n" + title  # a line each: three do not fit on one
    fig.suptitle(title, fontsize=9, color=CAUTION if warnings else "black",
                 bbox={"facecolor": "#ffe0e0", "edgecolor": CAUTION} if warnings else None)
    cells = [grid[0, c] for c in range(len(channels))]
    axes = _sequence_row(fig, cells, case, channels, brain, class_map, f"class map {predicted}")
    combination = prediction.get("scale_combination", DEFAULT_SCALE_COMBINATION)
    reach = support_note(prediction.get("brain_in_support"))
    _text(fig, grid[0, len(channels):], [f"class evidence map of {predicted}", f"(scales combined: {combination})",
                                         *(probability_text(n, v) for n, v in prediction["probabilities"].items()),
                                         *([] if reach is None else textwrap.wrap(reach, 34))])
    for row, entry in enumerate(entries, start=1):
        column = entry["column"]
        cells = [grid[row, c] for c in range(len(channels))]
        axes += _sequence_row(fig, cells, case, channels, brain, maps[column], f"s{entry['scale']} k{entry['k']}")
        names = list(entry["sequence_evidence"])
        driving = names.index(entry["driving_sequence"]) if entry["driving_sequence"] else len(names) - 1
        source_panel(fig.add_subplot(grid[row, len(channels)]), sources.get(column), driving)
        _text(fig, grid[row, len(channels) + 1], contribution_lines(entry))
    fig.colorbar(ScalarMappable(Normalize(0, 1), MAP_COLOURS), ax=axes, location="bottom", shrink=0.6,
                 aspect=50, label=COLOUR_BAR_LABEL)
    return fig


def case_report(path: str | PathLike, case_id: str, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`case_figure` (same arguments after ``case_id``) as the PNG ``path``."""
    path = Path(path)
    case_figure(case_id, *args, **kwargs).savefig(path)
    return path


def prototype_strip(path: str | PathLike, source: SourceView, title: str) -> Path:
    """A strip of the source case's sequences at the map's peak slice, with the prototype's map on each."""
    if source.image is None:
        raise ValueError(f"prototype strip for {title!r} needs the source image of case {source.case_id!r}.")
    z = int(source.peak[2])
    channels = source.image.shape[0]
    brain = _brain(source.image)
    inside = bool(brain[tuple(int(i) for i in source.peak)])
    fig = Figure(figsize=(2.0 * channels, 2.5), dpi=100, layout="constrained")
    axes = fig.subplots(1, channels)
    for c, ax in enumerate(np.atleast_1d(axes)):
        overlay_panel(ax, _axial(source.image[c], z), _axial(unit_scaled(source.attention_map)[0], z),
                      f"{SEQUENCE_NAMES[c]}, z={z}", source.peak[:2], _axial(brain, z), inside)
    fig.suptitle(title, fontsize=8)
    path = Path(path)
    fig.savefig(path)
    return path


def _driving(sequence_evidence: Mapping[str, float]) -> int:
    """Index of the sequence whose replacement by its mean lowers the similarity most."""
    values = list(sequence_evidence.values())
    return int(np.argmin(values))


def sharedness_figure(
    path: str | PathLike,
    report: Sequence[Mapping[str, Any]],
    images: Mapping[str, np.ndarray],
    maps: Mapping[str, Mapping[int, np.ndarray]],
    sources: Mapping[int, SourceView | None],
) -> Path:
    """Figure 5 of the paper: per scale, the most shared prototype on both cases, its source, S × w = Δy.

    Args:
        path: the PNG to write.
        report: :func:`scripts.explain.sharedness.sharedness_report` entries (with ``sequence_evidence`` per case).
        images: case name → preprocessed case (C_in, H, W, D).
        maps: case name → column → the prototype's map on that case's grid (H, W, D).
        sources: column → its source case.
    """
    names = list(images)
    fig = Figure(figsize=(2.2 * (len(names) + 1) + 3.6, 2.5 * len(report) + 0.6), dpi=100, layout="constrained")
    grid = fig.add_gridspec(len(report), len(names) + 2, width_ratios=[1] * (len(names) + 1) + [1.8])
    fig.suptitle("most shared prototype per scale (Eq. 29-30) and its contribution to each class (Eq. 31)", fontsize=9)
    for row, entry in enumerate(report):
        column = entry["column"]
        lines = [f"scale {entry['scale']}, k {entry['k']}: phi = {entry['sharedness']:.2f}"]
        for i, name in enumerate(names):
            case = entry["cases"][name]
            attention = unit_scaled(maps[name][column])[0]
            brain = _brain(images[name])
            peak, inside, _ = map_peak(attention, brain)
            sequence = _driving(case["sequence_evidence"])
            title = f"case {name}: {SEQUENCE_NAMES[sequence]}, z={peak[2]}"
            overlay_panel(fig.add_subplot(grid[row, i]), _axial(images[name][sequence], peak[2]),
                          _axial(attention, peak[2]), title, peak[:2], _axial(brain, peak[2]), inside)
            lines.append(f"case {name}:  S = {case['similarity']:.2f}")
            for label, delta in case["contribution"].items():
                weight = entry["class_weights"][label]
                lines.append(f"  {label}: {case['similarity']:.2f} × {weight:+.2f} = {delta:+.2f}")
        source = sources.get(column)
        driving = _driving(entry["cases"][names[0]]["sequence_evidence"])
        source_panel(fig.add_subplot(grid[row, len(names)]), source, driving)
        text = fig.add_subplot(grid[row, len(names) + 1])
        text.axis("off")
        text.text(0.0, 0.5, "\n".join(lines), va="center", fontsize=7, family="monospace")
    path = Path(path)
    fig.savefig(path)
    return path
