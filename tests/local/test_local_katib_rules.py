"""Local trials are judged by Katib's controller rules and summarized like a cluster's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from mnist_tuning.api.expand import expand
from mnist_tuning.api.metrics import MetricSummary
from mnist_tuning.api.spec import MnistTuningStatus, parse_tuning
from mnist_tuning.api.summarize import summarize
from mnist_tuning.local.katib import (
    GOAL_REACHED,
    MAX_FAILED_REACHED,
    MAX_TRIALS_REACHED,
    TrialRecord,
    TrialState,
    best_trial,
    experiment_status,
    verdict,
)

START = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def tuning(metric: str = "accuracy", goal: float | None = None, **budget: int) -> Any:
    objective: dict[str, Any] = {"metric": metric}
    if goal is not None:
        objective["goal"] = goal
    return parse_tuning(
        {
            "apiVersion": "tuning.mnist.dev/v1alpha1",
            "kind": "MnistTuning",
            "metadata": {"name": "rules"},
            "spec": {
                "objective": objective,
                "algorithm": {"seed": 1},
                "budget": {"maxTrials": 4, "parallelTrials": 2, "maxFailedTrials": 2, **budget},
                "search": {"learningRate": {"min": 0.001, "max": 0.1}},
            },
        }
    )


def record(number: int, state: TrialState, accuracy: float | None = None) -> TrialRecord:
    metrics = {}
    if accuracy is not None:
        metrics = {
            "accuracy": MetricSummary(
                name="accuracy", min=accuracy / 2, max=accuracy, latest=accuracy
            ),
            "loss": MetricSummary(name="loss", min=1 - accuracy, max=2.0, latest=1 - accuracy),
        }
    return TrialRecord(
        number=number,
        name=f"rules-{number:03d}",
        state=state,
        assignments={"learningRate": str(0.01 * (number + 1))},
        metrics=metrics,
        start=START,
        end=START + timedelta(seconds=30),
    )


def test_goal_is_checked_before_failures_and_the_trial_count() -> None:
    experiment = expand(tuning(goal=0.9))
    records = [
        record(0, "Failed"),
        record(1, "Failed"),
        record(2, "Succeeded", 0.95),
        record(3, "Succeeded", 0.5),
    ]
    assert verdict(records, experiment) == GOAL_REACHED
    assert verdict(records[:2], experiment) == MAX_FAILED_REACHED
    assert verdict([record(n, "Succeeded", 0.5) for n in range(4)], experiment) == (
        MAX_TRIALS_REACHED
    )
    assert verdict([record(0, "Succeeded", 0.5), record(1, "Running")], experiment) is None


def test_metrics_unavailable_counts_as_failed_and_killed_counts_as_done() -> None:
    experiment = expand(tuning())
    assert verdict([record(0, "MetricsUnavailable"), record(1, "Failed")], experiment) == (
        MAX_FAILED_REACHED
    )
    done = [record(0, "Killed"), record(1, "Succeeded", 0.4), record(2, "Failed")]
    assert verdict(done, experiment) is None
    assert verdict([*done, record(3, "Killed")], experiment) == MAX_TRIALS_REACHED


def test_zero_max_failed_fails_on_the_first_failure() -> None:
    experiment = expand(tuning(maxFailedTrials=0))
    assert verdict([record(0, "Succeeded", 0.5)], experiment) is None
    assert verdict([record(0, "Failed")], experiment) == MAX_FAILED_REACHED


def test_best_is_a_strict_improvement_and_loss_is_minimized() -> None:
    accuracy = expand(tuning())
    records = [record(0, "Succeeded", 0.8), record(1, "Succeeded", 0.8), record(2, "Killed", 0.99)]
    best = best_trial(records, accuracy)
    assert best is not None
    assert best.number == 0
    loss = expand(tuning(metric="loss", goal=0.15))
    best = best_trial([record(0, "Succeeded", 0.8), record(1, "Succeeded", 0.9)], loss)
    assert best is not None
    assert best.number == 1
    assert verdict([record(0, "Succeeded", 0.9)], loss) == GOAL_REACHED


def test_status_goes_through_summarize_into_the_operator_status_shape() -> None:
    the_tuning = tuning()
    experiment = expand(the_tuning)
    records = [
        record(0, "Succeeded", 0.7),
        record(1, "Failed"),
        record(2, "Succeeded", 0.9),
        record(3, "Running", 0.3),
    ]
    katib_shaped = experiment_status(
        experiment, records, started=START, now=START + timedelta(minutes=1), over=None
    )
    status = summarize(katib_shaped, the_tuning)
    assert status.phase == "Running"
    assert (status.trials.succeeded, status.trials.failed, status.trials.running) == (2, 1, 1)
    assert status.progress == "3/4"
    assert status.best is not None
    assert status.best.trial == "rules-002"
    assert status.best.metrics == {"accuracy": 0.9, "loss": 1 - 0.9}
    assert status.best.hyperparameters == {"learningRate": 0.03}
    assert status.completion_time is None
    # The manifest round-trips through the status model.
    assert MnistTuningStatus.model_validate(status.to_manifest()) == status

    over = experiment_status(
        experiment,
        records[:3],
        started=START,
        now=START + timedelta(minutes=2),
        over=MAX_FAILED_REACHED,
    )
    final = summarize(over, the_tuning)
    assert final.phase == "Failed"
    assert final.conditions[-1].reason == "ExperimentFailed"
    assert final.completion_time == "2026-01-02T03:06:05Z"
