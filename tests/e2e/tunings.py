"""Following tunings on the e2e cluster: a namespace each, their end, Katib's view of them."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import partial
from typing import Any

from kindcluster import KATIB_INJECTION_LABEL, small_tuning
from launcher import wait_for
from mnist_tuning.api.expand import PRIMARY_CONTAINER
from node.product import OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE
from providers import E2ECluster

# Katib's label on every pod of a trial: the trial's name.
TRIAL_LABEL = "katib.kubeflow.org/trial"
# A few one-epoch trials side by side on two cores, plus Katib's per-trial start-up.
TUNING_DEADLINE_S = 20 * 60
# Polled every two seconds: each poll is a kubectl process, on the cores the trials train on.
wait_until = partial(wait_for, every=2.0)
# Each trial's last condition: why it ended (a failed Job, metrics unavailable, stopped early).
TRIAL_VERDICTS = (
    "custom-columns=TRIAL:.metadata.name,REASON:.status.conditions[-1].reason,"
    "MESSAGE:.status.conditions[-1].message"
)


def new_namespace(cluster: E2ECluster, made: list[str], stem: str, *, labelled: bool = True) -> str:
    """A fresh namespace, enabled for Katib's injection unless told otherwise."""
    name = f"e2e-{stem}-{uuid.uuid4().hex[:6]}"
    labels = {KATIB_INJECTION_LABEL: "enabled"} if labelled else {}
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
    )
    made.append(name)
    return name


def applied(cluster: E2ECluster, made: list[str], name: str, **budget: int) -> str:
    """A small tuning `name` applied in a fresh labelled namespace of its own; the namespace."""
    namespace = new_namespace(cluster, made, name)
    cluster.apply(small_tuning(name, namespace, **budget))
    return namespace


def seconds_between(start: str, end: str) -> float:
    """Seconds between two RFC 3339 timestamps of the API server."""
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def status(cluster: E2ECluster, name: str, namespace: str) -> dict[str, Any]:
    return dict(cluster.get("mnisttuning", name, namespace).get("status") or {})


def wait_for_end(cluster: E2ECluster, name: str, namespace: str) -> dict[str, Any]:
    """Follow the tuning until it is Succeeded or Failed; its final object."""

    def ended() -> bool:
        return status(cluster, name, namespace).get("phase") in ("Succeeded", "Failed")

    try:
        wait_until(f"MnistTuning {namespace}/{name} to end", ended, TUNING_DEADLINE_S)
    finally:
        print(cluster.kubectl("get", "mnisttunings,experiments,trials,pods", "-n", namespace))
        print(cluster.kubectl("get", "trials", "-n", namespace, "-o", TRIAL_VERDICTS, check=False))
        print(
            cluster.kubectl(
                "logs", f"deployment/{OPERATOR_DEPLOYMENT}", "-n", OPERATOR_NAMESPACE,
                "--tail=30", check=False,
            )
        )  # fmt: skip
    return cluster.get("mnisttuning", name, namespace)


def experiment_of(cluster: E2ECluster, tuning: dict[str, Any]) -> dict[str, Any]:
    return cluster.get(
        "experiment", tuning["status"]["experiment"], tuning["metadata"]["namespace"]
    )


def the_experiment(cluster: E2ECluster, namespace: str) -> dict[str, Any]:
    """The one Experiment in the namespace (fails when there are none or several)."""
    [experiment] = cluster.items("experiments", namespace)
    return experiment


def counts(tuning: dict[str, Any]) -> dict[str, int]:
    return dict(tuning["status"].get("trials") or {})


def katib_counts(experiment: dict[str, Any]) -> dict[str, int]:
    """Katib's own counters, under our status's names."""
    katib = experiment["status"]
    return {
        "succeeded": katib.get("trialsSucceeded", 0),
        "failed": katib.get("trialsFailed", 0),
        "metricsUnavailable": katib.get("trialMetricsUnavailable", 0),
    }


def best_from_katib(experiment: dict[str, Any]) -> tuple[str, dict[str, float]]:
    optimal = experiment["status"]["currentOptimalTrial"]
    assignments = {p["name"]: float(p["value"]) for p in optimal["parameterAssignments"]}
    return optimal["bestTrialName"], assignments


def as_number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def trainer_exit(pod: dict[str, Any]) -> int | None:
    """The exit status of a trial pod's trainer; None while it has not ended."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        if container["name"] == PRIMARY_CONTAINER:
            ended = container["state"].get("terminated")
            return None if ended is None else int(ended["exitCode"])
    return None
