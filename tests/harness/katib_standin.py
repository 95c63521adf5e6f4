"""Play Katib's experiment controller: write Experiment status in Katib's exact shapes.

Katib's controllers need pods, which the test control plane cannot run, so tests move an
Experiment through its life by writing `.status` through the status subresource, as Katib's
controller does (kubeflow/katib v0.19.0, `experiment_types.go`, `status_util.go`):

- conditions `Created` → `Running` → `Succeeded`/`Failed`, each with `type`, `status`, `reason`,
  `message`, `lastUpdateTime`, `lastTransitionTime`; on completion `Running` flips to "False"
  (same reason) and the terminal condition is appended last;
- trial lists and counters; zero counters are omitted (`omitempty`), `trialMetricsUnavailable`
  is spelt singular;
- `currentOptimalTrial` with every value a string (`parameterAssignments[{name,value}]`,
  `observation.metrics[{name,min,max,latest}]`); before any trial reports it is
  `{"observation": {}}`.

The status functions are pure (dict in, dict out); `KatibStandIn` applies them with kubectl.
"""

from __future__ import annotations

import copy
import datetime
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher import kubectl

Status = dict[str, Any]

# Katib's validating webhook refuses Experiments in namespaces without this label set to "enabled".
KATIB_INJECTION_LABEL = "katib.kubeflow.org/metrics-collector-injection"

REASONS = {
    "created": ("Created", "ExperimentCreated", "Experiment is created"),
    "running": ("Running", "ExperimentRunning", "Experiment is running"),
    "goal": (
        "Succeeded",
        "ExperimentGoalReached",
        "Experiment has succeeded because Objective goal has reached",
    ),
    "max-trials": (
        "Succeeded",
        "ExperimentMaxTrialsReached",
        "Experiment has succeeded because max trial count has reached",
    ),
    "suggestion-end": (
        "Succeeded",
        "ExperimentSuggestionEndReached",
        "Experiment has succeeded because suggestion service has reached the end",
    ),
    "max-failed": (
        "Failed",
        "ExperimentFailed",
        "Experiment has failed because max failed count has reached",
    ),
    "suggestion-failed": ("Failed", "ExperimentFailed", "Suggestion has failed"),
}

# Trial list field, counter field, in Katib's spelling.
TRIAL_STATES = {
    "succeeded": ("succeededTrialList", "trialsSucceeded"),
    "failed": ("failedTrialList", "trialsFailed"),
    "running": ("runningTrialList", "trialsRunning"),
    "pending": ("pendingTrialList", "trialsPending"),
    "killed": ("killedTrialList", "trialsKilled"),
    "early_stopped": ("earlyStoppedTrialList", "trialsEarlyStopped"),
    "metrics_unavailable": ("metricsUnavailableTrialList", "trialMetricsUnavailable"),
}


def now() -> str:
    """Return the current time as Kubernetes writes it (RFC 3339, seconds, Z)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _set_condition(
    status: Status, kind: str, state: str, at: str, reason: str, message: str
) -> None:
    conditions = status.setdefault("conditions", [])
    for condition in conditions:
        if condition["type"] == kind:
            if condition["status"] != state:
                condition["lastTransitionTime"] = at
            condition.update(status=state, reason=reason, message=message, lastUpdateTime=at)
            return
    conditions.append(
        {
            "type": kind,
            "status": state,
            "reason": reason,
            "message": message,
            "lastUpdateTime": at,
            "lastTransitionTime": at,
        }
    )


def created(at: str) -> Status:
    """Status of a freshly reconciled Experiment."""
    status: Status = {
        "startTime": at,
        "completionTime": None,
        "currentOptimalTrial": {"observation": {}},
    }
    kind, reason, message = REASONS["created"]
    _set_condition(status, kind, "True", at, reason, message)
    return status


def running(status: Status, at: str) -> Status:
    """Add (or refresh) the Running condition."""
    new = copy.deepcopy(status)
    kind, reason, message = REASONS["running"]
    _set_condition(new, kind, "True", at, reason, message)
    return new


def with_trials(status: Status, **trials: Sequence[str]) -> Status:
    """Replace the trial lists and counters; keywords are the keys of TRIAL_STATES."""
    unknown = set(trials) - set(TRIAL_STATES)
    if unknown:
        raise ValueError(f"unknown trial states {sorted(unknown)}; use {sorted(TRIAL_STATES)}")
    new = copy.deepcopy(status)
    total = 0
    for state, (list_field, counter_field) in TRIAL_STATES.items():
        names = list(trials.get(state, ()))
        new.pop(list_field, None)
        new.pop(counter_field, None)
        if names:
            new[list_field] = names
            new[counter_field] = len(names)
        total += len(names)
    new.pop("trials", None)
    if total:
        new["trials"] = total
    return new


def with_optimal_trial(
    status: Status,
    trial: str,
    assignments: Mapping[str, str],
    metrics: Mapping[str, tuple[str, str, str]],
) -> Status:
    """Set currentOptimalTrial; `metrics` maps a metric name to its (min, max, latest) strings."""
    values = [*assignments.values(), *(v for triple in metrics.values() for v in triple)]
    if not all(isinstance(value, str) for value in values):
        raise TypeError("Katib writes every assignment and metric value as a string")
    new = copy.deepcopy(status)
    new["currentOptimalTrial"] = {
        "bestTrialName": trial,
        "parameterAssignments": [{"name": k, "value": v} for k, v in assignments.items()],
        "observation": {
            "metrics": [
                {"name": name, "min": low, "max": high, "latest": latest}
                for name, (low, high, latest) in metrics.items()
            ]
        },
    }
    return new


def completed(status: Status, outcome: str, at: str) -> Status:
    """Finish the Experiment: Running flips to False, the terminal condition goes last.

    `outcome` is one of goal, max-trials, suggestion-end (Succeeded) or max-failed,
    suggestion-failed (Failed).
    """
    kind, reason, message = REASONS[outcome]
    if kind not in ("Succeeded", "Failed"):
        raise ValueError(f"{outcome!r} does not end an Experiment")
    new = copy.deepcopy(status)
    running_kind, running_reason, running_message = REASONS["running"]
    _set_condition(new, running_kind, "False", at, running_reason, running_message)
    _set_condition(new, kind, "True", at, reason, message)
    new["completionTime"] = at
    return new


class KatibStandIn:
    """Reads and writes Experiment status on the test control plane with kubectl."""

    def __init__(self, bin_dir: Path, kubeconfig: Path) -> None:
        self.bin_dir = bin_dir
        self.kubeconfig = kubeconfig

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """Return the Experiment as JSON."""
        result = kubectl(
            self.bin_dir,
            self.kubeconfig,
            "get",
            "experiments.kubeflow.org",
            name,
            "-n",
            namespace,
            "-o",
            "json",
        )
        experiment: dict[str, Any] = json.loads(result.stdout)
        return experiment

    def status(self, namespace: str, name: str) -> Status:
        """Return the Experiment's status ({} before Katib first reconciled it)."""
        status: Status = self.get(namespace, name).get("status", {})
        return status

    def write(self, namespace: str, name: str, status: Status) -> None:
        """Replace the whole status through the status subresource, as Katib's controller does."""
        patch = json.dumps([{"op": "add", "path": "/status", "value": status}])
        kubectl(
            self.bin_dir,
            self.kubeconfig,
            "patch",
            "experiments.kubeflow.org",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=json",
            "-p",
            patch,
        )

    def create(self, namespace: str, name: str) -> Status:
        """Mark the Experiment Created (Katib's first reconcile)."""
        status = created(now())
        self.write(namespace, name, status)
        return status

    def run(self, namespace: str, name: str, **trials: Sequence[str]) -> Status:
        """Mark it Running with the given trials (names per state, see TRIAL_STATES)."""
        current = self.status(namespace, name) or created(now())
        status = with_trials(running(current, now()), **trials)
        self.write(namespace, name, status)
        return status

    def report_best(
        self,
        namespace: str,
        name: str,
        trial: str,
        assignments: Mapping[str, str],
        metrics: Mapping[str, tuple[str, str, str]],
    ) -> Status:
        """Set the current optimal trial (all values strings, as Katib writes them)."""
        status = with_optimal_trial(self.status(namespace, name), trial, assignments, metrics)
        self.write(namespace, name, status)
        return status

    def finish(self, namespace: str, name: str, outcome: str, **trials: Sequence[str]) -> Status:
        """Complete the Experiment with an outcome (see `completed`), optionally final trials."""
        status = self.status(namespace, name)
        if trials:
            status = with_trials(status, **trials)
        status = completed(status, outcome, now())
        self.write(namespace, name, status)
        return status
