"""Held-out fold evaluation (SPEC §6): BAC and the classification metrics, AP, IDS, optional robustness.

Plain PyTorch; :class:`FoldEvaluator` is the thin callable that ``configs/evaluate.json`` runs. One fold:

1. one pass over the fold (no augmentation): probabilities, the ground-truth class's attention map
   (:func:`scripts.explain.attribution.class_map`) and its AP against the whole-tumour mask (Eq. 25);
   for prototype models, from the same forward pass, the AP of the paper's own read-out (Eq. 28 summed
   over the scales, whole volume) and where the top prototypes' maps peak (:mod:`.prototypes`);
2. IDS: 51 deleted copies per case (:func:`scripts.metrics.deletion_curve`), ``ids_batch_size`` copies
   per forward pass (17 puts one case's 51 copies in 3 full batches), so 51 forward items per case;
3. optionally BAC with each non-empty proper subset of the sequences missing (:mod:`.missing`).

Images for steps 2–3 are read again from the dataset, case by case (the preprocessing cache makes that
cheap), so memory holds the fold's maps but not its images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.data import DataLoader
from monai.transforms import Compose
from torch import Tensor, nn
from torch.utils.data import Dataset

from scripts.calibration import Calibration, calibration_metrics, ece_if_calibrated, plot_reliability
from scripts.cli import ERRORS_JSON
from scripts.data import DataError
from scripts.data.foreground import brain_mask
from scripts.data.layouts import SEQUENCES
from scripts.data.transforms import make_dataset
from scripts.data.validate import validate_cases
from scripts.engine.iteration import plain_tensor
from scripts.explain.attribution import class_map
from scripts.explain.evidence import confidence_warnings, ranking_contributions, ranking_first, ranking_reference
from scripts.explain.sources import load_push_for
from scripts.maps import DEFAULT_SCALE_COMBINATION
from scripts.metrics import (
    LOCALISATION_KEYS,
    activation_precision,
    classification_metrics,
    deletion_curve,
    incremental_deletion_score,
    localisation_summary,
    share_in_support,
    similarity_spread,
)
from scripts.networks import BF16_RECHECK_MARGIN, UMProtoShare, checked_recheck_margin, resolve_precision, unwrap
from scripts.prototypes import checked_ranking
from scripts.uncertainty import flip_probabilities, spread_of

from .missing import missing_sequence_bac
from .outputs import plot_deletion_curve, save_volume, write_case_table, write_json
from .prototypes import (
    PEAK_KEYS,
    READOUT_KEYS,
    TOP_PROTOTYPES,
    fold_readouts,
    peak_shares,
    prototype_peaks,
    separating_share,
    source_agreement,
    support_warning,
    top_prototype_columns,
)

__all__ = [
    "CASES_CSV",
    "DELETION_PNG",
    "MAPS_DIR",
    "METRICS_JSON",
    "MISSING_JSON",
    "RELIABILITY_PNG",
    "FoldEvaluator",
    "FoldPredictions",
    "as_flag",
    "load_fold_weights",
    "predict_fold",
]

logger = logging.getLogger(__name__)

METRICS_JSON = "metrics.json"
"""Fold metrics; written last, so its presence marks a finished evaluation."""
CASES_CSV = "per_case.csv"
DELETION_PNG = "deletion_curve.png"
RELIABILITY_PNG = "reliability.png"
"""Reliability diagram of the held-out probabilities, raw and calibrated."""
MISSING_JSON = "missing_sequences.json"
MAPS_DIR = "maps"
"""``<case_id>_class_map.nii.gz`` (float32) and ``<case_id>_mask.nii.gz`` (uint8) on the preprocessed grid."""


class FoldPredictions(NamedTuple):
    """Per-case results of one pass over a fold."""

    case_ids: list[str]
    labels: Tensor
    """Ground-truth class indices (N,)."""
    logits: Tensor
    """Raw logits (N, C), float32."""
    probs: Tensor
    """Softmax of the raw logits (N, C) (uncalibrated)."""
    maps: list[Tensor]
    """Class attention map of the ground-truth class per case, (H, W, D) on the input grid (CPU, float32)."""
    ap: Tensor
    """Activation precision per case (N,), float64; NaN for a case without mask."""
    localisation: dict[str, Tensor]
    """:data:`~scripts.metrics.LOCALISATION_KEYS` → per-case values (N,), float64; NaN without mask."""
    similarities: Tensor | None
    """S(x, P) per case (N, K_total) for a prototype model; None for a CNN."""
    ap_eq28: Tensor | None
    """AP per case (N,) of the ground-truth class's Eq. 28 map (scales summed, whole volume) of a prototype
    model, float64, NaN without mask; None for a CNN."""
    peaks: dict[str, Tensor] | None
    """:data:`~.prototypes.PEAK_KEYS` → per-case share (N,) of the top prototypes' peaks in the brain / tumour and
    their mean distance to the tumour in voxels (prototype models; NaN for the tumour without mask); None for a CNN."""
    top_columns: list[list[int]] | None = None
    """Per case, the classifier columns of its top prototypes (those whose peaks are read); None for a CNN."""
    tumour_in_support: Tensor | None = None
    """Per case (N,), float64, the share of the tumour every prototype scale's maps may cover
    (:func:`~scripts.metrics.share_in_support`; NaN without mask); None for a CNN."""


def as_flag(value: bool | str, name: str) -> bool:
    """A boolean setting given as a bool or as ``"true"``/``"false"`` (any case, as a command line passes it)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"{name} must be true or false, got {value!r}.")
    return text == "true"


def load_fold_weights(network: nn.Module, model_file: str | PathLike, map_location: str | torch.device = "cpu") -> None:
    """Load a fold's trained state dict (``weights_only=True``) into ``network``.

    Raises:
        FileNotFoundError: ``model_file`` does not exist (the fold was not trained).
    """
    path = Path(model_file)
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained weights at {path}: train this fold first with the same --config_file stack, --fold and "
            "--output_dir (python -m monai.bundle run --config_file configs/train.json --fold K --output_dir DIR)."
        )
    network.load_state_dict(torch.load(path, map_location=map_location, weights_only=True))


def predict_fold(
    network: nn.Module,
    loader: Any,
    device: str | torch.device,
    class_map_method: str | None = None,
    map_dir: str | PathLike | None = None,
    scale_combination: str = DEFAULT_SCALE_COMBINATION,
    brain_only: bool = False,
    top_prototypes: int = TOP_PROTOTYPES,
    reference: Tensor | None = None,
) -> FoldPredictions:
    """Probabilities, ground-truth class maps and per-case AP over a loader of preprocessed cases.

    A prototype model runs once per batch (``explain``): its logits, similarities, class maps (the
    configured one and Eq. 28's) and the prototype maps whose peaks are read all come from that pass.

    Args:
        network: the fold's model (UMProtoShare or BackboneCNN), already on ``device``; run in eval mode.
        loader: batches with ``image`` (B, C, H, W, D), ``label`` (B,), ``case_id`` and, for AP, ``mask``
            (B, 1, H, W, D).
        device: where the forward passes run.
        class_map_method: see :func:`scripts.explain.attribution.class_map` (None: the family's default).
        map_dir: also save each map and mask as NIfTI here; the images must be MetaTensors with the
            preprocessed affine (an uncached dataset).
        scale_combination, brain_only: see :func:`scripts.explain.attribution.class_map`.
        top_prototypes: prototypes per case whose peaks are read: the first by their contribution to the predicted
            class (Δy), or with a ``reference`` those voting for it first, each group by Δy relative to it
            (:func:`scripts.explain.evidence.ranking_contributions`, :func:`~scripts.explain.evidence.ranking_first`).
        reference: S̄, (K_total,) (:func:`scripts.explain.evidence.ranking_reference`); None: by Δy (Eq. 31).
    """
    network.eval()
    model = unwrap(network)
    prototypes = isinstance(model, UMProtoShare)
    case_ids: list[str] = []
    labels, all_logits, maps, ap, similarities, ap_eq28, reach = [], [], [], [], [], [], []
    localisation: dict[str, list[float]] = {key: [] for key in LOCALISATION_KEYS}
    peaks: dict[str, list[float]] = {key: [] for key in PEAK_KEYS}
    top_columns: list[list[int]] = []
    for batch in loader:
        images = plain_tensor(batch["image"]).to(device)
        target = torch.as_tensor(batch["label"]).long().reshape(-1)
        explanation = None
        with torch.no_grad():
            if prototypes:
                explanation = model.explain(images)
                similarities.append(explanation.similarities.float())
                logits = explanation.logits
                weight = model.classifier.effective_weight
                contributions = ranking_contributions(explanation.similarities, weight, reference)
                first = ranking_first(weight, reference)
                eq28 = class_map(network, images, target, "prototype_maps", "sum", False, explanation).float().cpu()
            else:
                logits = network(images)
            all_logits.append(logits.float().cpu())
        options = (class_map_method, scale_combination, brain_only, explanation)
        batch_maps = class_map(network, images, target.to(device), *options).detach().float().cpu()
        predicted = logits.argmax(dim=1)
        masks = batch.get("mask")
        affines = getattr(batch["image"], "affine", None)
        if map_dir is not None and (affines is None or masks is None):
            raise ValueError("saving maps needs masks and the preprocessed affine: evaluate an uncached dataset.")
        for i, case_id in enumerate(batch["case_id"]):
            mask = None if masks is None else plain_tensor(masks[i]).cpu()
            brain = brain_mask(images[i].cpu())
            ap.append(float("nan") if mask is None else activation_precision(batch_maps[i], mask))
            case = {} if mask is None else localisation_summary(batch_maps[i], mask, brain)
            for key, values in localisation.items():
                values.append(case.get(key, float("nan")))
            if prototypes:
                ap_eq28.append(float("nan") if mask is None else activation_precision(eq28[i], mask))
                case_supports = [entry.support[i].cpu() for entry in explanation.per_scale if entry.support is not None]
                reach.append(float("nan") if mask is None else share_in_support(case_supports, mask))
                voting = None if first is None else first[predicted[i]]
                scores = contributions[i, predicted[i]]
                chosen = top_prototype_columns(scores, top_prototypes, model.active_columns, voting)
                top_columns.append(chosen)
                case_maps = [entry.maps[i] for entry in explanation.per_scale]
                within = brain if model.map_support == "brain" else None
                case_peaks = prototype_peaks(case_maps, model.prototype_columns, chosen, images.shape[2:], within)
                shares = peak_shares(case_peaks, brain, None if mask is None else mask[0] > 0)
                for key, values in peaks.items():
                    values.append(shares[key])
            if map_dir is not None:
                affine = affines[i] if affines.ndim == 3 else affines
                save_volume(Path(map_dir) / f"{case_id}_class_map.nii.gz", batch_maps[i], affine)
                save_volume(Path(map_dir) / f"{case_id}_mask.nii.gz", mask[0], affine, np.uint8)
        case_ids.extend(str(case_id) for case_id in batch["case_id"])
        labels.append(target)
        maps.extend(batch_maps)
    if not case_ids:
        raise ValueError("the evaluation loader is empty: the fold has no cases.")
    logits = torch.cat(all_logits)
    return FoldPredictions(
        case_ids,
        torch.cat(labels),
        logits,
        torch.softmax(logits, dim=1),
        maps,
        torch.tensor(ap, dtype=torch.float64),
        {key: torch.tensor(values, dtype=torch.float64) for key, values in localisation.items()},
        torch.cat(similarities).cpu() if prototypes else None,
        torch.tensor(ap_eq28, dtype=torch.float64) if prototypes else None,
        {key: torch.tensor(values, dtype=torch.float64) for key, values in peaks.items()} if prototypes else None,
        top_columns if prototypes else None,
        torch.tensor(reach, dtype=torch.float64) if prototypes else None,
    )


class _Images(Sequence):
    """The plain ``image`` tensors of a dataset, read one case at a time."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return plain_tensor(self.dataset[index]["image"])


class FoldEvaluator:
    """Evaluates a trained fold on its held-out cases and writes the fold's files (``configs/evaluate.json``).

    Calling it loads ``model_file`` into ``network`` and its calibration (``calibration.json`` beside it;
    none: the identity) and writes, in ``output_dir``: ``per_case.csv`` (case id, label, calibrated
    probabilities, prediction, AP, the raw probabilities ``raw_prob_<class>`` and logits ``logit_<class>``;
    for prototype models also ``ap_eq28``, the ``topk_peak_in_brain`` / ``topk_peak_in_tumour`` shares and
    ``topk_peak_tumour_distance``), ``deletion_curve.png``,
    ``reliability.png`` (raw and calibrated), optionally ``maps/`` (``save_maps``) and
    ``missing_sequences.json`` (``missing_sequences``), and last ``metrics.json``: ``bac``, ``accuracy``,
    ``sensitivity``, ``specificity``, ``roc_auc`` (of the calibrated probabilities: the temperature keeps
    every argmax and ranking), ``ece``, ``nll``, ``brier`` (calibrated) and ``ece_raw``, ``nll_raw``,
    ``brier_raw``, ``ece_if_calibrated`` (the ECE chance gives perfectly calibrated probabilities on these
    cases), ``calibration``, ``ap``, ``ids`` (fractions; NaN as null), the deletion curve and the
    settings used. Prototype models add ``ap_eq28``, the peak shares and distance
    (mean over all cases and, ``_correct``, over correctly classified ones) and, when the push record
    (``push.json``) lies in ``push_dir``, ``prototype_sources`` (:func:`.prototypes.source_agreement`) and
    their share that agrees, ``prototype_source_agrees``, and the share of prototypes that separate the classes
    on the push set, ``prototype_separates``, and per case (``per_case.csv``) and on average (all and correct
    cases) the share of the top prototypes that do, ``topk_separating`` (null where the record has no class
    means); null for a CNN.

    Args:
        network: the fold's model, on ``device`` (``@fold_model``: UM-ProtoShare, a baseline or the CNN).
        model_file: the fold's trained weights (``<fold_dir>/model.pt``).
        items: the held-out fold's datalist items.
        preprocessing: preprocessing with masks (``preprocessing_transforms(with_mask=True)``), no augmentation.
        output_dir: the fold's directory.
        class_names: names in label order.
        cache_dir: preprocessing cache; not used with ``save_maps``, which needs each case's affine (the
            cache keeps plain tensors).
        fold: fold index (for the log and ``metrics.json``).
        device: where the forward passes run.
        class_map_method: see :func:`scripts.explain.attribution.class_map`; None: the model family's default.
        scale_combination: how a shared prototype model's scales are added into its class map
            (:data:`scripts.maps.SCALE_COMBINATIONS`).
        brain_only: class maps restricted to the brain (every method alike); bool or "true"/"false".
        batch_size: cases per batch of the first pass (class maps; Grad-CAM needs gradients).
        num_workers: loader workers of the first pass.
        ids_batch_size: deleted (and missing-sequence) copies per forward pass.
        ids_steps: deletion steps (50: 2% each, 51 copies per case).
        save_maps: write each case's class map and mask as NIfTI on the preprocessed grid (bool or
            "true"/"false", as the command line gives it).
        missing_sequences: also report BAC with each non-empty proper subset of sequences missing (idem).
        sequence_names: channel names, in channel order.
        check_voxels: read every voxel of every case first (truncated files, NaN/inf).
        top_prototypes: prototypes per case whose map peaks are read (ranked as ``evidence_ranking`` says).
        push_dir: folder of the fold's push record; None: beside ``model_file`` (where training writes it).
        precision: the network's precision during the evaluation (:data:`~scripts.networks.PRECISIONS`);
            the network's own setting is restored afterwards.
        bf16_recheck_margin: at bf16, cases whose two largest logits lie closer than this run again in fp32
            (:meth:`~scripts.networks.groups.GroupedNetwork.at_precision`); 0: bf16 alone.
        uncertainty_flips: also measure each case's flip spread (:func:`scripts.uncertainty.spread_of`, 8
            forward passes per case): ``flip_spread`` and ``caution`` (the report's banner would fire, for any
            of :func:`~scripts.explain.evidence.confidence_warnings`' reasons) in ``per_case.csv``, their
            means in ``metrics.json``; bool or "true"/"false".
        flip_average: the probabilities evaluated (BAC, calibration, ``prob_*``) are the mean over each case's
            8 mirror images of the calibrated probabilities, as inference shows them; the single pass's
            calibrated ones are kept as ``single_prob_*`` and ``*_single`` (bool or "true"/"false").
        evidence_ranking: what the top prototypes are ranked by (:data:`scripts.prototypes.EVIDENCE_RANKINGS`, as
            inference ranks them); ``metrics.json`` says which was used (``relative`` needs the push record's class
            means, else it is ``contribution``).

    Cases whose files cannot be used (missing, unreadable, mismatched, non-finite) are left out of every
    number, logged, and listed in ``errors.json`` beside ``metrics.json`` (``failures``); the others are
    evaluated.
    """

    def __init__(
        self,
        network: nn.Module,
        model_file: str | PathLike,
        items: Sequence[dict],
        preprocessing: Compose,
        output_dir: str | PathLike,
        class_names: Sequence[str],
        cache_dir: str | PathLike | None = None,
        fold: int = 0,
        device: str | torch.device = "cpu",
        class_map_method: str | None = None,
        scale_combination: str = DEFAULT_SCALE_COMBINATION,
        brain_only: bool | str = False,
        batch_size: int = 1,
        num_workers: int = 0,
        ids_batch_size: int = 17,
        ids_steps: int = 50,
        save_maps: bool | str = False,
        missing_sequences: bool | str = False,
        sequence_names: Sequence[str] = SEQUENCES,
        check_voxels: bool = True,
        top_prototypes: int = TOP_PROTOTYPES,
        push_dir: str | PathLike | None = None,
        precision: str = "fp32",
        bf16_recheck_margin: float = BF16_RECHECK_MARGIN,
        uncertainty_flips: bool | str = True,
        flip_average: bool | str = True,
        evidence_ranking: str = "relative",
    ) -> None:
        if min(batch_size, ids_batch_size, ids_steps, top_prototypes) < 1:
            raise ValueError(
                "batch_size, ids_batch_size, ids_steps and top_prototypes must be >= 1, got "
                f"{batch_size}, {ids_batch_size}, {ids_steps}, {top_prototypes}."
            )
        self.network = network
        self.model_file = Path(model_file)
        self.save_maps = as_flag(save_maps, "save_maps")
        self.missing_sequences = as_flag(missing_sequences, "missing_sequences")
        items, bad = validate_cases(items, check_voxels, skip_bad_cases=True)
        self.failures = [error.as_record() for error in bad]
        self.case_ids = [str(item.get("case_id")) for item in items]
        self.dataset = make_dataset(items, preprocessing, cache_dir=None if self.save_maps else cache_dir)
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.fold = int(fold)
        self.device = torch.device(device)
        self.class_map_method = class_map_method
        self.scale_combination = scale_combination
        self.brain_only = as_flag(brain_only, "brain_only")
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.ids_batch_size = int(ids_batch_size)
        self.ids_steps = int(ids_steps)
        self.sequence_names = list(sequence_names)
        self.top_prototypes = int(top_prototypes)
        self.push_dir = self.model_file.parent if push_dir is None else Path(push_dir)
        self.precision = resolve_precision(precision, self.device)
        self.bf16_recheck_margin = checked_recheck_margin(bf16_recheck_margin)
        self.uncertainty_flips = as_flag(uncertainty_flips, "uncertainty_flips")
        self.flip_average = as_flag(flip_average, "flip_average")
        self.evidence_ranking = checked_ranking(evidence_ranking)

    def _predict(self, images: Tensor) -> Tensor:
        return self.network(images.to(self.device))

    def _mirrored(self, images: Sequence[Tensor], calibration: Calibration) -> Tensor | None:
        """(N, 8, C) calibrated probabilities of each case's mirror images, or None when neither flip option is on."""
        if not (self.uncertainty_flips or self.flip_average):
            return None
        return torch.cat([flip_probabilities(self.network, image[None].to(self.device), calibration) for image in images])

    def _caution(
        self, model: nn.Module, probs: Tensor, single: Tensor, similarities: Tensor | None, mirrored: Tensor | None
    ) -> dict[str, Tensor] | None:
        """Per case ``flip_spread`` and ``caution`` (the banner's verdict), or None without ``uncertainty_flips``."""
        if not self.uncertainty_flips or mirrored is None:
            return None
        active = model.active_columns.cpu() if isinstance(model, UMProtoShare) else None
        spreads = spread_of(mirrored, probs.argmax(dim=1))
        flags = []
        for i, spread in enumerate(spreads.tolist()):
            shown = dict(zip(self.class_names, probs[i].tolist()))
            case_similarities = None if similarities is None else similarities[i][active].tolist()
            single_class = self.class_names[int(single[i].argmax())] if self.flip_average else None
            flags.append(bool(confidence_warnings(shown, case_similarities, spread, single_class)))
        return {"flip_spread": spreads, "caution": torch.tensor(flags, dtype=torch.float64)}

    @property
    def errors_file(self) -> Path:
        """``errors.json`` of the evaluation: the cases evaluated and those left out (case, file, reason)."""
        return self.output_dir / ERRORS_JSON

    def __call__(self) -> dict[str, Any]:
        """Evaluate, write the files, log BAC/AP/IDS; returns the content of ``metrics.json``.

        Raises:
            DataError: no held-out case is usable (``errors.json`` lists why).
        """
        write_json(self.errors_file, {"done": self.case_ids, "failed": self.failures})
        if not self.case_ids:
            raise DataError(None, str(self.errors_file), f"fold {self.fold}: no usable held-out case")
        load_fold_weights(self.network, self.model_file, self.device)
        self.network.eval()
        model = unwrap(self.network)
        previous = getattr(model, "precision", "fp32"), getattr(model, "bf16_recheck_margin", BF16_RECHECK_MARGIN)
        model.precision, model.bf16_recheck_margin = self.precision, self.bf16_recheck_margin
        try:
            return self._evaluate(model)
        finally:
            model.precision, model.bf16_recheck_margin = previous

    def _evaluate(self, model: nn.Module) -> dict[str, Any]:
        push = load_push_for(self.push_dir, model) if isinstance(model, UMProtoShare) else None
        reference = None if push is None else ranking_reference(push.records, self.evidence_ranking)
        calibration = Calibration.load(self.model_file)  # a bad file stops the run before the forward passes
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        map_dir = self.output_dir / MAPS_DIR if self.save_maps else None
        result = predict_fold(
            self.network, loader, self.device, self.class_map_method, map_dir, self.scale_combination, self.brain_only,
            self.top_prototypes, reference,
        )
        single = calibration.apply(result.logits)
        images = _Images(self.dataset)
        mirrored = self._mirrored(images, calibration)
        probs = mirrored.mean(dim=1) if self.flip_average else single
        curve = deletion_curve(self._predict, images, result.maps, result.labels, self.ids_batch_size, self.ids_steps)
        ids = incremental_deletion_score(curve)
        caution = self._caution(model, probs, single, result.similarities, mirrored)
        sources = None if push is None else source_agreement(
            push.records, model.classifier.effective_weight, self.class_names, model.active_columns
        )
        separating = None if result.top_columns is None else separating_share(result.top_columns, sources)
        metrics: dict[str, Any] = {
            **classification_metrics(result.labels, probs),
            **calibration_metrics(probs, result.labels),
            "ece_if_calibrated": ece_if_calibrated(probs),
            **{f"{key}_raw": value for key, value in calibration_metrics(result.probs, result.labels).items()},
            **{f"{key}_single": value for key, value in calibration_metrics(single, result.labels).items()},
            "bac_single": classification_metrics(result.labels, single)["bac"],
            "flip_average": self.flip_average,
            "calibration": calibration.to_dict(),
            "ap": float(result.ap.mean()),
            "ids": ids,
            "localisation": {key: float(values.mean()) for key, values in result.localisation.items()},
            "similarity_spread": None if result.similarities is None else similarity_spread(
                result.similarities[:, model.active_columns.cpu()]
            ),
            **(dict.fromkeys(READOUT_KEYS) if result.peaks is None else fold_readouts(
                result.ap_eq28, result.peaks, probs.argmax(dim=1) == result.labels, self.top_prototypes, sources,
                separating, result.tumour_in_support,
            )),
            "evidence_ranking": None if result.peaks is None else "contribution" if reference is None else "relative",
            "fold": self.fold,
            "cases": len(result.case_ids),
            "class_map_method": self.class_map_method,
            "scale_combination": self.scale_combination,
            "brain_only": self.brain_only,
            "deletion_curve": curve.tolist(),
            "ids_steps": self.ids_steps,
            "ids_batch_size": self.ids_batch_size,
            "precision": self.precision,
            "bf16_recheck_margin": self.bf16_recheck_margin if self.precision == "bf16" else None,
            "flip_spread": None if caution is None else float(caution["flip_spread"].mean()),
            "caution_rate": None if caution is None else float(caution["caution"].mean()),
        }
        extra = {f"raw_prob_{name}": result.probs[:, c] for c, name in enumerate(self.class_names)}
        extra.update({f"single_prob_{name}": single[:, c] for c, name in enumerate(self.class_names)})
        extra.update({f"logit_{name}": result.logits[:, c] for c, name in enumerate(self.class_names)})
        extra.update({} if result.peaks is None else {"ap_eq28": result.ap_eq28, **result.peaks})
        extra.update({} if result.tumour_in_support is None else {"tumour_in_support": result.tumour_in_support})
        extra.update({} if separating is None else {"topk_separating": separating})
        extra.update({} if caution is None else caution)
        write_case_table(
            self.output_dir / CASES_CSV, result.case_ids, result.labels, probs, result.ap, self.class_names, extra
        )
        plot_reliability(
            self.output_dir / RELIABILITY_PNG, result.probs, probs, result.labels,
            title=f"fold {self.fold}: held-out reliability ({calibration.method}, T = {calibration.temperature:.2f})",
        )
        plot_deletion_curve(self.output_dir / DELETION_PNG, curve, ids, f"fold {self.fold} deletion curve")
        if self.missing_sequences:
            names, batch = self.sequence_names, self.ids_batch_size
            subsets = missing_sequence_bac(self._predict, images, result.labels, names, batch)
            robustness = {"fold": self.fold, "bac_all_present": metrics["bac"], "missing": subsets}
            write_json(self.output_dir / MISSING_JSON, robustness)
        write_json(self.output_dir / METRICS_JSON, metrics)
        logger.info(
            "fold %d held-out calibration (%s, T = %.3f): ECE %.4f -> %.4f, NLL %.4f -> %.4f, Brier %.4f -> %.4f",
            self.fold, calibration.method, calibration.temperature,
            *(metrics[k] for key in ("ece", "nll", "brier") for k in (f"{key}_raw", key)),
        )
        logger.info(
            "fold %d held-out (%d cases): BAC %.4f  AP %.4f  IDS %.4f  (random-map AP %.4f, map region %.1f%% of "
            "the volume, peak in tumour %.0f%% of cases)",
            self.fold, metrics["cases"], metrics["bac"], metrics["ap"], ids,
            metrics["localisation"]["tumour_share_brain"], 100 * metrics["localisation"]["region_share"],
            100 * metrics["localisation"]["peak_in_tumour"],
        )
        if result.similarities is not None:
            logger.info("fold %d held-out similarity spread per prototype: %s", self.fold, metrics["similarity_spread"])
            logger.info(
                "fold %d held-out prototypes: AP (Eq. 28 sum, whole volume) %.4f; top-%d peaks in the brain %.3f, in "
                "the tumour %.3f, %.2f voxels from it on average (correct cases: %.3f, %.3f, %.2f); push source class = "
                "weights' class: %s; prototypes that separate the classes on the push set: %s (of the top-k: %s, "
                "correct cases: %s); share of the tumour inside every scale's map support %.3f", self.fold,
                *(metrics[key] for key in ("ap_eq28", "top_prototypes", *PEAK_KEYS)),
                *(metrics[f"{key}_correct"] for key in PEAK_KEYS), metrics["prototype_source_agrees"],
                metrics["prototype_separates"], metrics["topk_separating"], metrics["topk_separating_correct"],
                metrics["tumour_in_support"],
            )
            warning = support_warning(metrics["tumour_in_support"], model.map_support_margin)
            if warning is not None:
                logger.warning("fold %d: %s", self.fold, warning)
        return metrics
