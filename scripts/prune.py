"""Pruning and forgetting prototypes of a trained fold (``configs/prune.json``, run id ``prune``).

A person (``prune_prototypes``, names as the reports give them: ``s1_k3``) or a rule (``prune_rules``)
removes prototypes: the classifier stops reading them
(:class:`~scripts.networks.classifier.PrototypeClassifier`), the last layer is retrained (stage 3) on the
training split, the calibration refitted and the fold re-evaluated. ``forbid_prototypes`` instead
fine-tunes the mapping modules and prototypes for a few epochs with the stage-1 objective plus
ProtoPDebug's forgetting term (:func:`~scripts.losses.terms.forget_loss`) against each forbidden
prototype's pushed patch, then pushes and runs stage 3. Everything lands in ``prune_dir`` (default
``<fold_dir>/pruned/``): ``model.pt``, ``calibration.json``, ``push.json`` + ``push_maps.pt`` (pruned
prototypes marked), ``prune.json`` (what was removed or forbidden, by whom or which rule, with the
figures that decided it; before and after), the evaluation's ``metrics.json`` and ``per_case.csv``, and
after forgetting a ``gallery/`` of the re-pushed prototypes.

The rules, on the fold's training cases (no augmentation):

- ``duplicate``: two prototypes of one scale pushed from the same voxel of the same case, or whose
  vectors have cosine ≥ ``duplicate_cosine`` *and* whose maps have mean cosine ≥ ``duplicate_map_cosine``;
  the one with the smaller classifier weights goes, its weights added to those of the one that stays.
- ``outside_brain``: the map (on the whole grid) peaks outside the brain on more than
  ``outside_brain_share`` of the cases.
- ``unused``: never among a case's ``unused_top_k`` first prototypes for its predicted class (ranked as
  evaluation and inference rank them, ``evidence_ranking``), or every classifier weight of the column below
  ``unused_weight`` in magnitude.
- ``non_separating``: the prototype's mean S over the push set's cases of the class its weights favour
  exceeds that of every other class by less than ``separation_floor``
  (:func:`~scripts.prototypes.class_separation`, from ``push.json``'s ``class_similarity``): every class
  shows what it matches, so its votes are not evidence for one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines.utils import default_prepare_batch
from monai.transforms import Compose
from monai.utils import look_up_option
from torch import Tensor

from scripts.data.foreground import foreground_mask
from scripts.engine.calibration import calibrate_network
from scripts.engine.iteration import flipped_view, plain_tensor, train_last_layer_epoch
from scripts.engine.persistence import atomic_save
from scripts.engine.stages import Schedule, parameter_groups
from scripts.evaluate.fold import METRICS_JSON, load_fold_weights
from scripts.evaluate.outputs import write_json
from scripts.evaluate.prototypes import prototype_peaks, top_prototype_columns
from scripts.explain.evidence import ranking_contributions, ranking_first, ranking_reference
from scripts.explain.gallery import write_gallery
from scripts.losses import LastLayerLoss, Stage1Loss, forget_loss
from scripts.networks import UMProtoShare, prototype_descriptors
from scripts.prototypes import SEPARATION_FLOOR, checked_ranking
from scripts.push import PushResult, load_push, non_separating_columns, push_prototypes, save_push

__all__ = [
    "FORGET_GROUPS",
    "PRUNED_DIR",
    "PRUNE_JSON",
    "PRUNE_RULES",
    "PrototypeUsage",
    "PruneFold",
    "duplicate_prototypes",
    "forbidden_patches",
    "merge_duplicates",
    "outside_brain_prototypes",
    "patch_similarity",
    "prototype_usage",
    "unused_prototypes",
]

logger = logging.getLogger(__name__)

PRUNE_RULES = ("outside_brain", "unused", "non_separating", "duplicate")
"""The automatic rules, in the order they are applied (whatever order they are listed in): a duplicate is
only sought among the prototypes the other rules keep, so none goes for a partner that goes too."""
PRUNE_JSON = "prune.json"
PRUNED_DIR = "pruned"
FORGET_GROUPS = ("mapping", "prototypes")
"""What the forgetting fine-tune trains: where each prototype looks, and the prototypes; G stays fixed."""
SUMMARY_KEYS = (
    "bac", "ap", "ids", "ap_eq28", "topk_peak_in_brain", "topk_peak_in_tumour", "prototype_source_agrees",
    "prototype_separates",
)
"""The figures of ``metrics.json`` compared before and after, in the log line and in ``prune.json``."""


@dataclass
class PrototypeUsage:
    """How a model's prototypes behave on a set of cases (:func:`prototype_usage`); K = K_total."""

    cases: int
    outside_brain: Tensor
    """(K,) share of the cases on which the prototype's map peaks outside the brain, read as the reports
    read it (inside the brain for ``map_support="brain"``, where it is then 0 by design; else the whole grid)."""
    top_count: Tensor
    """(K,) cases on which the prototype is among the first for the predicted class (:func:`prototype_usage`)."""
    map_cosine: dict[int, Tensor] = field(default_factory=dict)
    """Scale → (K_s, K_s): cosine of two prototypes' maps on a case (the maps as vectors), mean over the cases."""
    images: dict[str, Tensor] = field(default_factory=dict)
    """Preprocessed images (C_in, H, W, D) of the cases asked for (forbidden patches' sources)."""


def prototype_usage(
    model: UMProtoShare,
    loader: Iterable[Mapping[str, Any]],
    top_k: int,
    device: torch.device,
    keep_images: Sequence[str] = (),
    reference: Tensor | None = None,
) -> PrototypeUsage:
    """One pass (eval, no grad) over ``loader``: per prototype, where its map peaks and how often it is a top contributor.

    Args:
        model: the fold's model.
        loader: batches with ``image`` (B, C_in, H, W, D) and ``case_id`` (the training cases, no augmentation).
        top_k: contributors per case counted (pruned prototypes never count).
        device: where the forward passes run.
        keep_images: case ids whose images are kept (the sources of forbidden prototypes).
        reference: S̄ to rank against (:func:`scripts.explain.evidence.ranking_contributions`); None: by Δy.
    """
    model.eval()
    outside = torch.zeros(model.num_prototypes)
    top = torch.zeros(model.num_prototypes, dtype=torch.long)
    images: dict[str, Tensor] = {}
    gram = {s: torch.zeros(model.prototypes_per_scale[s - 1], model.prototypes_per_scale[s - 1]) for s in model.scales}
    cases = 0
    everything = list(range(model.num_prototypes))
    active = model.active_columns.cpu()
    with torch.no_grad():
        for batch in loader:
            x = plain_tensor(batch["image"]).to(device)
            explanation = model.explain(x)
            weight = model.classifier.effective_weight
            contributions = ranking_contributions(explanation.similarities, weight, reference)
            first = ranking_first(weight, reference)
            predicted = explanation.logits.argmax(dim=1)
            brains = foreground_mask(x.cpu())[:, 0]
            for entry in explanation.per_scale:
                unit = F.normalize(entry.maps.flatten(2).float(), dim=-1)
                gram[entry.scale] += torch.einsum("bkn,bjn->kj", unit, unit).cpu()
            for i, case_id in enumerate(batch["case_id"]):
                maps = [entry.maps[i].float().cpu() for entry in explanation.per_scale]
                within = brains[i] if model.map_support == "brain" else None  # read as the reports read it
                peaks = prototype_peaks(maps, model.prototype_columns, everything, x.shape[2:], within)
                outside += torch.tensor([0.0 if brains[i][tuple(p)] else 1.0 for p in peaks])
                voting = None if first is None else first[predicted[i]].cpu()
                top[top_prototype_columns(contributions[i, predicted[i]].cpu(), top_k, active, voting)] += 1
                if str(case_id) in keep_images:
                    images[str(case_id)] = x[i].cpu()
            cases += x.shape[0]
    if cases == 0:
        raise ValueError("prototype usage: the loader yielded no case.")
    return PrototypeUsage(cases, outside / cases, top, {s: g / cases for s, g in gram.items()}, images)


def duplicate_prototypes(
    model: UMProtoShare,
    records: Sequence[Mapping[str, Any]],
    usage: PrototypeUsage,
    cosine: float,
    map_cosine: float,
    candidates: Sequence[int],
) -> dict[int, dict[str, Any]]:
    """Prototypes of one scale that repeat another: pushed from the same voxel of the same case, or alike in
    both what they match and where: cos(p_i, p_j) ≥ ``cosine`` and their maps' mean cosine (``usage``)
    ≥ ``map_cosine``.

    The vectors alone do not make a duplicate here: each prototype is compared with the descriptor under its
    own map, and on the quick start many pairs have cos(p_i, p_j) > 0.99 with maps in different places.
    Of each pair the one with the larger weight norm stays (ties: the lower column); a prototype already
    chosen to go is not a partner. Returns column → figures (``duplicate_of``, ``merged_into`` (the partner's
    column), ``cosine``, ``map_cosine``, ``same_source``). The caller adds the duplicate's weights to its
    partner's (:func:`merge_duplicates`): the two match alike, so the logits hardly move.
    """
    weights = model.classifier.effective_weight.detach().norm(dim=0).cpu()
    order = sorted(candidates, key=lambda c: (-float(weights[c]), c))
    kept: list[int] = []
    removed: dict[int, dict[str, Any]] = {}
    for column in order:
        scale, k = model.prototype_columns[column]
        vector = model.head(scale).prototypes[k].detach().float().cpu()
        for partner in kept:
            other_scale, other_k = model.prototype_columns[partner]
            if other_scale != scale:
                continue
            other = model.head(scale).prototypes[other_k].detach().float().cpu()
            similarity = float(F.cosine_similarity(vector, other, dim=0))
            maps = float(usage.map_cosine[scale][k, other_k])
            same = (records[column]["case_id"], records[column]["peak_voxel"]) == (
                records[partner]["case_id"], records[partner]["peak_voxel"]
            )
            if same or (similarity >= cosine and maps >= map_cosine):
                removed[column] = {"duplicate_of": model.prototype_name(partner), "merged_into": partner,
                                   "cosine": similarity, "map_cosine": maps, "same_source": same}
                break
        else:
            kept.append(column)
    return removed


def merge_duplicates(model: UMProtoShare, removed: Mapping[int, Mapping[str, Any]]) -> None:
    """Add each duplicate's classifier column to the column it duplicates (``figures["merged_into"]``)."""
    with torch.no_grad():
        weight = model.classifier.weight
        for column, entry in removed.items():
            partner = entry["figures"].get("merged_into")
            if partner is not None:
                weight[:, partner] += weight[:, column]


def outside_brain_prototypes(usage: PrototypeUsage, share: float, candidates: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Prototypes whose map peaks outside the brain on more than ``share`` of the cases; column → figures."""
    return {
        c: {"peaks_outside_brain": float(usage.outside_brain[c]), "cases": usage.cases}
        for c in candidates
        if float(usage.outside_brain[c]) > share
    }


def unused_prototypes(
    model: UMProtoShare, usage: PrototypeUsage, min_weight: float, top_k: int, candidates: Sequence[int]
) -> dict[int, dict[str, Any]]:
    """Prototypes never among a case's ``top_k`` contributors, or whose weights all lie below ``min_weight``."""
    largest = model.classifier.effective_weight.detach().abs().amax(dim=0).cpu()
    return {
        c: {"top_contributor_cases": int(usage.top_count[c]), "top_k": top_k, "max_abs_weight": float(largest[c])}
        for c in candidates
        if int(usage.top_count[c]) == 0 or float(largest[c]) < min_weight
    }


def forbidden_patches(
    model: UMProtoShare, push: PushResult, columns: Sequence[int], images: Mapping[str, Tensor], device: torch.device
) -> dict[int, list[Tensor]]:
    """The descriptor of each forbidden prototype's pushed patch under ``model`` as it is now, by scale.

    Patch of column j: its pushed map M_s^j (``push_maps.pt``) applied to the add-on embeddings G_s of its
    source case (Eq. 14), i.e. what the prototype matched when it was pushed, seen by the current network.

    Returns:
        scale → patches (E,) (no gradient).
    """
    patches: dict[int, list[Tensor]] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for column in columns:
            record = push.records[column]
            scale = int(record["scale"])
            explanation = model.explain(images[record["case_id"]][None].to(device))
            embeddings = explanation.per_scale[model.scales.index(scale)].embeddings
            pushed = push.maps[column].to(embeddings)[None, None]
            patches.setdefault(scale, []).append(prototype_descriptors(embeddings, pushed)[0, 0])
    model.train(was_training)
    return patches


def patch_similarity(
    model: UMProtoShare,
    loader: Iterable[Mapping[str, Any]],
    patches: Mapping[int, Sequence[Tensor]],
    device: torch.device,
) -> dict[str, float]:
    """Mean over the loader's cases of max_{k active, f} cos(H_s^k(x), f): how much the model's evidence
    resembles the forbidden patches.

    Also ``mean``: the mean over cases, active prototypes of the patches' scales and patches.
    """
    model.eval()
    highest, means = [], []
    active = model.active_columns.cpu()
    with torch.no_grad():
        for batch in loader:
            explanation = model.explain(plain_tensor(batch["image"]).to(device))
            per_case_max, per_case_mean = [], []
            for scale, forbidden in patches.items():
                keep = active[model.columns(scale)]
                descriptors = explanation.per_scale[model.scales.index(scale)].descriptors.float()[:, keep.to(device)]
                cosine = F.cosine_similarity(descriptors[:, :, None], torch.stack(forbidden)[None, None].float(), dim=-1)
                per_case_max.append(cosine.flatten(1).amax(dim=1))
                per_case_mean.append(cosine.flatten(1).mean(dim=1))
            highest.append(torch.stack(per_case_max).amax(dim=0).cpu())
            means.append(torch.stack(per_case_mean).mean(dim=0).cpu())
    return {"max": float(torch.cat(highest).mean()), "mean": float(torch.cat(means).mean())}


def _summary(metrics: Mapping[str, Any] | None, model: UMProtoShare) -> dict[str, Any]:
    figures = {key: None if metrics is None else metrics.get(key) for key in SUMMARY_KEYS}
    return {"prototypes": int(model.active_columns.sum()), **figures}


def _read_metrics(directory: Path) -> dict[str, Any] | None:
    path = directory / METRICS_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def _line(summary: Mapping[str, Any]) -> str:
    return "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items())


class PruneFold:
    """``run prune``: remove and/or forbid prototypes of a trained fold, retrain stage 3, recalibrate, re-evaluate.

    Args:
        network: the fold's model (``@network``); ``<fold_dir>/model.pt`` is loaded into it.
        fold_dir: the trained fold (``model.pt``, ``push.json``, ``push_maps.pt``; ``metrics.json`` for "before").
        output_dir: where the pruned fold goes; default ``<fold_dir>/pruned``.
        class_names: names in label order.
        push_loader: the training cases without augmentation (rules, patches, push).
        train_loader: the augmented training loader (forgetting epochs, stage 3).
        calibration_loader: the validation split (calibration refit).
        heldout_loader: the held-out fold (the forbidden patches' similarity before and after).
        evaluator: the fold evaluation of ``<output_dir>/model.pt`` into ``output_dir`` (``FoldEvaluator``), called last.
        schedule: the run's schedule (stage-3 groups, ``stage3_epochs``).
        stage1_loss, stage3_loss: the training objectives.
        device: where everything runs.
        prune_prototypes: names (``s1_k3`` or ``prototype_s1_k3``) to remove.
        prune_rules: any of :data:`PRUNE_RULES`.
        duplicate_cosine, duplicate_map_cosine, outside_brain_share, unused_top_k, unused_weight, separation_floor:
            the rules' thresholds.
        evidence_ranking: what ``unused`` ranks a case's prototypes by (:data:`scripts.prototypes.EVIDENCE_RANKINGS`).
        forbid_prototypes: names to forget (kept, fine-tuned away from their pushed patches, re-pushed).
        forget_epochs, forget_weight, forget_lr: the forgetting fine-tune (:data:`FORGET_GROUPS`, AdamW).
        stage1_weight_decay: weight decay of that fine-tune.
        stage3_lr: Adam's learning rate for the retrained last layer.
        calibration: the calibration method refitted on ``calibration_loader``.
        input_size: grid of the push's peak voxels.
        amp: bf16 autocast in stage 3.
        gallery_items, gallery_preprocessing: the training items and the uncached preprocessing; when both
            are given and forgetting re-pushed the prototypes, ``<output_dir>/gallery`` shows the new ones
            (pruned ones left out). Pruning alone pushes nothing: the fold's gallery still holds.
    """

    def __init__(
        self,
        network: UMProtoShare,
        fold_dir: str | PathLike,
        class_names: Sequence[str],
        push_loader: Iterable[Mapping[str, Any]],
        train_loader: Iterable[Mapping[str, Any]],
        calibration_loader: Iterable[Mapping[str, Any]],
        heldout_loader: Iterable[Mapping[str, Any]],
        evaluator: Callable[[], dict[str, Any]],
        schedule: Schedule,
        stage1_loss: Stage1Loss,
        stage3_loss: LastLayerLoss,
        device: str | torch.device = "cpu",
        output_dir: str | PathLike | None = None,
        prune_prototypes: Sequence[str] = (),
        prune_rules: Sequence[str] = ("outside_brain", "duplicate"),
        duplicate_cosine: float = 0.99,
        duplicate_map_cosine: float = 0.85,
        outside_brain_share: float = 0.5,
        unused_top_k: int = 6,
        unused_weight: float = 1e-3,
        separation_floor: float = SEPARATION_FLOOR,
        evidence_ranking: str = "relative",
        forbid_prototypes: Sequence[str] = (),
        forget_epochs: int = 5,
        forget_weight: float = 5.0,
        forget_lr: float = 1e-4,
        stage1_weight_decay: float = 0.01,
        stage3_lr: float = 1e-3,
        calibration: str = "prior_nll",
        input_size: Sequence[int] | None = None,
        amp: bool = False,
        gallery_items: Sequence[dict] | None = None,
        gallery_preprocessing: Compose | None = None,
    ) -> None:
        if not isinstance(network, UMProtoShare):
            raise TypeError(f"pruning needs a prototype network, got {type(network).__name__}.")
        self.network = network
        self.fold_dir = Path(fold_dir)
        self.output_dir = self.fold_dir / PRUNED_DIR if output_dir is None else Path(output_dir)
        self.class_names = list(class_names)
        self.loaders = {"push": push_loader, "train": train_loader, "calibration": calibration_loader,
                        "heldout": heldout_loader}
        self.evaluator = evaluator
        self.schedule = schedule
        self.stage1_loss = stage1_loss
        self.stage3_loss = stage3_loss
        self.device = torch.device(device)
        self.prune_names = [str(name) for name in prune_prototypes]
        self.rules = [look_up_option(rule, PRUNE_RULES) for rule in prune_rules]
        self.duplicate_cosine = float(duplicate_cosine)
        self.duplicate_map_cosine = float(duplicate_map_cosine)
        self.outside_brain_share = float(outside_brain_share)
        self.unused_top_k = int(unused_top_k)
        self.unused_weight = float(unused_weight)
        self.separation_floor = float(separation_floor)
        self.evidence_ranking = checked_ranking(evidence_ranking)
        self.forbid_names = [str(name) for name in forbid_prototypes]
        self.forget_epochs = int(forget_epochs)
        self.forget_weight = float(forget_weight)
        self.forget_lr = float(forget_lr)
        self.stage1_weight_decay = float(stage1_weight_decay)
        self.stage3_lr = float(stage3_lr)
        self.calibration = calibration
        self.input_size = input_size
        self.amp = amp
        self.gallery_items = gallery_items
        self.gallery_preprocessing = gallery_preprocessing

    def decide(self, push: PushResult, usage: PrototypeUsage, keep: Sequence[int] = ()) -> dict[int, dict[str, Any]]:
        """Column → {prototype, by, figures} for everything to remove: the names first, then each rule in turn
        over the prototypes still active and not in ``keep`` (the forbidden ones, which are kept and fine-tuned)."""
        model = self.network
        removed: dict[int, dict[str, Any]] = {}
        for name in self.prune_names:
            column = model.column_of(name)
            if column in keep:
                raise ValueError(f"prototype {model.prototype_name(column)} is both pruned and forbidden: choose one.")
            removed[column] = {"prototype": model.prototype_name(column), "by": "user", "figures": {}}
        for rule in [rule for rule in PRUNE_RULES if rule in self.rules]:
            candidates = [
                c for c in range(model.num_prototypes)
                if c not in removed and c not in keep and bool(model.active_columns[c])
            ]
            if rule == "duplicate":
                found = duplicate_prototypes(
                    model, push.records, usage, self.duplicate_cosine, self.duplicate_map_cosine, candidates
                )
            elif rule == "outside_brain":
                found = outside_brain_prototypes(usage, self.outside_brain_share, candidates)
            elif rule == "non_separating":
                found = non_separating_columns(
                    push.records, model.classifier.effective_weight, self.class_names, self.separation_floor,
                    candidates, model.prototype_name,
                )
            else:
                found = unused_prototypes(model, usage, self.unused_weight, self.unused_top_k, candidates)
            for column, figures in sorted(found.items()):
                removed[column] = {"prototype": model.prototype_name(column), "by": f"rule:{rule}", "figures": figures}
        return dict(sorted(removed.items()))

    def forget(self, patches: Mapping[int, Sequence[Tensor]]) -> list[dict[str, float]]:
        """Fine-tune the mapping modules and prototypes (:data:`FORGET_GROUPS`) with
        L_stage1 + λ_forget Σ_s forget_loss.

        The encoder, decoder, fusion and add-ons stay frozen, so the embeddings G, and with them the
        forbidden patches and the similarity reported before and after, keep one meaning: what changes
        is where each prototype looks.
        """
        model = self.network
        patches = {s: torch.stack(list(p)) for s, p in patches.items()}
        optimizer = torch.optim.AdamW(
            parameter_groups(model, FORGET_GROUPS, self.stage1_weight_decay), lr=self.forget_lr
        )
        history = []
        for epoch in range(1, self.forget_epochs + 1):
            model.set_trainable(FORGET_GROUPS)
            model.train()
            sums = {"loss": 0.0, "forget": 0.0}
            seen = 0
            for batch in self.loaders["train"]:
                images_b, labels = default_prepare_batch(batch, self.device, False)
                labels = torch.as_tensor(labels).long().reshape(-1)
                optimizer.zero_grad(set_to_none=True)
                images_b = plain_tensor(images_b)
                explanation = model.explain(images_b)
                flipped = flipped_view(model.explain, model, images_b) if self.stage1_loss.needs_flipped_view else None
                loss, _ = self.stage1_loss(model.loss_inputs(explanation), explanation.logits, labels,
                                           model.classifier.effective_weight, model.ownership, flipped)
                term = torch.stack([
                    forget_loss(explanation.per_scale[model.scales.index(s)].descriptors, p) for s, p in patches.items()
                ]).sum()
                total = loss + self.forget_weight * term
                total.backward()
                optimizer.step()
                seen += int(labels.numel())
                sums["loss"] += float(total.detach()) * labels.numel()
                sums["forget"] += float(term.detach()) * labels.numel()
            means = {name: value / max(seen, 1) for name, value in sums.items()}
            logger.info("forgetting epoch %d/%d: loss %.4f  forget %.4f", epoch, self.forget_epochs, means["loss"],
                        means["forget"])
            history.append(means)
        return history

    def retrain_last_layer(self) -> list[dict[str, float]]:
        """Stage 3 on the training split with a fresh Adam: ``schedule.stage3_epochs`` epochs."""
        model = self.network
        model.set_trainable(self.schedule.trainable_groups("stage3"))
        optimizer = torch.optim.Adam(model.group_parameters("classifier"), lr=self.stage3_lr)
        history = []
        for epoch in range(1, self.schedule.stage3_epochs + 1):
            means = train_last_layer_epoch(model, self.loaders["train"], optimizer, self.stage3_loss, self.device,
                                           amp=self.amp)
            means.pop("seconds")
            logger.info("pruned model, stage 3 [%d/%d]: %s", epoch, self.schedule.stage3_epochs,
                        " ".join(f"{k} {v:.4f}" for k, v in means.items()))
            history.append(means)
        return history

    def __call__(self) -> dict[str, Any]:
        """Run the whole workflow; returns the content of ``prune.json``."""
        start = time.perf_counter()
        model = self.network
        load_fold_weights(model, self.fold_dir / "model.pt", self.device)
        push = load_push(self.fold_dir)
        before = _summary(_read_metrics(self.fold_dir), model)
        forbidden = sorted({model.column_of(name) for name in self.forbid_names})
        sources = [push.records[c]["case_id"] for c in forbidden]
        reference = ranking_reference(push.records, self.evidence_ranking)
        usage = prototype_usage(model, self.loaders["push"], self.unused_top_k, self.device, sources, reference)
        missing = sorted(set(sources) - set(usage.images))
        if missing:
            raise ValueError(f"the sources {missing} of the forbidden prototypes are not among the training cases.")
        removed = self.decide(push, usage, forbidden)
        if not removed and not forbidden:
            logger.warning("nothing to prune or forbid: the model is retrained (stage 3) and re-evaluated as it is.")
        merge_duplicates(model, removed)
        model.classifier.prune(list(removed))
        record: dict[str, Any] = {
            "fold_dir": str(self.fold_dir),
            "removed": list(removed.values()),
            "rules": {"applied": self.rules, "duplicate_cosine": self.duplicate_cosine,
                      "duplicate_map_cosine": self.duplicate_map_cosine,
                      "outside_brain_share": self.outside_brain_share, "unused_top_k": self.unused_top_k,
                      "unused_weight": self.unused_weight, "separation_floor": self.separation_floor,
                      "unused_ranking": "contribution" if reference is None else "relative",
                      "training_cases": usage.cases},
            "forbidden": [],
        }
        if forbidden:
            pushed = push  # the forbidden patches are the maps of this push on its source cases
            patches = forbidden_patches(model, pushed, forbidden, usage.images, self.device)
            similarity_before = patch_similarity(model, self.loaders["heldout"], patches, self.device)
            history = self.forget(patches)
            push = push_prototypes(model, self.loaders["push"], self.class_names, self.device, self.input_size)
            similarity_after = patch_similarity(model, self.loaders["heldout"], patches, self.device)
            record["forbidden"] = [
                {"prototype": model.prototype_name(c), "by": "user", "source_case": case_id,
                 "peak_voxel": pushed.records[c]["peak_voxel"], "now_pushed_from": push.records[c]["case_id"]}
                for c, case_id in zip(forbidden, sources)
            ]
            record["forgetting"] = {"epochs": self.forget_epochs, "weight": self.forget_weight, "lr": self.forget_lr,
                                    "history": history, "heldout_patch_similarity_before": similarity_before,
                                    "heldout_patch_similarity_after": similarity_after}
            logger.info("held-out similarity to the forbidden patches (max over prototypes, mean over cases): "
                        "%.4f -> %.4f", similarity_before["max"], similarity_after["max"])
        record["stage3"] = self.retrain_last_layer()
        model.eval()
        atomic_save(model.state_dict(), self.output_dir / "model.pt")
        for column, entry in enumerate(push.records):
            entry["pruned"] = column in removed
        save_push(push, self.output_dir)
        if forbidden and self.gallery_items is not None and self.gallery_preprocessing is not None:
            write_gallery(push, self.gallery_items, self.gallery_preprocessing, self.output_dir / "gallery")
        calibrate_network(model, self.loaders["calibration"], self.device, self.calibration, self.output_dir)
        record["seconds_prune"] = time.perf_counter() - start
        after_metrics = self.evaluator()
        record["seconds_total"] = time.perf_counter() - start
        record["before"], record["after"] = before, _summary(after_metrics, model)
        write_json(self.output_dir / PRUNE_JSON, record)
        logger.info("before pruning: %s", _line(record["before"]))
        logger.info("after pruning:  %s", _line(record["after"]))
        logger.info("pruned fold written to %s (%.1f s, %.1f s with the evaluation)", self.output_dir,
                    record["seconds_prune"], record["seconds_total"])
        return record
