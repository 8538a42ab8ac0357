"""Push (Stage 2, Eq. 2/20): every prototype becomes the descriptor of its most similar training case.

Plain PyTorch, independent of ignite. The search streams over the loader and keeps, per prototype, only
the running best case (similarity, descriptor, case id, label, attention map). Under
``torch.distributed`` each rank searches its own shard; the ranks' bests are all-gathered and the
global argmax wins (ties: lowest rank, then first case seen), so every rank ends with the same
prototypes. Provenance (:class:`PushResult`) is written by :func:`save_push` as ``push.json`` (records)
and ``push_maps.pt`` (maps).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from monai.data import MetaTensor
from torch import Tensor, nn

from scripts.data.foreground import foreground_mask
from scripts.maps import resize_to_input
from scripts.networks import ScaleExplanation, UMProtoShare, unwrap
from scripts.prototypes import class_separation

__all__ = [
    "PUSH_JSON",
    "PUSH_MAPS",
    "PushResult",
    "class_mean_similarity",
    "load_push",
    "non_separating_columns",
    "peak_voxel",
    "push_prototypes",
    "save_push",
]

PUSH_JSON = "push.json"
"""File name of the provenance records written by :func:`save_push`."""
PUSH_MAPS = "push_maps.pt"
"""File name of the winning attention maps written by :func:`save_push`."""
COSINE_EPS = 1e-8
"""Norm floor of the unit vectors behind the class-mean similarities (``torch.nn.functional.cosine_similarity``'s)."""


@dataclass(eq=False)
class PushResult:
    """Provenance of one push; ``state_dict``/``load_state_dict`` make it checkpointable (plain data only).

    ``records``: one dict per classifier column, in column order, with keys ``column``, ``scale``, ``k``,
    ``case_id``, ``label``, ``class_name``, ``similarity`` (the S that won, before the push; for
    ProtoPNet's ``voxel_topk`` similarity, the best voxel's similarity, see ``push_similarities``),
    ``peak_voxel`` ([i, j, l] in the input grid), ``map_shape`` ([h_s, w_s, d_s]), ``input_shape``
    (the grid of ``peak_voxel``) and ``class_similarity`` (class name → the mean S of the pushed prototype
    over that class's cases of the push set, None for a class without cases; the whole entry None where
    S is not a plain cosine: clamped, or ProtoPNet's ``voxel_topk``). ``maps``: column → the winning
    attention map M_s^k, (h_s, w_s, d_s).
    """

    class_names: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    maps: dict[int, Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """Plain-data copy (str, int, float, lists, dicts, tensors): loadable with ``weights_only=True``."""
        return {
            "class_names": list(self.class_names),
            "records": copy.deepcopy(self.records),
            "maps": {int(column): m.detach().cpu().clone() for column, m in self.maps.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the content with a :meth:`state_dict` output."""
        missing = [key for key in ("class_names", "records", "maps") if key not in state]
        if missing:
            raise ValueError(f"push state is missing {missing}; it has {sorted(state)}.")
        self.class_names = [str(name) for name in state["class_names"]]
        self.records = copy.deepcopy(list(state["records"]))
        self.maps = {int(column): m.clone() for column, m in state["maps"].items()}


@dataclass
class _Best:
    """Running best case of each of one scale's K_s prototypes (a strictly higher S replaces it)."""

    similarity: Tensor
    """(K_s,), −inf where no eligible case has been seen."""
    descriptors: Tensor | None = None
    """(K_s, E), or None before the first candidate."""
    maps: Tensor | None = None
    """(K_s, h_s, w_s, d_s), or None before the first candidate."""
    case_ids: list[str | None] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    input_shapes: list[list[int]] = field(default_factory=list)
    peaks: list[list[int]] = field(default_factory=list)
    """Per prototype, :func:`peak_voxel` of its map on its case's grid (inside that case's brain for a
    brain-supported model); [] before a case is found."""

    @classmethod
    def empty(cls, count: int) -> _Best:
        """No case seen yet for ``count`` prototypes."""
        return cls(torch.full((count,), -math.inf), None, None, [None] * count, [-1] * count, [[]] * count, [[]] * count)

    @classmethod
    def from_batch(
        cls,
        entry: ScaleExplanation,
        eligible: Tensor,
        case_ids: list[str],
        labels: list[int],
        input_shape: list[int],
        brains: Tensor | None = None,
    ) -> _Best:
        """Best eligible case of one batch per prototype (first in the batch on ties).

        Args:
            entry: the scale's explanation of a batch of B cases.
            eligible: (B, K_s) bool, whether case b may become prototype k.
            case_ids: B case ids.
            labels: B labels.
            input_shape: spatial size of the batch's images, [H, W, D].
            brains: (B, H, W, D) bool, the cases' brains, where the peaks of a brain-supported model are read;
                None: on the whole grid.
        """
        masked = entry.push_similarities.float().masked_fill(~eligible, -math.inf)
        index = masked.argmax(dim=0)
        columns = torch.arange(masked.shape[1], device=masked.device)
        found = torch.isfinite(masked[index, columns]).tolist()
        chosen = index.tolist()
        maps = entry.maps[index, columns].float()
        peaks = [
            peak_voxel(maps[k], input_shape, None if brains is None else brains[i]) if ok else []
            for k, (i, ok) in enumerate(zip(chosen, found))
        ]
        return cls(
            similarity=masked[index, columns],
            descriptors=entry.descriptors[index, columns].float(),
            maps=maps,
            case_ids=[case_ids[i] if ok else None for i, ok in zip(chosen, found)],
            labels=[labels[i] if ok else -1 for i, ok in zip(chosen, found)],
            input_shapes=[list(input_shape) for _ in chosen],
            peaks=peaks,
        )

    def absorb(self, other: _Best) -> None:
        """Take ``other``'s cases where their similarity is strictly higher (so earlier cases win ties)."""
        if other.descriptors is None or other.maps is None:
            return
        if self.descriptors is None or self.maps is None:
            self.similarity = self.similarity.to(other.similarity.device)
            self.descriptors = torch.zeros_like(other.descriptors)
            self.maps = torch.zeros_like(other.maps)
        better = other.similarity > self.similarity
        self.similarity = torch.where(better, other.similarity, self.similarity)
        self.descriptors = torch.where(better[:, None], other.descriptors, self.descriptors)
        self.maps = torch.where(better.view(-1, *[1] * (self.maps.ndim - 1)), other.maps, self.maps)
        for k in better.nonzero().flatten().tolist():
            self.case_ids[k] = other.case_ids[k]
            self.labels[k] = other.labels[k]
            self.input_shapes[k] = other.input_shapes[k]
            self.peaks[k] = other.peaks[k]

    def cpu(self) -> _Best:
        """A copy with every tensor on the CPU (to all-gather between ranks)."""
        return _Best(
            self.similarity.cpu(),
            None if self.descriptors is None else self.descriptors.cpu(),
            None if self.maps is None else self.maps.cpu(),
            list(self.case_ids),
            list(self.labels),
            [list(shape) for shape in self.input_shapes],
            [list(peak) for peak in self.peaks],
        )


def peak_voxel(attention_map: Tensor, input_size: Sequence[int], within: Tensor | None = None) -> list[int]:
    """Voxel index of the maximum of an attention map resized to the input grid (first voxel on ties).

    Args:
        attention_map: M_s^k, (h_s, w_s, d_s) (or 1-2 spatial dims).
        input_size: the input grid, [H, W, D].
        within: bool mask on the input grid (the brain of a ``map_support="brain"`` model, whose maps the
            resize spills over the brain's edge); the map is read inside it only. None: everywhere.

    Returns:
        [i, j, l], the argmax of the map linearly interpolated (``align_corners=False``) to ``input_size``.
    """
    if len(input_size) != attention_map.ndim:
        raise ValueError(
            f"input_size {list(input_size)} must have one entry per spatial dim of the map "
            f"{tuple(attention_map.shape)}."
        )
    resized = resize_to_input(attention_map[None, None], input_size)[0, 0]
    if within is not None:
        resized = resized * within.to(resized.device, resized.dtype)
    return [int(i) for i in torch.unravel_index(resized.argmax(), resized.shape)]


def _batch_fields(batch: Mapping[str, Any], class_names: Sequence[str]) -> tuple[Tensor, list[int], list[str]]:
    """Images (B, C_in, H, W, D), labels and case ids of a loader batch, checked."""
    missing = [key for key in ("image", "label", "case_id") if key not in batch]
    if missing:
        raise ValueError(f"push batches need the keys image, label and case_id; missing {missing} in {sorted(batch)}.")
    images = batch["image"]
    images = images.as_tensor() if isinstance(images, MetaTensor) else torch.as_tensor(images)
    labels = [int(label) for label in torch.as_tensor(batch["label"]).reshape(-1).tolist()]
    case_ids = [str(case_id) for case_id in batch["case_id"]]
    if not len(labels) == len(case_ids) == images.shape[0]:
        raise ValueError(
            f"push batch of {images.shape[0]} images has {len(labels)} labels and {len(case_ids)} case ids "
            f"({case_ids})."
        )
    wrong = [(case_id, label) for case_id, label in zip(case_ids, labels) if not 0 <= label < len(class_names)]
    if wrong:
        raise ValueError(f"labels must lie in 0..{len(class_names) - 1} ({class_names}); got (case, label) {wrong}.")
    return images, labels, case_ids


def _search(
    net: UMProtoShare, loader: Iterable[Mapping[str, Any]], class_names: Sequence[str], device: torch.device
) -> tuple[list[_Best], list[Tensor], Tensor]:
    """Stream over ``loader`` keeping, per scale, each prototype's most similar eligible case (eval, no grad).

    Also sums, per class and scale, the unit-length descriptors H/|H| of every case, (C, K_s, E) float64,
    and counts the cases per class, (C,): the class means of cos(H, p) for any p follow from them.
    """
    owners = None if net.ownership is None else net.ownership.argmax(dim=1).to(device)
    bests = [_Best.empty(net.prototypes_per_scale[s - 1]) for s in net.scales]
    sums: list[Tensor] = []
    counts = torch.zeros(len(class_names), dtype=torch.float64, device=device)
    grid: list[int] | None = None
    for batch in loader:
        images, labels, case_ids = _batch_fields(batch, class_names)
        if grid is not None and list(images.shape[2:]) != grid:
            raise ValueError(
                f"push needs one input size: cases {case_ids} have images {list(images.shape[2:])}, earlier "
                f"cases {grid}."
            )
        grid = list(images.shape[2:])
        explanation = net.explain(images.to(device))
        brains = foreground_mask(images)[:, 0] if net.map_support == "brain" else None
        label_tensor = torch.tensor(labels, device=device)
        one_hot = torch.nn.functional.one_hot(label_tensor, len(class_names)).double()
        counts += one_hot.sum(dim=0)
        for index, (best, entry) in enumerate(zip(bests, explanation.per_scale)):
            if owners is None:
                eligible = torch.ones_like(entry.similarities, dtype=torch.bool)
            else:
                eligible = label_tensor[:, None] == owners[net.columns(entry.scale)][None, :]
            best.absorb(_Best.from_batch(entry, eligible, case_ids, labels, grid, brains))
            units = torch.nn.functional.normalize(entry.descriptors.double(), dim=-1, eps=COSINE_EPS)
            batch_sums = torch.einsum("bc,bke->cke", one_hot, units)
            if index == len(sums):
                sums.append(batch_sums)
            else:
                sums[index] += batch_sums
    return bests, sums, counts


def class_mean_similarity(sums: Tensor, counts: Tensor, prototypes: Tensor) -> Tensor:
    """Mean over each class's cases of cos(H, p_k), from the summed unit descriptors (C, K_s, E).

    Args:
        sums: Σ over the cases of class c of H_k/|H_k|, (C, K_s, E).
        counts: cases per class, (C,).
        prototypes: p, (K_s, E).

    Returns:
        (C, K_s) float64; NaN for a class without cases.
    """
    units = torch.nn.functional.normalize(prototypes.double(), dim=-1, eps=COSINE_EPS).to(sums.device)
    counts = counts.to(sums.device, torch.float64)[:, None]
    return torch.einsum("cke,ke->ck", sums.double(), units) / counts.where(counts > 0, torch.nan)


def _merge_ranks(bests: list[_Best]) -> list[_Best]:
    """All ranks' bests merged in rank order (ties: lowest rank); identical on every rank. CPU tensors."""
    local = [best.cpu() for best in bests]
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    gathered: list[list[_Best] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    merged = [_Best.empty(len(best.case_ids)) for best in local]
    for rank_bests in gathered:
        for mine, theirs in zip(merged, rank_bests):
            mine.absorb(theirs)
    return merged


def _check_found(net: UMProtoShare, bests: list[_Best], class_names: Sequence[str]) -> None:
    """Raise a ValueError when a prototype found no eligible case (empty loader, or a class with no case)."""
    missing = [
        column
        for column, (s, k) in enumerate(net.prototype_columns)
        if bests[net.scales.index(s)].case_ids[k] is None
    ]
    if not missing:
        return
    if net.ownership is None:
        raise ValueError("push found no case: the loader yielded no batch (on any rank).")
    owners = net.ownership.argmax(dim=1).tolist()
    classes = sorted({class_names[owners[column]] for column in missing})
    raise ValueError(
        f"push: the loader has no case of class {classes}, so the class-specific prototypes of that class "
        f"(columns {missing}) cannot be pushed."
    )


def push_prototypes(
    model: nn.Module,
    loader: Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    device: str | torch.device | None = None,
    input_size: Sequence[int] | None = None,
) -> PushResult:
    """Push: p_s^k ← H_s^k(x_n'), n' = argmax_n S_s^k(x_n, p_s^k) over the loader (Eq. 2/20).

    Runs ``model.explain`` in eval mode without gradient, then restores every module's train/eval
    state. Shared prototypes search all cases; class-specific ones (``model.ownership``) only the
    cases of their own class. Cases compete by ``push_similarities`` (S; for ProtoPNet's ``voxel_topk``
    similarity the best voxel's, whose feature vector is its descriptor). Ties go to the first case
    seen (under DDP: the lowest rank). The new prototypes are copied in place into each head's
    ``prototypes`` parameter, identically on all ranks.

    Args:
        model: a UMProtoShare, optionally wrapped in DistributedDataParallel / DataParallel.
        loader: yields dicts with "image" (B, C_in, H, W, D), "label" (B,) class indices and
            "case_id" (B strings); under DDP, this rank's shard.
        class_names: name of each class, in label order (len = model.num_classes).
        device: where the images are sent (the model's device, which is the default).
        input_size: grid of the peak voxels, [H, W, D]; default each winning case's image size.

    Returns:
        The provenance of every prototype, in classifier column order.
    """
    net = unwrap(model)
    if not isinstance(net, UMProtoShare):
        raise TypeError(f"push needs a UMProtoShare (optionally DDP-wrapped), got {type(net).__name__}.")
    class_names = [str(name) for name in class_names]
    if len(class_names) != net.num_classes:
        raise ValueError(f"class_names {class_names} must name the model's {net.num_classes} classes.")
    device = next(net.parameters()).device if device is None else torch.device(device)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            bests, sums, counts = _search(net, loader, class_names, device)
    finally:
        for module, mode in modes.items():
            module.training = mode
    bests = _merge_ranks(bests)
    _check_found(net, bests, class_names)
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if distributed:
        for tensor in [*sums, counts]:
            dist.all_reduce(tensor)
    class_similarity: list[Tensor | None] = []
    with torch.no_grad():
        for s, best, scale_sums in zip(net.scales, bests, sums):
            head = net.head(s)
            head.prototypes.data.copy_(best.descriptors)
            if distributed:
                dist.broadcast(head.prototypes.data, src=0)
            linear = head.similarity_kind == "descriptor" and not head.similarity_clamp
            class_similarity.append(class_mean_similarity(scale_sums, counts, head.prototypes).cpu() if linear else None)
    result = PushResult(class_names=class_names)
    for column, (s, k) in enumerate(net.prototype_columns):
        best = bests[net.scales.index(s)]
        means = class_similarity[net.scales.index(s)]
        attention_map = best.maps[k].clone()
        grid = list(best.input_shapes[k]) if input_size is None else [int(n) for n in input_size]
        result.records.append(
            {
                "column": column,
                "scale": s,
                "k": k,
                "case_id": best.case_ids[k],
                "label": best.labels[k],
                "class_name": class_names[best.labels[k]],
                "similarity": float(best.similarity[k]),
                "peak_voxel": best.peaks[k] if grid == best.input_shapes[k] else peak_voxel(attention_map, grid),
                "map_shape": list(attention_map.shape),
                "input_shape": grid,
                "class_similarity": None if means is None else {
                    name: None if math.isnan(value) else value for name, value in zip(class_names, means[:, k].tolist())
                },
            }
        )
        result.maps[column] = attention_map
    return result


def non_separating_columns(
    records: Sequence[Mapping[str, Any]],
    classifier_weight: Tensor,
    class_names: Sequence[str],
    floor: float,
    candidates: Sequence[int],
    name: Callable[[int], str] = str,
) -> dict[int, dict[str, Any]]:
    """Columns whose push-set :func:`~scripts.prototypes.class_separation` is below ``floor``.

    The favoured class of a column is the argmax of its classifier weights (first on ties). A class every one of
    whose candidates would go keeps its best-separating one: without a prototype that favours it, a class would
    have no evidence map (Eq. 27 sums over the prototypes with ζ > 0).

    Args:
        records: the push records, in column order, with ``class_similarity``.
        classifier_weight: w_cls, (C, K_total).
        class_names: the C names, in label order.
        floor: the separation below which a column is returned.
        candidates: the columns to judge.
        name: column → the prototype's name, for the error message.

    Returns:
        column → ``separation``, ``class_similarity``, ``favoured_class``.

    Raises:
        ValueError: a candidate's record has no class means (a push from before they were recorded, or a
            similarity that is not a plain cosine).
    """
    favoured = classifier_weight.detach().argmax(dim=0).tolist()
    found: dict[int, dict[str, Any]] = {}
    for column in candidates:
        means = records[column].get("class_similarity")
        separation = class_separation(means, class_names[favoured[column]])
        if separation is None:
            raise ValueError(
                f"prototype {name(column)}: its push record has no class means (class_similarity {means!r}), so "
                "whether it separates the classes is unknown; push again with this bundle (a plain cosine "
                "similarity) or leave non-separating pruning out."
            )
        if separation < floor:
            found[column] = {"separation": separation, "class_similarity": dict(means),
                             "favoured_class": class_names[favoured[column]]}
    for cls in {favoured[c] for c in candidates}:
        own = [c for c in candidates if favoured[c] == cls]
        if all(c in found for c in own):
            found.pop(max(own, key=lambda c: (found[c]["separation"], -c)))
    return found


def save_push(result: PushResult, directory: str | PathLike) -> Path:
    """Write ``push.json`` (class names and records, deterministic) and ``push_maps.pt`` into ``directory``.

    Returns:
        The path of ``push.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    record_path = directory / PUSH_JSON
    content = {"class_names": list(result.class_names), "records": result.records}
    record_path.write_text(json.dumps(content, indent=2) + "\n")
    torch.save({int(column): m.detach().cpu().contiguous() for column, m in result.maps.items()}, directory / PUSH_MAPS)
    return record_path


def load_push(directory: str | PathLike) -> PushResult:
    """Read a :func:`save_push` directory back (maps with ``weights_only=True``)."""
    directory = Path(directory)
    for name in (PUSH_JSON, PUSH_MAPS):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"push record file {directory / name} does not exist.")
    content = json.loads((directory / PUSH_JSON).read_text())
    maps = torch.load(directory / PUSH_MAPS, weights_only=True)
    columns = [record["column"] for record in content["records"]]
    if sorted(maps) != sorted(columns):
        raise ValueError(
            f"{directory / PUSH_MAPS} holds maps for columns {sorted(maps)} but {directory / PUSH_JSON} "
            f"has records for {columns}."
        )
    return PushResult(class_names=content["class_names"], records=content["records"], maps=maps)
