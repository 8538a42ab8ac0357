"""Override files (ablations, baselines) state only what differs from configs/train.json.

``configs/objectives/*.json`` are left out on purpose: each names a whole (clustering, λ_clst, λ_sep)
triple, so that a comparison of objectives reads its numbers from one file and stays what it says if
train.json's default moves (``mean.json`` is today's default).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

OVERRIDES = sorted(str(p) for folder in ("ablations", "baselines") for p in Path("configs", folder).glob("*.json"))


def _base_value(parser: ConfigParser, key: str):
    """train.json's value of ``key``: followed through ``%file#id`` references; expressions and ``@`` references as written."""
    value = parser[key]
    while isinstance(value, str) and value.startswith("%"):
        path, _, ref = value[1:].partition("#")
        other = ConfigParser()
        other.read_config(path)
        value = other[ref]
    return value


@pytest.mark.parametrize("path", OVERRIDES)
def test_override_sets_only_existing_ids_to_new_values(path):
    base = ConfigParser()
    base.read_config("configs/train.json")
    overlay = json.loads(Path(path).read_text())
    assert overlay, path
    for key, value in overlay.items():
        assert key in base, f"{path}: {key!r} is not an id of configs/train.json (a typo would be ignored)"
        assert _base_value(base, key) != value, f"{path}: {key!r} restates train.json's {value!r}"


def test_a_restated_default_is_caught(tmp_path):
    path = tmp_path / "restated.json"
    path.write_text(json.dumps({"fusion": "gated"}))
    with pytest.raises(AssertionError, match="restates"):
        test_override_sets_only_existing_ids_to_new_values(str(path))


def _macros(value, where: str):
    """(where, macro) for every ``%file#id`` string in a config value, nested lists and dicts included."""
    if isinstance(value, str) and value.startswith("%"):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _macros(item, f"{where}#{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _macros(item, f"{where}#{i}")


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("configs").rglob("*.json")))
def test_no_macro_points_at_another_macro(path):
    """MONAI resolves a ``%file#id`` macro once: a target that is itself a macro stays a string such as
    ``'%configs/inference.json::scale_combination'`` for a script that parses the stack once (the
    counterfactual check crashed on it with the quick start's stack)."""
    for where, macro in _macros(json.loads(Path(path).read_text()), path):
        file, _, ref = macro[1:].partition("#")
        target = ConfigParser()
        target.read_config(file or path)
        assert not (isinstance(target[ref], str) and target[ref].startswith("%")), (
            f"{where}: {macro} points at {target[ref]!r}, another macro; point at its target instead"
        )
