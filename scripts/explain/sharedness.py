"""Sharedness of prototypes across two cases (Appendix G, Eq. 29–31).

Command::

    python -m scripts.explain.sharedness --config_file configs/inference.json --ckpt_path MODEL.pt \
        --lgg CASE_DIR --hgg CASE_DIR [--output_dir DIR] [--push_dir DIR] [--<config id> VALUE ...]

``--config_file`` may be an override stack (``"['configs/inference.json','configs/quickstart.json']"``);
further ``--id value`` pairs override config ids (e.g. ``--device cpu``). Prints (and with ``--output_dir``
writes ``sharedness.json`` and ``sharedness.png``) per scale the most shared prototype and its
contribution to every class logit on each case.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import fire
import torch
from monai.bundle import ConfigParser
from torch import Tensor

from scripts.data import find_case_files
from scripts.data.validate import check_case
from scripts.engine.allocator import configure_allocator
from scripts.explain.evidence import SEQUENCE_NAMES, CaseEvidence, explain_case, prototype_contributions
from scripts.explain.report import sharedness_figure
from scripts.explain.sources import SourceImages
from scripts.networks import UMProtoShare
from scripts.push import PUSH_JSON, load_push

__all__ = ["case_sharedness", "most_shared", "sharedness_report", "sharedness_scores"]


def sharedness_scores(similarities_a: Tensor, similarities_b: Tensor) -> Tensor:
    """Sharedness φ_s^k = min(S_s^k(x_a), S_s^k(x_b)) of every prototype (Eq. 29).

    Args:
        similarities_a: S(x_a, P) of one case (e.g. LGG), (K_total,).
        similarities_b: S(x_b, P) of the other (e.g. HGG), (K_total,).

    Returns:
        φ, (K_total,).
    """
    if similarities_a.shape != similarities_b.shape or similarities_a.ndim != 1:
        raise ValueError(
            f"expected two (K_total,) similarity vectors, got {tuple(similarities_a.shape)} and "
            f"{tuple(similarities_b.shape)}."
        )
    return torch.minimum(similarities_a, similarities_b)


def most_shared(scores: Tensor, columns: Sequence[tuple[int, int]]) -> dict[int, int]:
    """The most shared prototype of each scale, k_s* = argmax_k φ_s^k (Eq. 30); first k on ties.

    Args:
        scores: φ, (K_total,); −inf for a prototype that may not be chosen (pruned).
        columns: (scale, k) of each column.

    Returns:
        scale → classifier column of k_s* (a scale whose prototypes are all pruned is left out).
    """
    if scores.ndim != 1 or scores.numel() != len(columns):
        raise ValueError(f"scores must be ({len(columns)},) for the given columns, got {tuple(scores.shape)}.")
    chosen: dict[int, int] = {}
    for scale in sorted({s for s, _ in columns}):
        mine = [c for c, (s, _) in enumerate(columns) if s == scale and not torch.isneginf(scores[c])]
        if mine:
            chosen[scale] = mine[int(scores[mine].argmax())]
    return chosen


def sharedness_report(
    similarities: Mapping[str, Tensor],
    classifier_weight: Tensor,
    columns: Sequence[tuple[int, int]],
    class_names: Sequence[str],
    push_records: Sequence[Mapping[str, Any]] | None = None,
    active: Tensor | None = None,
) -> list[dict[str, Any]]:
    """Per scale: the most shared prototype (Eq. 29–30) and Δy_c = w_cls[c, col]·S on each case (Eq. 31).

    Args:
        similarities: two cases' S(x, P), (K_total,) each, by name (e.g. {"LGG": ..., "HGG": ...}).
        classifier_weight: w_cls, (C, K_total).
        columns: (scale, k) of each column.
        class_names: C names in label order.
        push_records: push provenance in column order (source case and class), or None.
        active: (K_total,) bool, the prototypes not pruned (``model.active_columns``); None: all.

    Returns:
        One dict per scale: scale, k, column, sharedness φ, class weights, and per case its similarity and
        contributions (and the push source when given).
    """
    if len(similarities) != 2:
        raise ValueError(f"sharedness compares two cases, got {list(similarities)}.")
    names = list(similarities)
    scores = sharedness_scores(similarities[names[0]], similarities[names[1]])
    if active is not None:
        scores = scores.masked_fill(~active.bool(), -math.inf)
    report = []
    for scale, column in most_shared(scores, columns).items():
        cases = {}
        for name in names:
            delta = prototype_contributions(similarities[name][None], classifier_weight)[0, :, column]
            cases[name] = {
                "similarity": float(similarities[name][column]),
                "contribution": {c: float(v) for c, v in zip(class_names, delta.tolist())},
            }
        weights = {c: float(w) for c, w in zip(class_names, classifier_weight[:, column].tolist())}
        entry = {"scale": scale, "k": columns[column][1], "column": column, "sharedness": float(scores[column]),
                 "class_weights": weights, "cases": cases}
        if push_records is not None:
            entry["source"] = {key: push_records[column][key] for key in ("case_id", "class_name", "peak_voxel")}
        report.append(entry)
    return report


def _case(preprocessing: Any, case_dir: str | PathLike) -> Any:
    """The preprocessed case in ``case_dir`` (four ``*_t1/_t1ce/_t2/_flair`` NIfTI files), (C_in, H, W, D)."""
    folder = Path(case_dir)
    images, _ = find_case_files(folder, folder.name)
    case = {"case_id": folder.name, "image": images}
    check_case(case)
    return preprocessing(case)["image"]


def case_sharedness(
    network: UMProtoShare,
    images: Mapping[str, Tensor],
    class_names: Sequence[str],
    push_records: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, CaseEvidence]]:
    """:func:`sharedness_report` on two preprocessed cases, plus each case's per-sequence similarity change.

    Args:
        network: a UM-ProtoShare in eval mode.
        images: two cases by name, (C_in, H, W, D) each, preprocessed as in training.
        class_names: C names in label order.
        push_records: push provenance in column order, or None.

    Returns:
        The report (each case entry gains ``sequence_evidence``) and each case's evidence.
    """
    device = next(network.parameters()).device
    evidence = {name: explain_case(network, torch.as_tensor(image).to(device)) for name, image in images.items()}
    report = sharedness_report({name: e.similarities for name, e in evidence.items()},
                               network.classifier.effective_weight.detach().cpu(), network.prototype_columns,
                               class_names, push_records, network.active_columns.cpu())
    for entry in report:
        for name, case in entry["cases"].items():
            delta = evidence[name].sequence_delta[:, entry["column"]]
            case["sequence_evidence"] = dict(zip(SEQUENCE_NAMES, delta.tolist()))
    return report, evidence


def main(
    config_file: str | Sequence[str],
    ckpt_path: str,
    lgg: str,
    hgg: str,
    output_dir: str | None = None,
    push_dir: str | None = None,
    **override: Any,
) -> None:
    """Load the model of ``config_file`` (+ ``override``) from ``ckpt_path``; print (and write) sharedness."""
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(override)
    configure_allocator(parser.get_parsed_content("allocator", default="retain"))
    class_names = [str(n) for n in parser.get_parsed_content("class_names")]
    network = parser.get_parsed_content("network_def").to(parser.get_parsed_content("device"))
    network.load_state_dict(torch.load(ckpt_path, map_location=next(network.parameters()).device, weights_only=True))
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    folders = {class_names[0]: lgg, class_names[-1]: hgg}
    images = {name: _case(preprocessing, folder) for name, folder in folders.items()}
    push_folder = Path(push_dir or Path(ckpt_path).parent)
    push = load_push(push_folder) if (push_folder / PUSH_JSON).is_file() else None
    report, evidence = case_sharedness(network, {n: i.as_tensor() for n, i in images.items()}, class_names,
                                       None if push is None else push.records)
    text = json.dumps({"cases": folders, "scales": report}, indent=2)
    print(text)
    if output_dir is None:
        return
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sharedness.json").write_text(text + "\n")
    sources = SourceImages(push, preprocessing, parser.get_parsed_content("datalist_file"))
    maps = {name: {e["column"]: evidence[name].prototype_map(e["scale"], e["k"], images[name].shape[1:]).numpy()
                   for e in report} for name in folders}
    views = {e["column"]: sources.view(e["column"]) for e in report}
    arrays = {n: i.as_tensor().numpy() for n, i in images.items()}
    sharedness_figure(out / "sharedness.png", report, arrays, maps, views)


if __name__ == "__main__":
    fire.Fire(main)
