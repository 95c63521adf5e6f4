"""summarize(): Katib's Experiment status shapes (reference/katib.md §1.2, §1.5) to our status."""

from __future__ import annotations

import random
from typing import Any

import pytest
from mnist_tuning.api.expand import expand
from mnist_tuning.api.spec import MnistTuning, Objective, parse_tuning
from mnist_tuning.api.summarize import is_better, summarize


def tuning(metric: str = "accuracy") -> MnistTuning:
    return parse_tuning(
        {
            "apiVersion": "tuning.mnist.dev/v1alpha1",
            "kind": "MnistTuning",
            "metadata": {"name": "lr", "namespace": "ns", "uid": "u-1"},
            "spec": {
                "objective": {"metric": metric},
                "algorithm": {"seed": 42},
                "budget": {"maxTrials": 12},
                "search": {
                    "learningRate": {"min": 0.01, "max": 0.05},
                    "batchSize": {"values": [32, 64]},
                    "optimizer": {"values": ["sgd", "adam"]},
                },
            },
        }
    )


def condition(
    kind: str, status: str = "True", reason: str = "", message: str = ""
) -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": "2025-11-03T10:00:02Z",
        "lastTransitionTime": "2025-11-03T10:00:02Z",
    }


CREATED = condition("Created", reason="ExperimentCreated", message="Experiment is created")
RUNNING = condition("Running", reason="ExperimentRunning", message="Experiment is running")
STOPPED = condition("Running", "False", "ExperimentRunning", "Experiment is running")
ASSIGNMENTS = [
    {"name": "learningRate", "value": "0.028162244250364066"},
    {"name": "batchSize", "value": "64"},
    {"name": "optimizer", "value": "adam"},
]
OPTIMAL = {
    "bestTrialName": "lr-abc123-cf7tfss2",
    "parameterAssignments": ASSIGNMENTS,
    "observation": {
        "metrics": [
            {"name": "accuracy", "min": "0.9012", "max": "0.9871", "latest": "0.9871"},
            {"name": "loss", "min": "0.0412", "max": "2.3104", "latest": "0.2117"},
        ]
    },
}


def experiment(status: dict[str, Any], metric: str = "accuracy") -> dict[str, Any]:
    return {**expand(tuning(metric)), "status": status}


def test_created_with_no_trials_is_pending_with_zero_counters_and_no_best() -> None:
    status = {
        "startTime": "2025-11-03T10:00:02Z",
        "completionTime": None,
        "conditions": [CREATED],
        "currentOptimalTrial": {"observation": {}},
    }
    result = summarize(experiment(status), tuning())
    assert result.phase == "Pending"
    assert result.best is None
    assert result.trials.model_dump() == dict.fromkeys(result.trials.model_dump(), 0)
    assert result.progress == "0/12"
    assert result.completion_time is None
    assert result.seed == 42


def test_an_experiment_without_status_yet_is_pending() -> None:
    result = summarize(expand(tuning()), tuning())
    assert result.phase == "Pending"
    assert result.experiment == expand(tuning())["metadata"]["name"]


def test_running_counts_trials_and_reads_the_best_by_max_for_accuracy() -> None:
    status = {
        "startTime": "2025-11-03T10:00:02Z",
        "conditions": [CREATED, RUNNING],
        "currentOptimalTrial": OPTIMAL,
        "trials": 6,
        "trialsSucceeded": 3,
        "trialsRunning": 2,
        "trialsFailed": 1,
    }
    result = summarize(experiment(status), tuning())
    assert result.phase == "Running"
    assert (result.trials.succeeded, result.trials.running, result.trials.failed) == (3, 2, 1)
    assert result.trials.pending == 0
    assert result.progress == "4/12"
    assert result.best is not None
    assert result.best.trial == "lr-abc123-cf7tfss2"
    assert result.best.metrics == {"accuracy": 0.9871, "loss": 0.0412}
    assert result.best.objective_value == 0.9871
    assert result.best.hyperparameters == {
        "learningRate": 0.028162244250364066,
        "batchSize": 64,
        "optimizer": "adam",
    }
    assert isinstance(result.best.hyperparameters["batchSize"], int)


def test_loss_objective_reads_the_min() -> None:
    status = {
        "conditions": [CREATED, RUNNING],
        "currentOptimalTrial": OPTIMAL,
        "trialsSucceeded": 1,
    }
    result = summarize(experiment(status, "loss"), tuning("loss"))
    assert result.best is not None
    assert result.best.objective_value == 0.0412


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ExperimentGoalReached", "Experiment has succeeded because Objective goal has reached"),
        (
            "ExperimentMaxTrialsReached",
            "Experiment has succeeded because max trial count has reached",
        ),
    ],
)
def test_succeeded_carries_katib_reason_and_completion_time(reason: str, message: str) -> None:
    status = {
        "startTime": "2025-11-03T10:00:02Z",
        "completionTime": "2025-11-03T10:11:47Z",
        "conditions": [CREATED, STOPPED, condition("Succeeded", reason=reason, message=message)],
        "currentOptimalTrial": OPTIMAL,
        "trials": 12,
        "trialsSucceeded": 11,
        "trialMetricsUnavailable": 1,
    }
    result = summarize(experiment(status), tuning())
    assert result.phase == "Succeeded"
    assert result.completion_time == "2025-11-03T10:11:47Z"
    assert result.progress == "12/12"
    assert result.trials.metrics_unavailable == 1
    last = result.conditions[-1]
    assert (last.type, last.status, last.reason, last.message) == (
        "Succeeded",
        "True",
        reason,
        message,
    )


def test_failed_experiment_is_failed_even_with_a_best_trial() -> None:
    status = {
        "conditions": [
            CREATED,
            STOPPED,
            condition(
                "Failed",
                reason="ExperimentFailed",
                message="Experiment has failed because max failed count has reached",
            ),
        ],
        "currentOptimalTrial": OPTIMAL,
        "trialsFailed": 3,
        "trialsSucceeded": 1,
    }
    result = summarize(experiment(status), tuning())
    assert result.phase == "Failed"
    assert result.best is not None
    assert result.trials.failed == 3
    assert result.conditions[-1].reason == "ExperimentFailed"


def test_restarting_is_running() -> None:
    status = {
        "conditions": [CREATED, STOPPED, condition("Restarting", reason="ExperimentRestarting")]
    }
    assert summarize(experiment(status), tuning()).phase == "Running"


def ended_at_max_trials(max_trials: int, policy: str) -> dict[str, Any]:
    ended = condition("Succeeded", reason="ExperimentMaxTrialsReached", message="max reached")
    status = {
        "conditions": [CREATED, STOPPED, ended],
        "trialsSucceeded": 4,
        "completionTime": "2025-11-03T10:09:00Z",
        "currentOptimalTrial": OPTIMAL,
    }
    manifest = experiment(status)
    manifest["spec"].update(maxTrialCount=max_trials, resumePolicy=policy)
    return manifest


@pytest.mark.parametrize("policy", ["LongRunning", "FromVolume"])
def test_a_raised_budget_katib_has_not_acted_on_yet_is_running(policy: str) -> None:
    # The operator patched maxTrialCount 4 -> 6; Katib still says Succeeded until it restarts.
    result = summarize(ended_at_max_trials(6, policy), tuning())
    assert result.phase == "Running"
    assert result.progress == "4/6"
    assert result.completion_time is None
    assert result.best is not None


@pytest.mark.parametrize(("max_trials", "policy"), [(4, "LongRunning"), (6, "Never")])
def test_an_experiment_that_will_not_restart_stays_succeeded(max_trials: int, policy: str) -> None:
    result = summarize(ended_at_max_trials(max_trials, policy), tuning())
    assert result.phase == "Succeeded"
    assert result.completion_time == "2025-11-03T10:09:00Z"


def test_unavailable_objective_means_no_best_and_other_unavailable_metrics_are_left_out() -> None:
    unavailable = {
        **OPTIMAL,
        "observation": {
            "metrics": [
                {
                    "name": "accuracy",
                    "min": "unavailable",
                    "max": "unavailable",
                    "latest": "unavailable",
                }
            ]
        },
    }
    status = {"conditions": [CREATED, RUNNING], "currentOptimalTrial": unavailable}
    assert summarize(experiment(status), tuning()).best is None

    loss_missing = {
        **OPTIMAL,
        "observation": {
            "metrics": [
                {"name": "loss", "min": "unavailable", "max": "unavailable", "latest": ""},
                {"name": "accuracy", "min": "0.5", "max": "unavailable", "latest": "0.93"},
            ]
        },
    }
    status = {"conditions": [CREATED, RUNNING], "currentOptimalTrial": loss_missing}
    best = summarize(experiment(status), tuning()).best
    assert best is not None
    # max is unavailable, so Katib's fallback to latest applies.
    assert best.metrics == {"accuracy": 0.93}


def test_metrics_are_found_by_name_in_any_order() -> None:
    metrics = OPTIMAL["observation"]["metrics"]  # type: ignore[index]
    for seed in range(5):
        shuffled = random.Random(seed).sample(metrics, len(metrics))
        optimal = {**OPTIMAL, "observation": {"metrics": shuffled}}
        status = {"conditions": [CREATED, RUNNING], "currentOptimalTrial": optimal}
        best = summarize(experiment(status), tuning()).best
        assert best is not None
        assert best.metrics == {"accuracy": 0.9871, "loss": 0.0412}


def test_non_numeric_parameter_values_are_dropped_not_guessed() -> None:
    optimal = {
        **OPTIMAL,
        "parameterAssignments": [
            {"name": "batchSize", "value": "sixty-four"},
            {"name": "learningRate", "value": "nan"},
            {"name": "optimizer", "value": "sgd"},
        ],
    }
    status = {"conditions": [CREATED, RUNNING], "currentOptimalTrial": optimal}
    best = summarize(experiment(status), tuning()).best
    assert best is not None
    assert best.hyperparameters == {"optimizer": "sgd"}


def test_status_manifest_has_numbers_as_numbers() -> None:
    status = {
        "conditions": [CREATED, RUNNING],
        "currentOptimalTrial": OPTIMAL,
        "trialsSucceeded": 2,
    }
    manifest = summarize(experiment(status), tuning()).to_manifest()
    assert manifest["best"]["accuracy"] == 0.9871
    assert manifest["best"]["hyperparameters"]["batchSize"] == 64
    assert manifest["trials"]["succeeded"] == 2
    assert "observedGeneration" not in manifest


def test_the_printer_columns_get_four_significant_digits_and_the_best_keeps_all() -> None:
    status = {"conditions": [CREATED, RUNNING], "currentOptimalTrial": OPTIMAL}
    manifest = summarize(experiment(status), tuning()).to_manifest()
    assert manifest["shown"] == {"best": "0.9871", "learningRate": "0.02816"}
    assert manifest["best"]["hyperparameters"]["learningRate"] == 0.028162244250364066

    unsearched = {**OPTIMAL, "parameterAssignments": [{"name": "batchSize", "value": "64"}]}
    status = {"conditions": [CREATED, RUNNING], "currentOptimalTrial": unsearched}
    assert summarize(experiment(status, "loss"), tuning("loss")).to_manifest()["shown"] == {
        "best": "0.0412"
    }
    assert "shown" not in summarize(experiment({"conditions": [CREATED]}), tuning()).to_manifest()


@pytest.mark.parametrize(
    ("metric", "candidate", "incumbent", "better"),
    [
        ("accuracy", 0.9, None, True),
        ("accuracy", 0.9, 0.8, True),
        ("accuracy", 0.8, 0.8, False),
        ("accuracy", 0.7, 0.8, False),
        ("loss", 0.1, 0.2, True),
        ("loss", 0.2, 0.2, False),
        ("loss", 0.3, 0.2, False),
        ("loss", float("nan"), None, False),
        ("accuracy", float("inf"), 0.5, False),
    ],
)
def test_is_better_is_strict_in_the_objective_direction(
    metric: str, candidate: float, incumbent: float | None, better: bool
) -> None:
    assert is_better(candidate, incumbent, Objective(metric=metric)) is better  # type: ignore[arg-type]
