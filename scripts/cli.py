"""What the bundle's commands do at their edges: one clear line and an exit code instead of a traceback.

Exit codes of ``python -m monai.bundle run`` with inference.json or evaluate.json:

- 0: every case done;
- 1: some case failed (the others were done; the failures are listed in ``errors.json``);
- 2: a path the command names is missing or unusable (``--input_dir``, ``--ckpt_path``, ``--dataset_dir``,
  ...), found before any work; the line says which option and why.

The functions raise :class:`SystemExit`, which MONAI's config expressions let through untouched
(they wrap ``Exception`` only), so the message is the last line the user sees. With ``debug`` (the
configs' ``--debug True``) the exception behind a message is printed first, with its traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
import zipfile
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from scripts.data import DataError
from scripts.weights import fit, optional_state_keys, read_state_dict, suggest_stack

__all__ = [
    "ERRORS_JSON",
    "EXIT_BAD_INPUT",
    "EXIT_CASES_FAILED",
    "exit_if_failed",
    "input_error",
    "load_weights",
    "require_checkpoint",
    "require_path",
    "reported",
]

EXIT_CASES_FAILED = 1
EXIT_BAD_INPUT = 2
ERRORS_JSON = "errors.json"
"""Summary of a run in its output folder: the cases done and the cases that failed (case, file, reason)."""
T = TypeVar("T")


def input_error(
    option: str,
    value: Any,
    reason: str,
    errors_dir: str | PathLike | None = None,
    case_id: str | None = None,
    file: str | PathLike | None = None,
    debug: bool = False,
) -> SystemExit:
    """The exit for a bad option: prints ``error: --<option> <value>: <reason>`` on stderr, writes
    ``<errors_dir>/errors.json`` (nothing done, one failure: ``case_id``, ``file`` (default ``value``)
    and the reason) when given, and returns ``SystemExit(2)`` to raise. With ``debug``, the exception
    being handled, if any, is printed first."""
    if debug and sys.exc_info()[1] is not None:
        traceback.print_exc()
    message = f"error: --{option} {value}: {reason}"
    if errors_dir is not None:
        folder = Path(errors_dir)
        folder.mkdir(parents=True, exist_ok=True)
        where = file if file is not None else value
        failure = {"case_id": case_id, "file": None if where is None else str(where), "reason": f"--{option}: {reason}"}
        (folder / ERRORS_JSON).write_text(json.dumps({"done": [], "failed": [failure]}, indent=2) + "\n")
    print(message, file=sys.stderr, flush=True)
    return SystemExit(EXIT_BAD_INPUT)


def require_path(
    value: str | PathLike | None, option: str, kind: str = "any", errors_dir: str | PathLike | None = None
) -> str:
    """``value`` when it names an existing ``kind`` ("file", "dir" or "any"); otherwise exit 2 naming ``option``."""
    if kind not in ("file", "dir", "any"):
        raise ValueError(f"kind must be 'file', 'dir' or 'any', got {kind!r}.")
    if value is None or str(value) == "":
        raise input_error(option, value, "not given", errors_dir)
    path = Path(value).expanduser()
    if not path.exists():
        raise input_error(option, value, "does not exist", errors_dir)
    if kind == "file" and not path.is_file():
        raise input_error(option, value, "is not a file", errors_dir)
    if kind == "dir" and not path.is_dir():
        raise input_error(option, value, "is not a folder", errors_dir)
    return str(value)


def require_checkpoint(value: str | PathLike | None, option: str, errors_dir: str | PathLike | None = None) -> str:
    """:func:`require_path` for a PyTorch checkpoint, which is also checked to be a zip archive (what
    ``torch.save`` writes), so a truncated or foreign file stops here rather than inside the loader."""
    require_path(value, option, "file", errors_dir)
    if not zipfile.is_zipfile(Path(value).expanduser()):
        raise input_error(option, value, "is not a PyTorch checkpoint (not a zip archive; truncated?)", errors_dir)
    return str(value)


def load_weights(
    network: nn.Module,
    value: str | PathLike | None,
    option: str,
    errors_dir: str | PathLike | None = None,
    bundle_root: str | PathLike = ".",
    debug: bool = False,
) -> nn.Module:
    """Load the checkpoint ``value`` (``weights_only=True``; a state dict, or one under ``"model"``) into
    ``network``, or exit 2 naming ``option``: not a checkpoint, no weights in it, or weights that do not fit
    (the count of missing and unexpected keys, the first mismatched shape, and the bundle's config stack
    they fit, from :func:`scripts.weights.suggest_stack` over ``bundle_root``'s configs)."""
    require_checkpoint(value, option, errors_dir)
    try:
        checkpoint = torch.load(Path(value).expanduser(), map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling problem is the file's, reported as such
        reason = f"cannot be read with torch.load(weights_only=True): {str(error).splitlines()[0]}"
        raise input_error(option, value, reason, errors_dir, debug=debug) from None
    state = read_state_dict(checkpoint)
    if state is None:
        found = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise input_error(option, value, f"holds no network weights (found {found})", errors_dir, debug=debug)
    result = fit(state, network.state_dict(), optional_state_keys(network))
    if not result.ok:
        reason = f"does not fit the network: {result.describe()}; {suggest_stack(state, bundle_root)}"
        raise input_error(option, value, reason, errors_dir, debug=debug)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:  # keys fit, settings do not (UMProtoShare's addon_input)
        reason = "does not fit the network: " + "; ".join(str(error).splitlines()[1:]).strip()
        raise input_error(option, value, reason, errors_dir, debug=debug) from None
    return network


def reported(
    function: Callable[..., T],
    option: str,
    value: Any,
    *args: Any,
    errors_dir: str | PathLike | None = None,
    debug: bool = False,
    **kwargs: Any,
) -> T:
    """``function(*args, **kwargs)``, where a :class:`~scripts.data.DataError` (the input named by
    ``option`` is unusable: no case found, a broken CSV, ...) becomes exit 2 naming ``option``, and the
    error's case and file in ``errors.json``."""
    try:
        return function(*args, **kwargs)
    except DataError as error:
        raise input_error(option, value, str(error), errors_dir, error.case_id, error.path, debug) from None


def exit_if_failed(failed: Sequence[Mapping[str, Any]], summary: str | PathLike) -> None:
    """Exit 1 with one line when ``failed`` lists any case (after everything else was written to ``summary``)."""
    if failed:
        names = ", ".join(str(f.get("case_id")) for f in failed[:5]) + (", ..." if len(failed) > 5 else "")
        print(f"error: {len(failed)} case(s) failed ({names}); see {summary}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_CASES_FAILED)
