"""Read-outs: everything that turns a network's output into what a reader sees.

Layered like the rest of the bundle (each module imports only those before it; the maps themselves
and their one resize live below, in :mod:`scripts.maps`):

- ``attribution`` (a model's class map for AP/IDS: prototype maps, Grad-CAM, occlusion) and
  ``evidence`` (one case: contributions Eq. 31, per-sequence evidence, NIfTI in the input's space);
- ``input_grid`` (maps and peaks on the input's own voxels), ``report`` (PNG pages) and
  ``report_html`` (the self-contained HTML page), ``sources`` (where a prototype came from);
- ``case_files`` (an inference case's folder: maps on the input grid, ``maps.json``, ``prediction.json``, reports);
- ``gallery`` (the prototype gallery written after training) and ``sharedness`` (Appendix G, a command).

The names below are each loaded on first use (:mod:`scripts.faces`).
"""

from __future__ import annotations

from scripts.faces import exports

__all__, __getattr__, __dir__ = exports(
    __name__,
    {
        "CLASS_MAP_METHODS": "attribution",
        "class_map": "attribution",
        "class_map_from_maps": "attribution",
        "scale_class_maps": "attribution",
        "CaseFiles": "case_files",
        "CaseEvidence": "evidence",
        "explain_case": "evidence",
        "prediction_record": "evidence",
        "prototype_contributions": "evidence",
        "PrototypeGallery": "gallery",
        "write_gallery": "gallery",
        "InputCase": "input_grid",
        "InputMap": "input_grid",
        "map_peak": "input_grid",
        "case_report": "report",
        "case_html": "report_html",
        "sharedness_report": "sharedness",
        "SourceImages": "sources",
        "load_push_for": "sources",
    },
)
