"""Trial and suggestion pods that cannot start or are killed, on the real kubelet and scheduler:
the tuning names the trial (or the suggestion), the pod's own reason and the fix, and the
failures count as Katib counts them.

Four tunings run side by side, each in its namespace: one whose trainer image is named on a
registry port of this machine where nothing listens (containerd gets a refused connection,
nothing resolves or leaves the machine), then fixed; one asking for more CPU than the node
has; one whose trials may run five seconds; one whose algorithm's suggestion image, in Katib's
katib-config, is such a missing image too. (An OOM-killed trainer is not here yet: Katib
deletes the failed trial's Job and pod within about two seconds, before a poll sees them.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kindcluster import KATIB_NAMESPACE, small_tuning
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.pods import SUGGESTION_LABEL
from providers import E2ECluster
from tunings import (
    TRIAL_LABEL,
    counts,
    experiment_of,
    katib_counts,
    new_namespace,
    status,
    wait_for_end,
    wait_until,
)

MISSING_IMAGE = "127.0.0.1:5999/mnist-trainer:missing"  # a port of this machine, no registry
MISSING_SUGGESTION = "127.0.0.1:5999/katib-suggestion:missing"
STUCK_ALGORITHM = "bayesianoptimization"  # its suggestion image: MISSING_SUGGESTION, meanwhile
# The bound: the condition within two minutes of the pod's own status saying so.
EXPLAINED_WITHIN_S = 120
POD_DEADLINE_S = 5 * 60
pytestmark = pytest.mark.timeout(30 * 60)


def pod_says(cluster: E2ECluster, namespace: str, said: Callable[[dict[str, Any]], bool]) -> bool:
    """Whether any trial pod's own status shows the trouble."""
    return any(said(pod) for pod in cluster.items("pods", namespace, "-l", TRIAL_LABEL))


def waiting_reason(pod: dict[str, Any]) -> str:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return " ".join(str((s["state"].get("waiting") or {}).get("reason")) for s in statuses)


def unschedulable(pod: dict[str, Any]) -> bool:
    return any(
        cond.get("reason") == "Unschedulable" for cond in pod["status"].get("conditions") or []
    )


def explained(cluster: E2ECluster, name: str, namespace: str) -> dict[str, Any] | None:
    for cond in status(cluster, name, namespace).get("conditions") or []:
        if cond["type"] == c.PODS_HEALTHY:
            return dict(cond)
    return None


def shows_within_bound(
    cluster: E2ECluster, name: str, namespace: str, said: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Wait for the pod's own status, then for the condition, at most `EXPLAINED_WITHIN_S`."""
    trouble, condition = f"{name}'s pod to show its trouble", f"{name}'s PodsHealthy"
    wait_until(trouble, lambda: pod_says(cluster, namespace, said), POD_DEADLINE_S)
    wait_until(condition, lambda: bool(explained(cluster, name, namespace)), EXPLAINED_WITHIN_S)
    cond = explained(cluster, name, namespace)
    assert cond is not None
    return cond


def warning(cluster: E2ECluster, name: str, namespace: str, reason: str) -> bool:
    events = cluster.items("events", namespace, f"--field-selector=involvedObject.name={name}")
    return any(e.get("reason") == reason and e.get("type") == "Warning" for e in events)


@pytest.fixture(scope="module")
def katib_config_with_a_missing_suggestion(e2e_cluster: E2ECluster) -> Iterator[None]:
    """Katib's katib-config pointing `STUCK_ALGORITHM` at a missing image, restored after."""
    before = e2e_cluster.get("configmap", "katib-config", KATIB_NAMESPACE)
    config = yaml.safe_load(before["data"]["katib-config.yaml"])
    [suggestion] = [
        s for s in config["runtime"]["suggestions"] if s["algorithmName"] == STUCK_ALGORITHM
    ]
    suggestion["image"] = MISSING_SUGGESTION
    changed = {"data": {"katib-config.yaml": yaml.safe_dump(config, sort_keys=False)}}
    e2e_cluster.kubectl("patch", "configmap", "katib-config", "-n", KATIB_NAMESPACE,
                        "--type=merge", "-p", json.dumps(changed))  # fmt: skip
    try:
        yield
    finally:
        e2e_cluster.kubectl("patch", "configmap", "katib-config", "-n", KATIB_NAMESPACE,
                            "--type=merge", "-p", json.dumps({"data": before["data"]}))  # fmt: skip


@pytest.fixture(scope="module")
def applied(
    e2e_cluster: E2ECluster, namespaces: list[str], katib_config_with_a_missing_suggestion: None
) -> dict[str, str]:
    """The tunings, applied together; their namespaces by name."""
    made = {}
    for name in ("pull", "cpu", "deadline", "suggestion"):
        made[name] = new_namespace(e2e_cluster, namespaces, f"pods-{name}")
    pull = small_tuning("pull", made["pull"], MISSING_IMAGE, maxTrials=1, parallelTrials=1)
    pull["spec"]["fixed"]["batchSize"] = 1024  # the trial that runs once the image is fixed
    cpu = small_tuning("cpu", made["cpu"], maxTrials=1, parallelTrials=1)
    cpu["spec"]["trial"]["resources"]["requests"]["cpu"] = "64"
    deadline = small_tuning("deadline", made["deadline"], maxTrials=1, parallelTrials=1,
                            maxFailedTrials=0)  # fmt: skip
    deadline["spec"]["trial"]["timeoutSeconds"] = 5  # shorter than the trainer's start alone
    suggestion = small_tuning("suggestion", made["suggestion"], maxTrials=1, parallelTrials=1)
    suggestion["spec"]["algorithm"] = {"name": STUCK_ALGORITHM, "seed": 7}
    for manifest in (pull, cpu, deadline, suggestion):
        e2e_cluster.apply(manifest)
    return made


def test_an_image_no_registry_serves_is_named_then_clears_once_the_image_is_fixed(
    e2e_cluster: E2ECluster, applied: dict[str, str]
) -> None:
    namespace = applied["pull"]
    cond = shows_within_bound(
        e2e_cluster, "pull", namespace, lambda pod: "ImagePull" in waiting_reason(pod)
    )
    assert (cond["status"], cond["reason"]) == ("False", c.IMAGE_PULL_FAILED)
    for words in (MISSING_IMAGE, "spec.trial.image", "spec.trial.imagePullSecrets", "trial pull-"):
        assert words in cond["message"], cond["message"]
    assert warning(e2e_cluster, "pull", namespace, c.IMAGE_PULL_FAILED)
    assert status(e2e_cluster, "pull", namespace)["phase"] in ("Pending", "Running")

    # The fix the message names: an image the node has (the operator's default trainer).
    e2e_cluster.kubectl("patch", "mnisttuning", "pull", "-n", namespace, "--type=merge",
                        "-p", json.dumps({"spec": {"trial": {"image": None}}}))  # fmt: skip
    final = wait_for_end(e2e_cluster, "pull", namespace)
    assert final["status"]["phase"] == "Succeeded"
    assert c.PODS_HEALTHY not in {d["type"] for d in final["status"]["conditions"]}


def test_a_cpu_request_larger_than_the_node_is_named_with_the_schedulers_message(
    e2e_cluster: E2ECluster, applied: dict[str, str]
) -> None:
    namespace = applied["cpu"]
    cond = shows_within_bound(e2e_cluster, "cpu", namespace, unschedulable)
    assert (cond["status"], cond["reason"]) == ("False", c.UNSCHEDULABLE)
    for words in ("Insufficient cpu", "spec.trial.resources.requests", "trial cpu-"):
        assert words in cond["message"], cond["message"]
    assert warning(e2e_cluster, "cpu", namespace, c.UNSCHEDULABLE)
    assert status(e2e_cluster, "cpu", namespace)["phase"] in ("Pending", "Running")


def test_a_suggestion_image_that_cannot_be_pulled_is_named_with_katibs_config(
    e2e_cluster: E2ECluster, applied: dict[str, str]
) -> None:
    namespace = applied["suggestion"]

    def suggestion_says(pod: dict[str, Any]) -> bool:
        return "ImagePull" in waiting_reason(pod)

    wait_until("the suggestion's pod to show its trouble",
               lambda: any(suggestion_says(p) for p in e2e_cluster.items(
                   "pods", namespace, "-l", SUGGESTION_LABEL)), POD_DEADLINE_S)  # fmt: skip
    wait_until("the suggestion's PodsHealthy",
               lambda: bool(explained(e2e_cluster, "suggestion", namespace)),
               EXPLAINED_WITHIN_S)  # fmt: skip
    cond = explained(e2e_cluster, "suggestion", namespace)
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", c.IMAGE_PULL_FAILED)
    for words in ("the suggestion of Experiment", MISSING_SUGGESTION, "katib-config"):
        assert words in cond["message"], cond["message"]
    assert not any((status(e2e_cluster, "suggestion", namespace).get("trials") or {}).values())
    # Katib keeps the Deployment it made: the tuning goes, and its suggestion with it.
    e2e_cluster.kubectl("delete", "mnisttuning", "suggestion", "-n", namespace, "--timeout=120s")


def test_a_trial_past_its_timeout_is_named_from_its_job_and_counts_as_failed(
    e2e_cluster: E2ECluster, applied: dict[str, str]
) -> None:
    namespace = applied["deadline"]
    final = wait_for_end(e2e_cluster, "deadline", namespace)
    assert final["status"]["phase"] == "Failed"
    experiment = experiment_of(e2e_cluster, final)
    assert katib_counts(experiment)["failed"] == counts(final)["failed"] == 1
    cond = {d["type"]: d for d in final["status"]["conditions"]}[c.PODS_HEALTHY]
    assert cond["reason"] == c.DEADLINE_EXCEEDED
    for words in ("(5 s)", "spec.trial.timeoutSeconds", "trial deadline-"):
        assert words in cond["message"], cond["message"]
