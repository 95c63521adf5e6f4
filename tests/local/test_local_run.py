"""`mnist-tuning run` end to end: the real trainer on real digits, as local processes."""

from __future__ import annotations

import math
import os
import signal
import subprocess
from pathlib import Path

import optuna
from local_runs import RunCli, cli_command, ledger, load_status, tuning
from mnist_tuning.api.expand import expand, resolve_seed
from mnist_tuning.api.metrics import read_metrics_file
from mnist_tuning.api.spec import MnistTuningStatus, parse_tuning
from mnist_tuning.local.engine import KILL_ENV
from mnist_tuning.local.search import distributions, draw, make_sampler, search_space

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_two_trials_find_a_best_trial_whose_metrics_are_its_own_file(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    workdir = tmp_path / "two"
    manifest = tuning("two", budget={"maxTrials": 2, "parallelTrials": 2, "maxFailedTrials": 1})
    result = run_cli(manifest, workdir, mnist_root)
    assert result.returncode == 0, result.stdout + result.stderr

    status = MnistTuningStatus.model_validate(load_status(workdir))
    assert status.phase == "Succeeded"
    assert (status.trials.succeeded, status.trials.failed) == (2, 0)
    assert status.progress == "2/2"
    assert status.conditions[-1].reason == "ExperimentMaxTrialsReached"
    best = status.best
    assert best is not None
    assert 0.01 <= float(best.hyperparameters["learningRate"]) <= 0.1
    assert 0.5 <= float(best.hyperparameters["momentum"]) <= 0.9
    reported = read_metrics_file(workdir / "trials" / best.trial / "metrics.json")
    assert best.metrics == {"accuracy": reported["accuracy"].max, "loss": reported["loss"].min}
    assert 0.5 < best.metrics["accuracy"] <= 1.0  # it learned something from 3,000 digits
    for png in ("parallel-coordinates.png", "objective-per-trial.png"):
        assert (workdir / png).read_bytes().startswith(PNG_MAGIC)
    assert best.trial in result.stdout


def test_a_run_killed_mid_trial_resumes_with_the_trials_of_an_unbroken_run(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    # The kill-point matrix (test_local_resume.py) runs a stand-in trainer; this is the
    # real one, killed while its second trial trains.
    workdir = tmp_path / "resume"
    manifest = tuning("resume", budget={"maxTrials": 2, "parallelTrials": 1, "maxFailedTrials": 1})
    killed = subprocess.run(
        cli_command(manifest, workdir, mnist_root),
        capture_output=True,
        env={**os.environ, KILL_ENV: "started:2"},
        timeout=600,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    result = run_cli(manifest, workdir, mnist_root)
    assert result.returncode == 0, result.stdout + result.stderr
    status = MnistTuningStatus.model_validate(load_status(workdir))
    assert (status.trials.succeeded, status.trials.failed, status.trials.killed) == (2, 0, 0)
    assert status.progress == "2/2"
    experiment = expand(parse_tuning(manifest))
    space = distributions(search_space(experiment))
    study = optuna.create_study(
        sampler=make_sampler(experiment, resolve_seed(parse_tuning(manifest)))
    )
    unbroken = [draw(study.sampler, study, space, lambda: None) for _ in range(2)]
    counted, _ = ledger(workdir)
    assert counted == [(0, unbroken[0]), (1, unbroken[1])]


def test_diverging_trials_spend_the_failure_budget_and_fail_the_run(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    workdir = tmp_path / "diverge"
    manifest = tuning(
        "diverge",
        budget={"maxTrials": 4, "parallelTrials": 1, "maxFailedTrials": 2},
        # With this seed, lr 10 without momentum reaches NaN within ten steps.
        algorithm={"seed": 1},
        search={"learningRate": {"values": [10.0]}},
        fixed={"epochs": 1, "batchSize": 64, "momentum": 0.0, "optimizer": "sgd"},
    )
    result = run_cli(manifest, workdir, mnist_root)
    assert result.returncode == 1, result.stdout + result.stderr
    status = MnistTuningStatus.model_validate(load_status(workdir))
    assert status.phase == "Failed"
    assert status.trials.failed == 2
    assert status.trials.done == 2  # stopped when the budget was spent, not after 4
    assert status.best is None
    assert status.conditions[-1].reason == "ExperimentFailed"
    assert "exited with code 3" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_reaching_the_goal_stops_the_run_early(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    workdir = tmp_path / "goal"
    manifest = tuning(
        "goal",
        objective={"metric": "loss", "goal": 5.0},  # any trial that learns at all reaches it
        budget={"maxTrials": 5, "parallelTrials": 1, "maxFailedTrials": 1},
    )
    result = run_cli(manifest, workdir, mnist_root)
    assert result.returncode == 0, result.stdout + result.stderr
    status = MnistTuningStatus.model_validate(load_status(workdir))
    assert status.phase == "Succeeded"
    assert status.conditions[-1].reason == "ExperimentGoalReached"
    assert status.trials.done == 1
    assert status.progress == "1/5"
    assert status.best is not None
    assert math.isfinite(status.best.metrics["loss"])
    assert status.best.metrics["loss"] <= 5.0
