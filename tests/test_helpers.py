"""The test helpers that guard CI: a hung process group is killed, children included."""

from __future__ import annotations

import os
import sys
import time

import pytest

from tests.helpers import run_process_group

SLEEPER = "import time; time.sleep(60)"


@pytest.mark.parametrize("own_session", [False, True], ids=["same-group", "own-session"])
def test_process_group_past_its_timeout_is_killed_with_the_children_holding_its_pipes(own_session):
    # the child starts a grandchild that inherits stdout/stderr, then both sleep for a minute; torchrun
    # starts its workers in sessions of their own (own_session), out of reach of the launcher's group
    parent = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', {SLEEPER!r}], start_new_session={own_session}); time.sleep(60)"
    )
    start = time.monotonic()
    with pytest.raises(AssertionError, match="killed"):
        run_process_group([sys.executable, "-c", parent], dict(os.environ), timeout=2)
    assert time.monotonic() - start < 30


def test_process_group_within_its_timeout_returns_output_and_status():
    done = run_process_group([sys.executable, "-c", "print('out'); raise SystemExit(3)"], dict(os.environ), timeout=60)
    assert (done.returncode, done.stdout) == (3, "out\n")
