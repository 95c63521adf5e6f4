"""summarize(): Katib's stringly, nested Experiment status becomes a typed MnistTuning status."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from mnist_tuning.api.expand import resolve_seed
from mnist_tuning.api.metrics import to_number
from mnist_tuning.api.spec import (
    HYPERPARAMETER_TYPES,
    BestTrial,
    Condition,
    MnistTuning,
    MnistTuningStatus,
    Objective,
    Phase,
    ShownBest,
    TrialCounts,
)

# Katib condition type -> our phase.
PHASES: dict[str, Phase] = {
    "Created": "Pending",
    "Running": "Running",
    "Restarting": "Running",
    "Succeeded": "Succeeded",
    "Failed": "Failed",
}
TERMINAL = ("Succeeded", "Failed")
# Katib restarts an Experiment that ended at maxTrialCount once the count is raised, for these
# policies only (its webhook refuses the raise under Never).
RESTARTABLE = ("LongRunning", "FromVolume")
MAX_TRIALS_REACHED = "ExperimentMaxTrialsReached"
# Katib counter -> TrialCounts field.
COUNTERS = {
    "trialsSucceeded": "succeeded",
    "trialsFailed": "failed",
    "trialsRunning": "running",
    "trialsPending": "pending",
    "trialsKilled": "killed",
    "trialsEarlyStopped": "early_stopped",
    "trialMetricsUnavailable": "metrics_unavailable",
}


def rfc3339(moment: datetime) -> str:
    """Format a time as Kubernetes does: UTC, whole seconds, trailing Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_better(candidate: float, incumbent: float | None, objective: Objective) -> bool:
    """Apply the one best-trial rule: strict improvement in the objective's direction."""
    if not math.isfinite(candidate):
        return False
    if incumbent is None:
        return True
    return candidate > incumbent if objective.maximize else candidate < incumbent


def _phase(conditions: list[Mapping[str, Any]]) -> Phase:
    """Terminal condition if any is true, else the last true one (Katib appends in order)."""
    true = [c for c in conditions if c.get("status") == "True" and c.get("type") in PHASES]
    terminal = [c for c in true if c["type"] in TERMINAL]
    chosen = (terminal or true)[-1:] or [{"type": "Created"}]
    return PHASES[str(chosen[0]["type"])]


def _restarting(conditions: list[Mapping[str, Any]], spec: Mapping[str, Any], done: int) -> bool:
    """Tell an Experiment whose raised maxTrialCount Katib has yet to act on.

    Between the raise and Katib's Restarting condition the Experiment still says Succeeded; read
    as final, that would end the tuning at the old budget.
    """
    succeeded = [
        c for c in conditions if c.get("type") == "Succeeded" and c.get("status") == "True"
    ]
    return (
        bool(succeeded)
        and succeeded[-1].get("reason") == MAX_TRIALS_REACHED
        and spec.get("resumePolicy") in RESTARTABLE
        and done < int(spec.get("maxTrialCount") or 0)
    )


def _conditions(conditions: Iterable[Mapping[str, Any]]) -> list[Condition]:
    return [
        Condition(
            type=str(c["type"]),
            status=c.get("status", "Unknown"),
            reason=str(c.get("reason") or ""),
            message=str(c.get("message") or ""),
            last_transition_time=c.get("lastTransitionTime"),
        )
        for c in conditions
        if c.get("type") and c.get("status") in ("True", "False", "Unknown")
    ]


def _hyperparameter(name: str, value: Any) -> float | int | str | None:
    """Parse a Katib parameter assignment (a string) back to the type of our spec."""
    kind = HYPERPARAMETER_TYPES.get(name, "number")  # names we do not know parse as numbers
    if kind == "string":
        return str(value)
    number = to_number(value)
    if number is None:
        return None
    if kind == "integer":
        return int(number) if number.is_integer() else None
    return number


def _value(metric: Mapping[str, Any], strategy: str) -> float | None:
    preferred = to_number(metric.get(strategy))
    return preferred if preferred is not None else to_number(metric.get("latest"))


def _best(optimal: Mapping[str, Any], objective: Objective) -> BestTrial | None:
    trial = optimal.get("bestTrialName")
    if not trial:
        return None
    observed = (optimal.get("observation") or {}).get("metrics") or []
    strategies = objective.strategies
    metrics: dict[str, float] = {}
    for metric in observed:
        name = metric.get("name")
        if not name:
            continue
        value = _value(metric, strategies.get(str(name), "latest"))
        if value is not None:
            metrics[str(name)] = value
    if objective.metric not in metrics:
        return None
    hyperparameters: dict[str, float | int | str] = {}
    for assignment in optimal.get("parameterAssignments") or []:
        name = str(assignment.get("name"))
        parsed = _hyperparameter(name, assignment.get("value"))
        if parsed is not None:
            hyperparameters[name] = parsed
    return BestTrial(
        trial=str(trial),
        metrics=metrics,
        hyperparameters=hyperparameters,
        objective_value=metrics[objective.metric],
    )


def _seed(spec: Mapping[str, Any], tuning: MnistTuning) -> int:
    """Return the random_state the Experiment runs with (the tuning's own when absent)."""
    settings = (spec.get("algorithm") or {}).get("algorithmSettings") or []
    for setting in settings:
        if setting.get("name") == "random_state" and str(setting.get("value")).isdigit():
            return int(setting["value"])
    return resolve_seed(tuning)


def summarize(experiment: Mapping[str, Any], tuning: MnistTuning) -> MnistTuningStatus:
    """Our status from Katib's Experiment; observedGeneration is left to the caller."""
    status = experiment.get("status") or {}
    spec = experiment.get("spec") or {}
    conditions = list(status.get("conditions") or [])
    counts = TrialCounts(**{field: int(status.get(key) or 0) for key, field in COUNTERS.items()})
    max_trials = int(spec.get("maxTrialCount") or tuning.spec.budget.max_trials)
    metadata = experiment.get("metadata") or {}
    restarting = _restarting(conditions, spec, counts.done)
    best = _best(status.get("currentOptimalTrial") or {}, tuning.spec.objective)
    return MnistTuningStatus(
        phase="Running" if restarting else _phase(conditions),
        experiment=metadata.get("name"),
        seed=_seed(spec, tuning),
        trials=counts,
        progress=f"{counts.done}/{max_trials}",
        best=best,
        shown=None if best is None else ShownBest.of(best),
        conditions=_conditions(conditions),
        start_time=status.get("startTime"),
        completion_time=None if restarting else status.get("completionTime"),
    )
