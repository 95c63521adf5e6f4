"""Grid, tpe and median early stopping end to end: the real trainer on real digits."""

from __future__ import annotations

from pathlib import Path

from local_runs import RunCli, ledger, load_status, tuning
from mnist_tuning.api.spec import MnistTuningStatus


def test_a_two_by_two_grid_runs_each_combination_exactly_once(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    manifest = tuning(
        "grid",
        algorithm={"name": "grid", "seed": 4},
        budget={"maxTrials": 4, "parallelTrials": 2, "maxFailedTrials": 1},
        search={
            "learningRate": {"values": [0.02, 0.1]},
            "momentum": {"min": 0.5, "max": 0.9, "step": 0.4},
        },
    )
    workdir = tmp_path / "grid"
    result = run_cli(manifest, workdir, mnist_root)
    assert result.returncode == 0, result.stdout + result.stderr
    counted, shown = ledger(workdir)
    pairs = sorted((p["learningRate"], p["momentum"]) for _, p in counted)
    assert pairs == [("0.02", 0.5), ("0.02", 0.9), ("0.1", 0.5), ("0.1", 0.9)]
    assert shown["progress"] == "4/4"
    assert shown["trials"]["succeeded"] == 4


def test_a_tpe_run_succeeds_and_its_seed_reproduces_its_trials(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    manifest = tuning(
        "tpe",
        algorithm={"name": "tpe", "seed": 8},
        budget={"maxTrials": 3, "parallelTrials": 1, "maxFailedTrials": 1},
    )
    runs = []
    for name in ("first", "second"):
        result = run_cli(manifest, tmp_path / name, mnist_root)
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(ledger(tmp_path / name))
    assert runs[0][1]["phase"] == "Succeeded"
    assert runs[0] == runs[1]
    assert len({str(p) for _, p in runs[0][0]}) == 3


def test_early_stopping_stops_a_hopeless_trial_and_still_finds_a_good_one(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    # From 1e-5 (learns nothing in two epochs) to 0.3: the median of the first two
    # succeeded trials' first epoch stops the trials whose first epoch is worse.
    manifest = tuning(
        "median",
        algorithm={"seed": 3},
        budget={"maxTrials": 6, "parallelTrials": 1, "maxFailedTrials": 2},
        search={"learningRate": {"min": 0.00001, "max": 0.3, "scale": "log"}},
        fixed={"epochs": 2, "batchSize": 64, "momentum": 0.9},
        earlyStopping={"minTrials": 2, "startStep": 1},
    )
    workdir = tmp_path / "median"
    result = run_cli(manifest, workdir, mnist_root)
    assert result.returncode == 0, result.stdout + result.stderr
    status = MnistTuningStatus.model_validate(load_status(workdir))
    assert status.phase == "Succeeded"
    assert status.trials.early_stopped >= 1
    assert status.trials.succeeded + status.trials.early_stopped + status.trials.failed == 6
    assert status.progress == "6/6"
    assert status.best is not None
    assert status.best.metrics["accuracy"] > 0.8
    assert "EarlyStopped" in result.stdout
    stopped = [
        line for line in result.stdout.splitlines() if "EarlyStopped" in line and "trial" in line
    ]
    assert all("Trial is early stopped" in line for line in stopped), stopped
