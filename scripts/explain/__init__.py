"""Read-outs: everything that turns a network's output into what a reader sees.

Layered like the rest of the bundle (each module imports only those before it):

- ``maps``: the one resize to the input grid, class attention maps (Eq. 26–28); PyTorch only, also
  used by :mod:`scripts.metrics` and :mod:`scripts.push`;
- ``attribution`` (a model's class map for AP/IDS: prototype maps, Grad-CAM, occlusion) and
  ``evidence`` (one case: contributions Eq. 31, per-sequence evidence, NIfTI in the input's space);
- ``report`` (PNG pages) and ``report_html`` (the self-contained HTML page), ``sources`` (where a
  prototype came from);
- ``gallery`` (the prototype gallery written after training) and ``sharedness`` (Appendix G, a command).

Import the submodule you need (``import scripts.explain.maps``); the package itself imports nothing.
"""
