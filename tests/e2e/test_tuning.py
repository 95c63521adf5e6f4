"""The whole story against real Katib v0.19.0: apply a MnistTuning, Katib runs our trainer image,
the best hyperparameters land in the status.

Every trial is our PyTorch trainer on the real MNIST digits, in the trainer image built from
Dockerfile.trainer in this run; the operator is the image built from Dockerfile.operator,
applied from deploy/default. The cluster is kind (with Docker) or our single node (see
conftest.py). Each scenario has a namespace of its own.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kindcluster import KATIB_INJECTION_LABEL, small_tuning, table_row
from mnist_trainer import compiled
from mnist_trainer.cli import EXIT_DIVERGED
from mnist_tuning.api.expand import METRICS_FILE_PATH, PRIMARY_CONTAINER
from mnist_tuning.local.command import primary_container, render_trial_spec
from node.product import OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE
from providers import E2ECluster, containers_of, watching_pods
from tunings import (
    TRIAL_LABEL,
    applied,
    as_number,
    best_from_katib,
    counts,
    experiment_of,
    katib_counts,
    new_namespace,
    status,
    the_experiment,
    trainer_exit,
    wait_for_end,
    wait_until,
)
from watch import Watch

SIDECAR = "metrics-logger-and-collector"
OPERATOR_SELECTOR = f"app.kubernetes.io/name={OPERATOR_DEPLOYMENT}"
STEP_DEADLINE_S = 5 * 60
# The first test also waits for the session's cluster: a cold build of both images included.
pytestmark = pytest.mark.timeout(60 * 60)


# ---------------------------------------------------------------------------------------------
# 1. A two-trial tuning, from apply to delete


@pytest.fixture(scope="module")
def story(
    e2e_cluster: E2ECluster, namespaces: list[str]
) -> Iterator[tuple[dict[str, Any], dict[str, Any], Watch]]:
    """The tuning applied and followed to its end, with every trial pod the watch saw."""
    namespace = new_namespace(e2e_cluster, namespaces, "story")
    with watching_pods(e2e_cluster, namespace, TRIAL_LABEL) as pods:
        e2e_cluster.apply(small_tuning("story", namespace))
        final = wait_for_end(e2e_cluster, "story", namespace)
        yield final, experiment_of(e2e_cluster, final), pods


def test_the_tuning_succeeds_with_best_hyperparameters_inside_the_searched_ranges(
    story: tuple[dict[str, Any], dict[str, Any], Watch],
) -> None:
    final, experiment, _ = story
    got = final["status"]
    assert got["phase"] == "Succeeded", yaml.safe_dump(got)
    assert got["observedGeneration"] == final["metadata"]["generation"]
    best = got["best"]["hyperparameters"]
    search = final["spec"]["search"]
    for name in ("learningRate", "momentum"):
        assert isinstance(best[name], float), f"{name} is {best[name]!r}, not a number"
        assert search[name]["min"] <= best[name] <= search[name]["max"]
    assert 0.5 < got["best"]["accuracy"] <= 1.0, "one epoch of real training learns the digits"
    assert counts(final)["succeeded"] == 2
    assert best_from_katib(experiment) == (got["best"]["trial"], best)


def test_kubectl_get_shows_phase_best_accuracy_and_learning_rate(
    e2e_cluster: E2ECluster, story: tuple[dict[str, Any], dict[str, Any], Watch]
) -> None:
    final, _, _ = story
    table = e2e_cluster.kubectl("get", "mnisttunings", "-n", final["metadata"]["namespace"])
    row = table_row(table, "story")
    assert row["PHASE"] == "Succeeded"
    best = final["status"]["best"]
    printed = [number for cell in row.values() if (number := as_number(cell)) is not None]
    for value in (best["hyperparameters"]["learningRate"], best["accuracy"]):
        assert any(math.isclose(value, shown, rel_tol=1e-3) for shown in printed), (value, row)


def test_katibs_trials_carry_the_observations_the_best_is_chosen_from(
    e2e_cluster: E2ECluster, story: tuple[dict[str, Any], dict[str, Any], Watch]
) -> None:
    final, _, _ = story
    trials = e2e_cluster.items("trials", final["metadata"]["namespace"])
    assert len(trials) == 2
    accuracies = {}
    for trial in trials:
        metrics = {m["name"]: m for m in trial["status"]["observation"]["metrics"]}
        assert set(metrics) >= {"accuracy", "loss"}, metrics
        # The tuning maximises accuracy, so Katib ranks trials by the metric's `max`.
        accuracies[trial["metadata"]["name"]] = float(metrics["accuracy"]["max"])
    best = final["status"]["best"]
    # By value, not by name: two trials can score the same on the validation digits, and Katib
    # then keeps whichever its list showed first.
    assert accuracies[best["trial"]] == max(accuracies.values()), (accuracies, best["trial"])
    assert best["accuracy"] == pytest.approx(accuracies[best["trial"]])


def test_every_trial_pod_had_katibs_injected_metrics_collector(
    e2e_cluster: E2ECluster, story: tuple[dict[str, Any], dict[str, Any], Watch]
) -> None:
    final, _, pods = story
    trials = {
        t["metadata"]["name"] for t in e2e_cluster.items("trials", final["metadata"]["namespace"])
    }
    seen = pods.latest().values()
    assert {pod["metadata"]["labels"][TRIAL_LABEL] for pod in seen} == trials
    for pod in seen:
        assert containers_of(pod) == [PRIMARY_CONTAINER, SIDECAR]


def test_the_trial_image_trains_with_the_compiled_step_this_cpu_takes(
    e2e_cluster: E2ECluster,
    namespaces: list[str],
    story: tuple[dict[str, Any], dict[str, Any], Watch],
) -> None:
    """A trial's own pod, rendered as Katib renders it, run as a plain pod: its start line.

    Katib deletes a trial's Job and pods as the trial ends, so their logs are gone; the same
    image, command and securityContext in a pod of our own keep theirs. The node is this
    machine, so the instructions are the ones the kernels pick here.
    """
    final, experiment, _ = story
    [trial, *_] = e2e_cluster.items("trials", final["metadata"]["namespace"])
    values = {a["name"]: a["value"] for a in trial["spec"]["parameterAssignments"]}
    job = render_trial_spec(experiment, values)
    container = primary_container(experiment, job)
    namespace = new_namespace(e2e_cluster, namespaces, "image", labelled=False)
    e2e_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "trainer", "namespace": namespace},
            "spec": {
                **job["spec"]["template"]["spec"],
                "restartPolicy": "Never",
                "containers": [
                    {
                        **container,
                        "command": [*container["command"], "--train-limit=1000"],
                        "volumeMounts": [
                            {"name": "metrics", "mountPath": posixpath.dirname(METRICS_FILE_PATH)}
                        ],
                    }
                ],
                "volumes": [{"name": "metrics", "emptyDir": {}}],
            },
        }
    )
    e2e_cluster.kubectl(
        "wait", "pod/trainer", "-n", namespace, "--for=jsonpath={.status.phase}=Succeeded",
        f"--timeout={STEP_DEADLINE_S}s",
    )  # fmt: skip
    log = e2e_cluster.kubectl("logs", "trainer", "-n", namespace)
    assert f" kernels=compiled-{compiled.instructions()} " in log, log
    assert "test-accuracy=" in log


def test_deleting_the_tuning_removes_its_experiment_trials_and_pods(
    e2e_cluster: E2ECluster, story: tuple[dict[str, Any], dict[str, Any], Watch]
) -> None:
    final, experiment, _ = story
    namespace = final["metadata"]["namespace"]
    assert e2e_cluster.items("trials", namespace)

    e2e_cluster.kubectl("delete", "mnisttuning", "story", "-n", namespace, "--timeout=120s")

    def gone() -> bool:
        return not any(
            e2e_cluster.items(kind, namespace) for kind in ("experiments", "trials", "pods")
        )

    wait_until(f"Experiment {experiment['metadata']['name']}, its trials and pods to go", gone, 300)


# ---------------------------------------------------------------------------------------------
# 2. Diverging trials and maxFailedTrials


def test_diverging_trials_are_counted_as_katib_counts_them_and_fail_the_tuning(
    e2e_cluster: E2ECluster, namespaces: list[str]
) -> None:
    namespace = new_namespace(e2e_cluster, namespaces, "diverge")
    manifest = small_tuning("diverge", namespace, maxTrials=3, parallelTrials=1, maxFailedTrials=1)
    # lr 10 with weight decay 1 scales every weight by 1 - 10 * 1 = -9 per plain SGD step: the
    # loss is NaN within a few steps and the trainer exits 3. (A huge learning rate alone is not
    # enough: the loss explodes but stays finite, and the trial "succeeds" at chance accuracy.)
    manifest["spec"]["search"] = {"learningRate": {"values": [10.0]}}
    manifest["spec"]["fixed"] = {
        "epochs": 1, "batchSize": 64, "momentum": 0.0, "weightDecay": 1.0, "optimizer": "sgd",
    }  # fmt: skip
    with watching_pods(e2e_cluster, namespace, TRIAL_LABEL) as pods:
        e2e_cluster.apply(manifest)
        final = wait_for_end(e2e_cluster, "diverge", namespace)

    got = final["status"]
    assert got["phase"] == "Failed", yaml.safe_dump(got)
    # A diverged trial is not run again: one pod each, its trainer's exit status the verdict.
    seen = pods.latest().values()
    per_trial = Counter(pod["metadata"]["labels"][TRIAL_LABEL] for pod in seen)
    assert set(per_trial.values()) == {1}, per_trial
    assert {trainer_exit(pod) for pod in seen} == {EXIT_DIVERGED}
    experiment = experiment_of(e2e_cluster, final)
    katib = katib_counts(experiment)
    assert katib["failed"] + katib["metricsUnavailable"] >= 1
    assert {k: counts(final).get(k, 0) for k in katib} == katib
    assert "best" not in got or got["best"] is None
    [failed] = [c for c in got["conditions"] if c["type"] == "Failed"]
    assert failed["status"] == "True"
    assert "max failed count" in failed["message"], failed


# ---------------------------------------------------------------------------------------------
# 3. The operator's pod deleted mid-run


def test_a_deleted_operator_pod_comes_back_and_finishes_the_same_experiment(
    e2e_cluster: E2ECluster, namespaces: list[str]
) -> None:
    namespace = applied(e2e_cluster, namespaces, "restart", maxTrials=3, parallelTrials=1)
    wait_until(
        "the first trial to run",
        lambda: (
            (status(e2e_cluster, "restart", namespace).get("trials") or {}).get("running", 0) >= 1
        ),
        STEP_DEADLINE_S,
    )
    experiment_uid = the_experiment(e2e_cluster, namespace)["metadata"]["uid"]
    [before] = e2e_cluster.items("pods", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR)

    e2e_cluster.kubectl("delete", "pod", before["metadata"]["name"], "-n", OPERATOR_NAMESPACE)

    e2e_cluster.kubectl(
        "rollout", "status", f"deployment/{OPERATOR_DEPLOYMENT}", "-n", OPERATOR_NAMESPACE,
        "--timeout=300s",
    )  # fmt: skip
    [after] = e2e_cluster.items("pods", OPERATOR_NAMESPACE, "-l", OPERATOR_SELECTOR)
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    final = wait_for_end(e2e_cluster, "restart", namespace)
    experiment = the_experiment(e2e_cluster, namespace)
    assert experiment["metadata"]["uid"] == experiment_uid, "no second Experiment"
    got = final["status"]
    assert got["phase"] == "Succeeded", yaml.safe_dump(got)
    assert {k: counts(final).get(k, 0) for k in katib_counts(experiment)} == katib_counts(
        experiment
    )
    assert counts(final)["succeeded"] == 3
    assert best_from_katib(experiment) == (got["best"]["trial"], got["best"]["hyperparameters"])


# ---------------------------------------------------------------------------------------------
# 4. The Experiment deleted behind our back, then a raised maxTrials


def test_a_deleted_experiment_is_recreated_and_a_raised_max_trials_runs_more_trials(
    e2e_cluster: E2ECluster, namespaces: list[str]
) -> None:
    namespace = applied(e2e_cluster, namespaces, "recreate", maxTrials=1, parallelTrials=1)
    wait_until(
        "the Experiment", lambda: bool(e2e_cluster.items("experiments", namespace)), STEP_DEADLINE_S
    )
    first = the_experiment(e2e_cluster, namespace)["metadata"]

    e2e_cluster.kubectl("delete", "experiment", first["name"], "-n", namespace, "--timeout=120s")

    def recreated() -> bool:
        again = e2e_cluster.items("experiments", namespace)
        return bool(again) and again[0]["metadata"]["uid"] != first["uid"]

    wait_until("the Experiment to be recreated", recreated, STEP_DEADLINE_S)
    assert the_experiment(e2e_cluster, namespace)["metadata"]["name"] == first["name"]

    e2e_cluster.kubectl(
        "patch", "mnisttuning", "recreate", "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"budget": {"maxTrials": 2}}}),
    )  # fmt: skip

    final = wait_for_end(e2e_cluster, "recreate", namespace)
    experiment = the_experiment(e2e_cluster, namespace)
    assert experiment["spec"]["maxTrialCount"] == 2
    assert final["status"]["phase"] == "Succeeded", yaml.safe_dump(final["status"])
    assert final["status"]["observedGeneration"] == final["metadata"]["generation"]
    assert experiment["status"]["trialsSucceeded"] == counts(final)["succeeded"] == 2
    assert len(e2e_cluster.items("trials", namespace)) == 2


# ---------------------------------------------------------------------------------------------
# 5. A namespace without Katib's label


def test_an_unlabelled_namespace_gets_the_condition_and_proceeds_once_labelled(
    e2e_cluster: E2ECluster, namespaces: list[str]
) -> None:
    namespace = new_namespace(e2e_cluster, namespaces, "nolabel", labelled=False)
    e2e_cluster.apply(small_tuning("nolabel", namespace, maxTrials=1, parallelTrials=1))

    def condition() -> dict[str, Any] | None:
        found = status(e2e_cluster, "nolabel", namespace).get("conditions") or []
        return next((c for c in found if c["type"] == "NamespaceEnabled"), None)

    wait_until("the NamespaceEnabled condition", lambda: condition() is not None, STEP_DEADLINE_S)
    refused = condition()
    assert refused is not None
    assert refused["status"] == "False"
    assert refused["reason"] == "NamespaceNotEnabled"
    assert (
        f"kubectl label namespace {namespace} {KATIB_INJECTION_LABEL}=enabled"
        in (refused["message"])
    )
    assert e2e_cluster.items("experiments", namespace) == []

    with watching_pods(e2e_cluster, namespace, TRIAL_LABEL) as pods:
        e2e_cluster.kubectl("label", "namespace", namespace, f"{KATIB_INJECTION_LABEL}=enabled")
        final = wait_for_end(e2e_cluster, "nolabel", namespace)

    assert final["status"]["phase"] == "Succeeded", yaml.safe_dump(final["status"])
    labelled = condition()
    assert labelled is not None
    assert labelled["status"] == "True"
    [pod] = pods.latest().values()
    assert containers_of(pod) == [PRIMARY_CONTAINER, SIDECAR]
