"""The MONAI Label infer task serving the bundle: class scores, plus the prototype evidence on request."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.utils.others.generic import strtobool

__all__ = ["CHANNELS", "GliomaGradingInfer", "StudyError", "check_study"]

CHANNELS = ("T1", "T1-CE", "T2", "FLAIR")
"""The sequences of a study's 4D NIfTI, in volume order along its fourth axis."""
REQUEST_KEYS = ("image_path", "device", "evidence")
"""Request entries the writer needs; the bundle's ``SelectItemsd`` drops them, so they are put back."""


class StudyError(ValueError):
    """A study that cannot be graded; the message names the study and the problem."""

    def __init__(self, study: str, problem: str) -> None:
        super().__init__(f"study {study!r}: {problem}")


def study_id(path: str | os.PathLike) -> str:
    """The datastore id of a study file: its name without ``.nii``/``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_study(path: str | os.PathLike) -> None:
    """Raise :class:`StudyError` unless ``path`` is a readable 4D NIfTI of the four sequences with finite voxels."""
    name = study_id(path)
    try:  # nibabel raises many types for unreadable files; all mean the same here
        image = nib.load(str(path))
    except Exception as error:
        raise StudyError(name, f"cannot read {path}: {type(error).__name__}: {error}") from error
    shape = image.shape
    if len(shape) != 4:
        raise StudyError(name, f"expected one 4D NIfTI of the {len(CHANNELS)} sequences {list(CHANNELS)} "
                               f"(python -m scripts.stack_4d), got a {len(shape)}D image of shape {shape}")
    if shape[3] != len(CHANNELS):
        raise StudyError(name, f"expected {len(CHANNELS)} volumes {list(CHANNELS)} along the fourth axis, "
                               f"got {shape[3]} (shape {shape})")
    try:
        voxels = np.asarray(image.dataobj)
    except Exception as error:  # a truncated or corrupt file
        raise StudyError(name, f"cannot read the voxels of {path}: {type(error).__name__}: {error}") from error
    finite = np.isfinite(voxels).reshape(-1, len(CHANNELS)).all(axis=0)
    if not finite.all():
        bad = [channel for channel, ok in zip(CHANNELS, finite) if not ok]
        raise StudyError(name, f"non-finite voxels (NaN or inf) in {bad}")


class _BundleFiles(BundleConstants):
    """Bundle constants whose PyTorch model is ``model_path``, wherever it is, plus the extra config file.

    ``BundleInferTask`` looks for ``os.path.join(bundle, "models", model_pytorch())``; an absolute
    ``model_path`` makes that join the path itself.
    """

    def __init__(self, model_path: str, extra_config: str | None) -> None:
        self.model_path = os.path.abspath(model_path)
        self.extra_config = extra_config

    def model_pytorch(self) -> str:
        return self.model_path


class GliomaGradingInfer(BundleInferTask):
    """Grade one study (a 4D NIfTI, channels [T1, T1-CE, T2, FLAIR]) with the bundle's own preprocessing,
    network and calibrated softmax; with the request's ``evidence`` (default true) also its prototype evidence.

    The result JSON has MONAI Label's ``prediction`` (``idx``, ``label`` from the metadata, ``score`` =
    probability, calibrated by ``calibration.json`` beside ``model_path`` when there is one and averaged over
    the study's 8 mirror images with the bundle's ``flip_average``: the bundle's ``inferer``,
    :class:`scripts.uncertainty.CalibratedInferer`) and, with evidence, ``evidence``: what the bundle's inference writes to
    ``prediction.json``; the result file is then the predicted class's evidence map (Eq. 28) on the
    study's grid.

    The network runs at the bundle's ``precision`` (``configs/inference.json``; fp32 by default), and the
    server process takes the bundle's ``allocator`` setting (:func:`scripts.engine.configure_allocator`).

    Args:
        bundle_root: the bundle (``configs/inference.json``, ``configs/metadata.json``, ``scripts``).
        model_path: the weights, a state dict of ``network_def``; ``push.json`` beside it names the
            prototypes' source cases.
        extra_config: a JSON/YAML file merged over ``configs/inference.json`` (the network settings a
            model was trained with, say), or None.

    Raises:
        FileNotFoundError: no weights at ``model_path``.
        RuntimeError: the weights cannot be read or do not fit the configured network.
    """

    def __init__(self, bundle_root: str, model_path: str, extra_config: str | None = None) -> None:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"glioma_grading: no weights at {os.path.abspath(model_path)} "
                                    "(--conf model_path WEIGHTS.pt)")
        super().__init__(bundle_root, {}, const=_BundleFiles(model_path, extra_config), type=InferType.CLASSIFICATION,
                         add_post_restore=False, load_strict=True)
        if not self.is_valid():
            raise RuntimeError(f"glioma_grading: {bundle_root} is not a bundle with configs/inference.json")
        try:
            self.network.load_state_dict(torch.load(model_path, map_location="cpu", weights_only=True))
        except Exception as error:  # unpickling and state-dict errors alike: the weights are unusable
            raise RuntimeError(f"glioma_grading: cannot load weights {os.path.abspath(model_path)}: "
                               f"{type(error).__name__}: {error}") from error
        from scripts.engine import configure_allocator  # the bundle's, found on its root
        from scripts.networks import set_precision

        # the bundle's `allocator`: freed CPU memory kept for reuse (the same numbers, faster on the CPU)
        configure_allocator(self.bundle_config.get_parsed_content("allocator"))

        # the bundle's `precision` (fp32 | bf16 | auto); MONAI Label serves deep copies of this network
        set_precision(self.network, self.bundle_config.get_parsed_content("precision"),
                      self.bundle_config.get_parsed_content("device"),
                      self.bundle_config.get_parsed_content("bf16_recheck_margin"))
        # one model file per server: never switch to another *.pt found under <bundle>/models
        self._config.pop("model_filename", None)
        self._config["evidence"] = True

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        extra = self.const.extra_config
        parser = ConfigParser()
        parser.read_config([config, extra] if extra else config)
        # everything keyed on the checkpoint (the calibration beside it) follows the served weights
        parser.config.update({self.const.key_bundle_root(): path, "ckpt_path": self.const.model_path})
        return parser

    def run_pre_transforms(self, data: dict[str, Any], transforms: Sequence[Callable]) -> dict[str, Any]:
        """Check the study, then preprocess it without the request's string ``image_path`` (MONAI 1.6's
        ``Spacingd`` takes it for image metadata) and keep the request entries the writer needs."""
        check_study(data["image"])
        kept = {key: data[key] for key in REQUEST_KEYS if key in data}
        result = super().run_pre_transforms({k: v for k, v in data.items() if k != "image_path"}, transforms)
        return {**result, **kept}

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str | None, dict]:
        """MONAI Label's class scores, plus the evidence record and map file unless ``evidence`` is false."""
        _, result = super().writer(data, extension, dtype)
        if not strtobool(data.get("evidence", True)):
            return None, result
        record, evidence_file = self.evidence(data)
        result["evidence"] = record
        return evidence_file, result

    def evidence(self, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Run the bundle's :class:`~scripts.inference.EvidenceWriter` on the preprocessed study.

        Returns:
            Its ``prediction.json`` content (``files`` naming the study's file) and a temporary NIfTI
            of the predicted class's evidence map on the study's grid (MONAI Label deletes it once sent).
        """
        from scripts.data import InferenceCases  # the bundle's, found on its root
        from scripts.inference import EvidenceWriter

        path = str(data["image_path"])
        name = study_id(path)
        folder = tempfile.mkdtemp(prefix="glioma_grading_")
        try:
            writer = EvidenceWriter(
                network=self._get_network(data["device"], data),
                preprocessing=self.bundle_config.get_parsed_content("preprocessing"),
                cases=InferenceCases([{"case_id": name, "image": [path], "label_name": None}], []),
                output_dir=folder,
                class_names=self.bundle_config.get_parsed_content("class_names"),
                push_dir=os.path.dirname(self.const.model_path),
                top_per_scale=self.bundle_config.get_parsed_content("top_prototypes_per_scale"),
                evidence_ranking=self.bundle_config.get_parsed_content("evidence_ranking"),
                write_report=False,
                scale_combination=self.bundle_config.get_parsed_content("scale_combination"),
                calibration=self.bundle_config.get_parsed_content("calibration"),
                uncertainty_flips=self.bundle_config.get_parsed_content("uncertainty_flips"),
                flip_average=self.bundle_config.get_parsed_content("flip_average"),
            )
            record = {**writer.write_case(name, data["image"]), "files": {"image": path}}
            handle, evidence_file = tempfile.mkstemp(suffix=".nii.gz", prefix=f"{name}_evidence_")
            os.close(handle)
            shutil.move(os.path.join(folder, name, record["evidence_maps"]["class"]), evidence_file)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return record, evidence_file
