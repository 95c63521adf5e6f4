"""The trainer as Katib runs it: a process with flags, a metrics file and an exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mnist_trainer.cli import parse
from mnist_trainer.config import Hyperparameters

# A measured good point: one epoch of SGD at this rate and momentum reaches ~0.98.
GOOD_POINT = ["--learning-rate=0.05", "--momentum=0.9", "--batch-size=64", "--epochs=1"]


def trainer(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mnist_trainer", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def records(path: Path) -> list[dict[str, Any]]:
    """Parse the file as Katib's JSON collector does: every non-empty line one object."""
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def full_epoch(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    metrics = tmp_path_factory.mktemp("full") / "metrics.json"
    result = trainer(*GOOD_POINT, f"--data-dir={mnist_root}", f"--metrics-file={metrics}")
    assert result.returncode == 0, result.stderr
    return result, metrics


@pytest.mark.slow
def test_one_epoch_on_the_full_data_learns(full_epoch: tuple[Any, Path]) -> None:
    result, metrics = full_epoch
    by_name = {key: rec[key] for rec in records(metrics) for key in rec}
    assert float(by_name["accuracy"]) >= 0.97
    assert float(by_name["loss"]) < 0.1
    assert float(by_name["test-accuracy"]) >= 0.97
    assert "train=50000 validation=10000" in result.stdout


@pytest.mark.slow
def test_metrics_file_is_what_katibs_json_collector_reads(full_epoch: tuple[Any, Path]) -> None:
    result, metrics = full_epoch
    lines = records(metrics)
    assert [sorted(set(rec) & {"accuracy", "loss", "test-accuracy"}) for rec in lines] == [
        ["accuracy"],
        ["loss"],
        ["test-accuracy"],
    ]
    for rec in lines:
        metric = next(k for k in rec if k in {"accuracy", "loss", "test-accuracy"})
        assert isinstance(rec[metric], str)
        float(rec[metric])
        assert isinstance(rec["timestamp"], int | float)
        assert rec["global_step"] == "1"
    accuracy = float(lines[0]["accuracy"])
    loss = float(lines[1]["loss"])
    assert f"epoch=1 accuracy={accuracy:.4f} loss={loss:.4f}" in result.stdout


def test_epochs_report_in_order_and_stale_metrics_are_dropped(
    mnist_root: Path, tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"accuracy": "0.9999", "timestamp": 1}\n')
    result = trainer(
        "--epochs=3",
        "--train-limit=1000",
        "--threads=1",
        "--learning-rate=0.05",
        "--momentum=0.9",
        f"--data-dir={mnist_root}",
        f"--metrics-file={metrics}",
    )
    assert result.returncode == 0, result.stderr
    lines = records(metrics)
    steps = [(rec["global_step"], k) for rec in lines for k in rec if k in {"accuracy", "loss"}]
    assert steps == [(str(e), k) for e in (1, 2, 3) for k in ("accuracy", "loss")]
    assert "0.9999" not in metrics.read_text()
    stamps = [rec["timestamp"] for rec in lines if "accuracy" in rec]
    assert stamps[0] < stamps[1] < stamps[2]
    assert [line.split()[0] for line in result.stdout.splitlines() if " accuracy=" in line] == [
        "epoch=1",
        "epoch=2",
        "epoch=3",
    ]


def test_the_metrics_file_defaults_to_hypertunes_environment_variable(
    mnist_root: Path, tmp_path: Path
) -> None:
    metrics = tmp_path / "from-env" / "metrics.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_trainer",
            "--train-limit=500",
            "--threads=1",
            f"--data-dir={mnist_root}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "CLOUD_ML_HP_METRIC_FILE": str(metrics)},
    )
    assert result.returncode == 0, result.stderr
    assert {k for rec in records(metrics) for k in rec} >= {"accuracy", "loss", "test-accuracy"}


def test_a_huge_learning_rate_exits_3_without_writing_nan(mnist_root: Path, tmp_path: Path) -> None:
    # Weight decay 1 at rate 10 multiplies every weight by -9 per step: the loss overflows
    # in the second epoch (2 steps per epoch here) whatever the CPU's arithmetic details.
    metrics = tmp_path / "metrics.json"
    result = trainer(
        "--learning-rate=10",
        "--momentum=0",
        "--weight-decay=1",
        "--epochs=3",
        "--train-limit=128",
        "--threads=1",
        f"--data-dir={mnist_root}",
        f"--metrics-file={metrics}",
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "diverged" in result.stderr
    assert "at step 4 (epoch 2)" in result.stderr
    assert "--learning-rate=10 --momentum=0 " in result.stderr
    assert "Traceback" not in result.stderr
    lines = records(metrics)
    assert [rec["global_step"] for rec in lines] == ["1", "1"]
    text = metrics.read_text().lower()
    assert "nan" not in text
    assert "inf" not in text
    assert "nan" not in result.stdout.lower()
    assert "epoch=2" not in result.stdout


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--learning-rate", "0"),
        ("--learning-rate", "11"),
        ("--learning-rate", "nan"),
        ("--learning-rate", "fast"),
        ("--momentum", "1"),
        ("--momentum", "-0.1"),
        ("--batch-size", "0"),
        ("--batch-size", "64.5"),
        ("--batch-size", "4097"),
        ("--epochs", "0"),
        ("--epochs", "101"),
        ("--optimizer", "rmsprop"),
        ("--dropout", "1"),
        ("--weight-decay", "-0.01"),
        ("--seed", "-1"),
        ("--train-limit", "50001"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse([f"{flag}={value}"])
    assert exited.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err


def test_a_bad_flag_exits_2_from_the_command_line(tmp_path: Path) -> None:
    result = trainer("--momentum=1.5", cwd=tmp_path)
    assert result.returncode == 2
    assert "--momentum" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_data_says_how_to_get_it_and_downloads_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    result = trainer(f"--data-dir={empty}", f"--metrics-file={tmp_path / 'm.json'}")
    assert result.returncode == 2
    assert "--data-dir" in result.stderr
    assert "make data" in result.stderr
    assert "--download" in result.stderr
    assert "Traceback" not in result.stderr
    assert not empty.exists()


def test_asking_for_a_missing_gpu_exits_2(tmp_path: Path) -> None:
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so this runs on a GPU machine too.
    result = trainer(
        "--device=cuda", f"--metrics-file={tmp_path / 'm.json'}", env={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert result.returncode == 2
    assert "--device=cuda" in result.stderr


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(tmp_path / "env.json"))
    hp, settings = parse([])
    assert hp == Hyperparameters()
    assert settings.metrics_file == tmp_path / "env.json"
    assert settings.threads in range(1, len(os.sched_getaffinity(0)) + 1)
    monkeypatch.delenv("CLOUD_ML_HP_METRIC_FILE")
    assert parse([])[1].metrics_file == Path("/tmp/hypertune/output.metrics")
