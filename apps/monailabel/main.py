"""MONAI Label app serving the UM-ProtoShare bundle in place as model ``glioma_grading``.

Start (see docs/README.md, "MONAI Label")::

    monailabel start_server --app apps/monailabel --studies DIR --conf model_path WEIGHTS.pt \
        --host 127.0.0.1 --port 8000

``--conf`` keys: ``model_path`` (default ``<bundle_root>/models/model.pt``), ``bundle_root`` (default:
the repository holding this app), ``extra_config`` (a JSON/YAML file merged over
``configs/inference.json``, e.g. the network settings the weights were trained with).
Each study in ``DIR`` is one 4D NIfTI, channels [T1, T1-CE, T2, FLAIR] (``python -m scripts.stack_4d``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from fastapi import HTTPException
from lib.infers import GliomaGradingInfer, StudyError
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

MODEL = "glioma_grading"
"""The model name in ``/info`` and ``/infer/<model>``."""


class GliomaGradingApp(MONAILabelApp):
    """One infer task, :class:`~lib.infers.GliomaGradingInfer`; bad studies answer 404/422 naming the problem."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundle_root = os.path.realpath(conf.get("bundle_root", os.path.join(app_dir, "..", "..")))
        # the task imports the bundle's `scripts` per request (MONAI Label reloads it around each call)
        sys.path.insert(0, self.bundle_root)
        with open(os.path.join(self.bundle_root, "configs", "metadata.json")) as f:
            metadata = json.load(f)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="UM-ProtoShare glioma grading",
                         description=metadata["task"], version=metadata["version"])

    def init_infers(self) -> dict[str, InferTask]:
        model_path = self.conf.get("model_path", os.path.join(self.bundle_root, "models", "model.pt"))
        return {MODEL: GliomaGradingInfer(self.bundle_root, model_path, self.conf.get("extra_config"))}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's inference, with an unknown study as HTTP 404 and a bad one as HTTP 422."""
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not store.get_image_uri(image):
            raise HTTPException(404, f"study {image!r}: not in the datastore {self.studies}")
        try:
            return super().infer(request, datastore)
        except StudyError as error:
            raise HTTPException(422, str(error)) from error
