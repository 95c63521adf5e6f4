"""The live view shows one row per trial and a failed trial's last output lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mnist_tuning.api.metrics import MetricSummary
from mnist_tuning.local.engine import Progress
from mnist_tuning.local.katib import MAX_FAILED_REACHED, TrialRecord
from mnist_tuning.local.view import LiveView, render
from rich.console import Console

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def progress() -> Progress:
    good = TrialRecord(
        number=0,
        name="view-000",
        state="Succeeded",
        assignments={"learningRate": "0.012345678", "optimizer": "adam"},
        metrics={"accuracy": MetricSummary(name="accuracy", min=0.5, max=0.97, latest=0.9612)},
        start=START,
        end=START + timedelta(seconds=75),
    )
    bad = TrialRecord(
        number=1,
        name="view-001",
        state="Failed",
        assignments={"learningRate": "9.5", "optimizer": "sgd"},
        message="trainer exited with code 3",
        start=START,
        end=START + timedelta(seconds=4),
    )
    return Progress(
        experiment="view-abc123",
        records=[good, bad],
        max_trials=4,
        parallel=2,
        max_failed=1,
        threads_per_trial=1,
        verdict=MAX_FAILED_REACHED,
        tails={"view-001": ["mnist_trainer: training diverged: loss is nan at step 6"]},
    )


def test_the_terminal_view_has_a_row_per_trial_and_the_failure_output() -> None:
    console = Console(record=True, width=160, force_terminal=True)
    console.print(render(progress(), START + timedelta(minutes=5)))
    text = console.export_text()
    assert "trials 2/4" in text
    assert "0.01235" in text  # sampled floats are shortened to four significant digits
    assert "0.9612" in text
    assert "1:15" in text
    assert "trainer exited with code 3" in text
    assert "diverged: loss is nan at step 6" in text
    assert "max failed count has reached" in text


def test_a_log_gets_one_line_per_trial_event() -> None:
    console = Console(record=True, width=160, force_terminal=False)
    view = LiveView(console)
    snapshot = progress()
    view(snapshot)
    view(snapshot)  # nothing changed: nothing more is printed
    lines = console.export_text().splitlines()
    assert sum("trial 0 Succeeded" in line for line in lines) == 1
    assert sum("trial 1 Failed" in line for line in lines) == 1
    assert any("| mnist_trainer: training diverged" in line for line in lines)
