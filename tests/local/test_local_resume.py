"""A run killed at any instant and run again ends with the trials of an unbroken run.

Each case kills the engine (SIGKILL, through its MNIST_ENGINE_KILL_AT seam) at one named
point, mostly in the second of two trials, then runs it again to the end. Trials run a
stand-in trainer (stub_engine.py), so only the engine's bookkeeping is under test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from local_runs import Ledger, ledger, tuning
from mnist_tuning.local.engine import KILL_ENV, KILL_POINTS

STUB = Path(__file__).with_name("stub_engine.py")
MANIFEST = tuning(
    "resume",
    budget={"maxTrials": 3, "parallelTrials": 1, "maxFailedTrials": 1},
    search={
        "learningRate": {"min": 0.01, "max": 0.1, "scale": "log"},
        "momentum": {"min": 0.5, "max": 0.9},
        "optimizer": {"values": ["sgd", "adam"]},
    },
)
# Where each case kills: POINT:N is the N-th time the run reaches POINT, each entry one run.
# "draw" and "param" are reached twice per trial (three parameters), the others once.
KILLS: dict[str, list[str]] = {
    "draw": ["draw:3"],
    "enqueued": ["enqueued:2"],
    "asked": ["asked:2"],
    "param": ["param:3"],
    "named": ["named:2"],
    "started": ["started:2"],
    "judging": ["judging:2"],
    "judged": ["judged:2"],
    "told": ["told:2"],
    "status": ["status:2"],
    # Killed again while recovering from a kill mid-trial, then while recovering the rest.
    "recovering": ["started:3", "recovering:1"],
    "again and again": ["param:3", "started:2", "judged:1"],
}


def run(
    workdir: Path, kill: str | None = None, manifest: dict[str, Any] = MANIFEST
) -> subprocess.CompletedProcess[str]:
    spec = workdir.parent / f"{workdir.name}.yaml"
    spec.write_text(yaml.safe_dump(manifest))
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    if kill is not None:
        env[KILL_ENV] = kill
    return subprocess.run(
        [sys.executable, str(STUB), "run", str(spec), str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    workdir = tmp_path_factory.mktemp("unbroken") / "run"
    result = run(workdir)
    assert result.returncode == 0, result.stderr
    return ledger(workdir)


def test_every_kill_point_has_a_case() -> None:
    assert set(KILL_POINTS) <= {kill.split(":")[0] for kills in KILLS.values() for kill in kills}


@pytest.mark.parametrize("case", list(KILLS))
def test_a_killed_run_run_again_ends_with_the_trials_of_an_unbroken_run(
    tmp_path: Path, unbroken: Ledger, case: str
) -> None:
    workdir = tmp_path / "run"
    for kill in KILLS[case]:
        killed = run(workdir, kill)
        assert killed.returncode == -signal.SIGKILL, (kill, killed.returncode, killed.stderr)
    result = run(workdir)
    assert result.returncode == 0, result.stderr
    counted, shown = ledger(workdir)
    assert shown == unbroken[1]
    assert counted == unbroken[0]
    assert [draw for draw, _ in counted] == [0, 1, 2]


def test_an_unknown_kill_point_is_refused(tmp_path: Path) -> None:
    result = run(tmp_path / "run", "nowhere")
    assert result.returncode != 0
    assert "MNIST_ENGINE_KILL_AT=nowhere" in result.stderr


EARLY_STOPPING = {
    **MANIFEST,
    "metadata": {"name": "resume-median"},
    "spec": {
        **MANIFEST["spec"],
        "budget": {"maxTrials": 4, "parallelTrials": 1, "maxFailedTrials": 1},
        "earlyStopping": {"minTrials": 1, "startStep": 1},
    },
}


@pytest.mark.parametrize("kill", ["judging:3", "judged:3", "told:2", "started:4"])
def test_a_killed_run_with_early_stopping_resumes_to_the_trials_of_an_unbroken_run(
    tmp_path: Path, kill: str
) -> None:
    unbroken = tmp_path / "unbroken"
    assert run(unbroken, manifest=EARLY_STOPPING).returncode == 0
    expected = ledger(unbroken)
    assert expected[1]["trials"]["earlyStopped"] >= 1  # the rule did stop a trial
    workdir = tmp_path / "run"
    assert run(workdir, kill, manifest=EARLY_STOPPING).returncode == -signal.SIGKILL
    result = run(workdir, manifest=EARLY_STOPPING)
    assert result.returncode == 0, result.stderr
    assert ledger(workdir) == expected
