"""Katib's experiment controller rules, applied to trials that ran on this machine.

The local engine decides when to stop exactly as Katib's controller does (goal, then
failures, then the trial count) and describes its trials as a Katib Experiment status,
so `summarize()` turns a local run into the same `MnistTuning.status` as a cluster run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from mnist_tuning.api.expand import MEDIANSTOP_MIN_TRIALS, MEDIANSTOP_START_STEP
from mnist_tuning.api.metrics import MetricSummary
from mnist_tuning.api.spec import Objective
from mnist_tuning.api.summarize import is_better, rfc3339

TrialState = Literal[
    "Running", "Succeeded", "Failed", "MetricsUnavailable", "Killed", "EarlyStopped"
]
DONE_STATES: tuple[TrialState, ...] = (
    "Succeeded",
    "Failed",
    "MetricsUnavailable",
    "Killed",
    "EarlyStopped",
)

# Conditions, reasons and messages as Katib's status_util.go writes them.
CREATED = ("Created", "ExperimentCreated", "Experiment is created")
RUNNING = ("Running", "ExperimentRunning", "Experiment is running")


@dataclass(frozen=True)
class Verdict:
    """Why the experiment is over: Katib's terminal condition type, reason and message."""

    type: Literal["Succeeded", "Failed"]
    reason: str
    message: str


GOAL_REACHED = Verdict(
    "Succeeded",
    "ExperimentGoalReached",
    "Experiment has succeeded because Objective goal has reached",
)
MAX_TRIALS_REACHED = Verdict(
    "Succeeded",
    "ExperimentMaxTrialsReached",
    "Experiment has succeeded because max trial count has reached",
)
MAX_FAILED_REACHED = Verdict(
    "Failed",
    "ExperimentFailed",
    "Experiment has failed because max failed count has reached",
)
# Katib's status lists, by trial state.
TRIAL_LISTS: dict[TrialState, str] = {
    "Running": "runningTrialList",
    "Succeeded": "succeededTrialList",
    "Failed": "failedTrialList",
    "MetricsUnavailable": "metricsUnavailableTrialList",
    "Killed": "killedTrialList",
    "EarlyStopped": "earlyStoppedTrialList",
}
COUNTERS: dict[TrialState, str] = {
    "Running": "trialsRunning",
    "Succeeded": "trialsSucceeded",
    "Failed": "trialsFailed",
    "MetricsUnavailable": "trialMetricsUnavailable",
    "Killed": "trialsKilled",
    "EarlyStopped": "trialsEarlyStopped",
}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the engine saw it: Katib name and state, parameters, collected metrics."""

    number: int
    name: str
    state: TrialState
    assignments: dict[str, str]
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    message: str = ""
    start: datetime | None = None
    end: datetime | None = None
    series: tuple[float, ...] = ()  # the objective's values in report order (per epoch)


@dataclass(frozen=True)
class StopRule:
    """Katib's medianstop rule for one trial, fixed when the trial starts (as Katib does).

    Katib's metrics collector keeps the trial's best objective so far and, at the trial's
    `start_step`-th report only, stops it when that best is worse than `median`.
    """

    median: float
    start_step: int
    maximize: bool

    def stops(self, series: Sequence[float]) -> bool:
        """Whether a trial that reported `series` is stopped (never before start_step)."""
        if len(series) < self.start_step:
            return False
        head = series[: self.start_step]
        return max(head) < self.median if self.maximize else min(head) > self.median

    def reason(self, series: Sequence[float], metric: str) -> str:
        """Say why a trial was stopped, in Katib's words plus the numbers."""
        head = series[: self.start_step]
        best, worse = (max(head), "below") if self.maximize else (min(head), "above")
        return (
            f"Trial is early stopped: best {metric} {best:.4g} by report {self.start_step} "
            f"is {worse} the median {self.median:.4g}"
        )


def stop_rule(records: Sequence[TrialRecord], experiment: Mapping[str, Any]) -> StopRule | None:
    """Katib's medianstop service: the rule for a trial starting now, or None (no stopping).

    Its "median" is the mean, over succeeded trials, of each one's mean of its first
    start_step objective reports; there is no rule until min_trials_required have succeeded.
    """
    early_stopping = experiment["spec"].get("earlyStopping")
    if early_stopping is None:
        return None
    settings = {s["name"]: int(s["value"]) for s in early_stopping["algorithmSettings"]}
    start_step = settings[MEDIANSTOP_START_STEP]
    heads = [
        sum(r.series[:start_step]) / len(r.series[:start_step])
        for r in records
        if r.state == "Succeeded" and r.series
    ]
    if len(heads) < settings[MEDIANSTOP_MIN_TRIALS]:
        return None
    return StopRule(sum(heads) / len(heads), start_step, objective_of(experiment).maximize)


def objective_of(experiment: Mapping[str, Any]) -> Objective:
    """Read the spec's objective back from the Experiment's objective block."""
    return Objective(
        metric=experiment["spec"]["objective"]["objectiveMetricName"],
        goal=experiment["spec"]["objective"].get("goal"),
    )


def strategy(experiment: Mapping[str, Any], metric: str) -> str:
    """Return which of min/max/latest Katib takes as a metric's value (`metricStrategies`)."""
    for item in experiment["spec"]["objective"].get("metricStrategies") or []:
        if item["name"] == metric:
            return str(item["value"])
    return "max" if experiment["spec"]["objective"]["type"] == "maximize" else "min"


def metric_value(
    metrics: Mapping[str, MetricSummary], experiment: Mapping[str, Any]
) -> float | None:
    """Return a trial's objective value: its objective metric under the metric's strategy."""
    name = experiment["spec"]["objective"]["objectiveMetricName"]
    summary = metrics.get(name)
    if summary is None:
        return None
    value: float = getattr(summary, strategy(experiment, name))
    return value


def scored_value(record: TrialRecord, experiment: Mapping[str, Any]) -> float | None:
    """Return the objective value a trial is judged by: only succeeded trials have one."""
    return metric_value(record.metrics, experiment) if record.state == "Succeeded" else None


def best_trial(records: Sequence[TrialRecord], experiment: Mapping[str, Any]) -> TrialRecord | None:
    """Pick the best succeeded trial; strict improvement wins, ties keep the earlier one."""
    objective = objective_of(experiment)
    best: TrialRecord | None = None
    best_value: float | None = None
    for record in sorted(records, key=lambda r: r.number):
        value = scored_value(record, experiment)
        if value is not None and is_better(value, best_value, objective):
            best, best_value = record, value
    return best


def count(records: Sequence[TrialRecord], *states: TrialState) -> int:
    """Count the trials in any of the given states."""
    return sum(1 for r in records if r.state in states)


def verdict(records: Sequence[TrialRecord], experiment: Mapping[str, Any]) -> Verdict | None:
    """Apply Katib's order of checks: goal, then max failed, then max trials; None = go on."""
    spec = experiment["spec"]
    objective = objective_of(experiment)
    best = best_trial(records, experiment)
    value = None if best is None else scored_value(best, experiment)
    goal = objective.goal
    if (
        goal is not None
        and value is not None
        and (value >= goal if objective.maximize else value <= goal)
    ):
        return GOAL_REACHED
    failed = count(records, "Failed", "MetricsUnavailable")
    if failed > 0 and failed >= int(spec["maxFailedTrialCount"]):
        return MAX_FAILED_REACHED
    if count(records, *DONE_STATES) >= int(spec["maxTrialCount"]):
        return MAX_TRIALS_REACHED
    return None


def _condition(kind: str, status: str, reason: str, message: str, at: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastUpdateTime": at,
        "lastTransitionTime": at,
    }


def _optimal(best: TrialRecord | None) -> dict[str, Any]:
    if best is None:
        return {"observation": {}}
    return {
        "bestTrialName": best.name,
        "parameterAssignments": [{"name": k, "value": v} for k, v in best.assignments.items()],
        "observation": {
            "metrics": [
                {"name": name, "min": repr(s.min), "max": repr(s.max), "latest": repr(s.latest)}
                for name, s in best.metrics.items()
            ]
        },
    }


def experiment_status(
    experiment: Mapping[str, Any],
    records: Sequence[TrialRecord],
    *,
    started: datetime,
    now: datetime,
    over: Verdict | None,
) -> dict[str, Any]:
    """Build the Experiment status Katib's controller would write for these trials."""
    start, stamp = rfc3339(started), rfc3339(now)
    conditions = [
        _condition(CREATED[0], "True", *CREATED[1:], start),
        _condition(RUNNING[0], "False" if over else "True", *RUNNING[1:], stamp),
    ]
    status: dict[str, Any] = {
        "startTime": start,
        "completionTime": None,
        "conditions": conditions,
        "currentOptimalTrial": _optimal(best_trial(records, experiment)),
        "trials": len(records),
    }
    if over is not None:
        conditions.append(_condition(over.type, "True", over.reason, over.message, stamp))
        status["completionTime"] = stamp
    for state, key in TRIAL_LISTS.items():
        names = [r.name for r in records if r.state == state]
        if names:
            status[key] = names
            status[COUNTERS[state]] = len(names)
    return {**experiment, "status": status}
