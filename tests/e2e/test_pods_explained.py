"""Trial and suggestion pods that cannot start or are killed, on the real kubelet and scheduler:
the tuning names the trial (or the suggestion), the pod's own reason and the fix, and the
failures count as Katib counts them.

Tunings run side by side, each in its namespace:
- a trainer image named on a registry port of this machine where nothing listens (containerd
  gets a refused connection: nothing resolves or leaves the machine), then fixed;
- on our node, a trainer image on the node's private registry (TLS, a login), first without a
  pull Secret, then with one;
- a CPU request larger than the node; a memory limit far below what the trainer needs; trials
  that may run five seconds;
- an algorithm whose suggestion image, in Katib's katib-config, is such a missing image too;
- a namespace that enforces the `restricted` Pod Security Standard: it must simply succeed.
Last, alone, with Katib's `injectSecurityContext` turned off (and Katib's controller restarted,
both ways): a tuning whose trial pod that namespace refuses. Katib deletes a trial's Job and
pods within seconds of its end, so what a pod was or said is read from a watch's history, and
when from its timestamps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import launcher
import pytest
import yaml
from kindcluster import KATIB_NAMESPACE, small_tuning
from mnist_tuning.api.expand import PRIMARY_CONTAINER, TRIAL_SECURITY_CONTEXT
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.pods import SUGGESTION_LABEL
from node import builds, registry
from node.node import read_running
from node.registry import Registry
from providers import E2ECluster, watching_pods
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
from watch import Watch

ENFORCE = "pod-security.kubernetes.io/enforce"
PRIVATE_REPOSITORY = "mnist-tuning/trainer"  # on the node's private registry
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


def oom_killed(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The trainer's terminated state, if it was OOM-killed."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        ended = (container.get("state") or {}).get("terminated") or {}
        if ended.get("reason") == "OOMKilled":
            return dict(ended)
    return None


def moment(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def explained(cluster: E2ECluster, name: str, namespace: str) -> dict[str, Any] | None:
    for cond in status(cluster, name, namespace).get("conditions") or []:
        if cond["type"] == c.PODS_HEALTHY:
            return dict(cond)
    return None


def explained_after(
    cluster: E2ECluster, name: str, namespace: str, said: Callable[[], bool]
) -> dict[str, Any]:
    """Wait until Kubernetes itself says what went wrong (`said`), then for the condition, at
    most `EXPLAINED_WITHIN_S` later."""
    wait_until(f"{name}'s trouble to show in Kubernetes", said, POD_DEADLINE_S)
    wait_until(f"{name}'s PodsHealthy", lambda: bool(explained(cluster, name, namespace)),
               EXPLAINED_WITHIN_S)  # fmt: skip
    cond = explained(cluster, name, namespace)
    assert cond is not None
    return cond


def shows_within_bound(
    cluster: E2ECluster, name: str, namespace: str, said: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The condition, once a trial pod's own status shows its trouble (`said`)."""
    return explained_after(cluster, name, namespace, lambda: pod_says(cluster, namespace, said))


def warning(cluster: E2ECluster, name: str, namespace: str, reason: str) -> bool:
    events = cluster.items("events", namespace, f"--field-selector=involvedObject.name={name}")
    return any(e.get("reason") == reason and e.get("type") == "Warning" for e in events)


def set_katib_config(cluster: E2ECluster, data: dict[str, str], *, restart: bool = False) -> None:
    """Put `data` in Katib's katib-config; `restart` katib-controller, for what it reads at
    start (its suggestions' settings it reads at each new suggestion)."""
    where = ("-n", KATIB_NAMESPACE)
    cluster.kubectl("patch", "configmap", "katib-config", *where, "--type=merge",
                    "-p", json.dumps({"data": data}))  # fmt: skip
    if restart:
        cluster.kubectl("rollout", "restart", "deployment/katib-controller", *where)
        cluster.kubectl("rollout", "status", "deployment/katib-controller", *where,
                        f"--timeout={POD_DEADLINE_S}s")  # fmt: skip


@pytest.fixture(scope="module")
def katib_config_with_a_missing_suggestion(e2e_cluster: E2ECluster) -> Iterator[None]:
    """Katib's katib-config pointing `STUCK_ALGORITHM` at a missing image, restored after."""
    before = e2e_cluster.get("configmap", "katib-config", KATIB_NAMESPACE)["data"]
    config = yaml.safe_load(before["katib-config.yaml"])
    [suggestion] = [
        s for s in config["runtime"]["suggestions"] if s["algorithmName"] == STUCK_ALGORITHM
    ]
    suggestion["image"] = MISSING_SUGGESTION
    set_katib_config(e2e_cluster, {"katib-config.yaml": yaml.safe_dump(config, sort_keys=False)})
    try:
        yield
    finally:
        set_katib_config(e2e_cluster, before)


@contextmanager
def katib_injecting_no_security_context(cluster: E2ECluster) -> Iterator[None]:
    """Katib's katib-config with `injectSecurityContext: false` (Katib's own default) for the
    duration of the block; then as before."""
    before = cluster.get("configmap", "katib-config", KATIB_NAMESPACE)["data"]
    config = yaml.safe_load(before["katib-config.yaml"])
    config["init"]["controller"]["injectSecurityContext"] = False
    changed = {"katib-config.yaml": yaml.safe_dump(config, sort_keys=False)}
    set_katib_config(cluster, changed, restart=True)
    try:
        yield
    finally:
        set_katib_config(cluster, before, restart=True)


def refusals(cluster: E2ECluster, namespace: str) -> list[dict[str, Any]]:
    """The Job controller's FailedCreate Events in `namespace`: what it says of a refused pod."""
    events = cluster.items("events", namespace, "--field-selector=reason=FailedCreate")
    return [e for e in events if e["involvedObject"]["kind"] == "Job"]


@pytest.fixture(scope="module")
def oom_pods(e2e_cluster: E2ECluster, namespaces: list[str]) -> Iterator[tuple[str, Watch]]:
    """The OOM case's namespace, and a watch over its trial pods from before they exist."""
    namespace = new_namespace(e2e_cluster, namespaces, "pods-oom")
    with watching_pods(e2e_cluster, namespace, TRIAL_LABEL) as watch:
        yield namespace, watch


@pytest.fixture(scope="module")
def restricted_pods(e2e_cluster: E2ECluster, namespaces: list[str]) -> Iterator[tuple[str, Watch]]:
    """A namespace enforcing `restricted`, and a watch over its trial pods from the start."""
    namespace = new_namespace(e2e_cluster, namespaces, "pods-restricted")
    e2e_cluster.kubectl("label", "namespace", namespace, f"{ENFORCE}=restricted")
    with watching_pods(e2e_cluster, namespace, TRIAL_LABEL) as watch:
        yield namespace, watch


@pytest.fixture(scope="module")
def private_trainer(
    e2e_cluster: E2ECluster, mnist_root: Path
) -> Iterator[tuple[Registry, str] | None]:
    """On our node: the private registry, and the name there of the trainer image this tree
    built, pushed to it (imported into containerd already: only its manifest and config are
    pulled). None elsewhere."""
    node = read_running(e2e_cluster.node_root) if e2e_cluster.node_root else None
    if node is None:
        yield None
        return
    private = registry.start(node, launcher.DEFAULT_BIN_DIR)
    try:
        archives = builds.build_archives(launcher.REPO_ROOT, mnist_root)
        [(name, archive)] = [
            (n, a) for n, a in archives.items() if n.startswith(f"{builds.TRAINER.repository}:")
        ]
        yield private, private.push(archive, PRIVATE_REPOSITORY, name.rpartition(":")[2])
    finally:
        registry.stop(node)


@pytest.fixture(scope="module")
def applied(
    e2e_cluster: E2ECluster,
    namespaces: list[str],
    katib_config_with_a_missing_suggestion: None,
    oom_pods: tuple[str, Watch],
    restricted_pods: tuple[str, Watch],
    private_trainer: tuple[Registry, str] | None,
) -> dict[str, str]:
    """The tunings, applied together; their namespaces by name."""
    made = {"oom": oom_pods[0], "restricted": restricted_pods[0]}
    for name in ("pull", "cpu", "deadline", "suggestion"):
        made[name] = new_namespace(e2e_cluster, namespaces, f"pods-{name}")
    if private_trainer is not None:
        made["private"] = new_namespace(e2e_cluster, namespaces, "pods-private")
        private = small_tuning("private", made["private"], private_trainer[1], maxTrials=1,
                               parallelTrials=1)  # fmt: skip
        e2e_cluster.apply(private)
    pull = small_tuning("pull", made["pull"], MISSING_IMAGE, maxTrials=1, parallelTrials=1)
    pull["spec"]["fixed"]["batchSize"] = 1024  # the trial that runs once the image is fixed
    cpu = small_tuning("cpu", made["cpu"], maxTrials=1, parallelTrials=1)
    cpu["spec"]["trial"]["resources"]["requests"]["cpu"] = "64"
    oom = small_tuning("oom", made["oom"], maxTrials=1, parallelTrials=1, maxFailedTrials=0)
    oom["spec"]["trial"]["resources"] = {"limits": {"memory": "64Mi"}}
    deadline = small_tuning("deadline", made["deadline"], maxTrials=1, parallelTrials=1,
                            maxFailedTrials=0)  # fmt: skip
    deadline["spec"]["trial"]["timeoutSeconds"] = 5  # shorter than the trainer's start alone
    suggestion = small_tuning("suggestion", made["suggestion"], maxTrials=1, parallelTrials=1)
    suggestion["spec"]["algorithm"] = {"name": STUCK_ALGORITHM, "seed": 7}
    restricted = small_tuning("restricted", made["restricted"], maxTrials=1, parallelTrials=1)
    for manifest in (pull, cpu, oom, deadline, suggestion, restricted):
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


def test_a_private_registry_refuses_the_pull_until_the_tuning_names_a_pull_secret(
    e2e_cluster: E2ECluster, applied: dict[str, str], private_trainer: tuple[Registry, str] | None
) -> None:
    if private_trainer is None:
        pytest.skip("the private registry runs on our node (kind pulls nothing from it)")
    private, image = private_trainer
    namespace = applied["private"]
    cond = shows_within_bound(
        e2e_cluster, "private", namespace, lambda pod: "ImagePull" in waiting_reason(pod)
    )
    assert (cond["status"], cond["reason"]) == ("False", c.IMAGE_PULL_FAILED)
    # The registry asked for a login: containerd trusted its certificate and was refused.
    for words in (image, "401 Unauthorized", "spec.trial.imagePullSecrets"):
        assert words in cond["message"], cond["message"]

    # The fix the message names: a pull Secret, named in the tuning.
    e2e_cluster.kubectl("create", "secret", "docker-registry", "private-registry",
                        "-n", namespace, f"--docker-server={private.host}",
                        f"--docker-username={private.user}",
                        f"--docker-password={private.password}")  # fmt: skip
    secrets = {"spec": {"trial": {"imagePullSecrets": [{"name": "private-registry"}]}}}
    e2e_cluster.kubectl("patch", "mnisttuning", "private", "-n", namespace, "--type=merge",
                        "-p", json.dumps(secrets))  # fmt: skip
    final = wait_for_end(e2e_cluster, "private", namespace)
    assert final["status"]["phase"] == "Succeeded"
    assert c.PODS_HEALTHY not in {d["type"] for d in final["status"]["conditions"]}
    assert 0.5 < final["status"]["best"]["accuracy"] <= 1.0


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


def test_a_trainer_killed_for_memory_is_named_and_its_trial_counts_as_failed(
    e2e_cluster: E2ECluster, applied: dict[str, str], oom_pods: tuple[str, Watch]
) -> None:
    namespace, watch = oom_pods
    final = wait_for_end(e2e_cluster, "oom", namespace)
    assert final["status"]["phase"] == "Failed"
    experiment = experiment_of(e2e_cluster, final)
    assert katib_counts(experiment)["failed"] == counts(final)["failed"] == 1
    kills = [ended for pod in watch.history if (ended := oom_killed(pod)) is not None]
    assert kills, "no trial pod of the watch was OOM-killed"
    cond = {d["type"]: d for d in final["status"]["conditions"]}[c.PODS_HEALTHY]
    assert (cond["status"], cond["reason"]) == ("False", c.OOM_KILLED)
    for words in ("OOMKilled", "spec.trial.resources.limits.memory", "trial oom-"):
        assert words in cond["message"], cond["message"]
    shown_after = moment(cond["lastTransitionTime"]) - moment(kills[0]["finishedAt"])
    assert shown_after.total_seconds() <= EXPLAINED_WITHIN_S, shown_after
    assert warning(e2e_cluster, "oom", namespace, c.OOM_KILLED)


def test_a_suggestion_image_that_cannot_be_pulled_is_named_with_katibs_config(
    e2e_cluster: E2ECluster, applied: dict[str, str]
) -> None:
    namespace = applied["suggestion"]

    def suggestion_says(pod: dict[str, Any]) -> bool:
        return "ImagePull" in waiting_reason(pod)

    def suggestion_pod_says() -> bool:
        pods = e2e_cluster.items("pods", namespace, "-l", SUGGESTION_LABEL)
        return any(suggestion_says(p) for p in pods)

    cond = explained_after(e2e_cluster, "suggestion", namespace, suggestion_pod_says)
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


def test_a_tuning_where_pods_must_be_restricted_succeeds_with_katibs_collector_restricted_too(
    e2e_cluster: E2ECluster, applied: dict[str, str], restricted_pods: tuple[str, Watch]
) -> None:
    namespace, watch = restricted_pods
    # The namespace does refuse a pod that is not restricted: the API server enforces it.
    plain_pod = ("run", "plain", "-n", namespace, "--image=x", "--dry-run=server")
    refused = launcher.kubectl(e2e_cluster.bin_dir, e2e_cluster.kubeconfig, *plain_pod, check=False)
    assert refused.returncode != 0
    assert 'violates PodSecurity "restricted' in refused.stderr, refused.stderr
    final = wait_for_end(e2e_cluster, "restricted", namespace)
    assert final["status"]["phase"] == "Succeeded"
    experiment = experiment_of(e2e_cluster, final)
    assert katib_counts(experiment)["succeeded"] == counts(final)["succeeded"] == 1
    assert 0.5 < final["status"]["best"]["accuracy"] <= 1.0  # the collector reported it
    [pod, *_] = watch.latest().values()
    contexts = {c["name"]: c.get("securityContext") for c in pod["spec"]["containers"]}
    assert contexts == {
        PRIMARY_CONTAINER: TRIAL_SECURITY_CONTEXT,
        "metrics-logger-and-collector": TRIAL_SECURITY_CONTEXT,  # Katib copied it
    }


def test_a_trial_pod_the_namespace_refuses_is_named_with_katibs_option_as_the_fix(
    e2e_cluster: E2ECluster, namespaces: list[str], applied: dict[str, str]
) -> None:
    namespace = new_namespace(e2e_cluster, namespaces, "pods-refused")
    e2e_cluster.kubectl("label", "namespace", namespace, f"{ENFORCE}=restricted")
    with katib_injecting_no_security_context(e2e_cluster):
        e2e_cluster.apply(small_tuning("refused", namespace, maxTrials=1, parallelTrials=1))
        cond = explained_after(
            e2e_cluster, "refused", namespace, lambda: bool(refusals(e2e_cluster, namespace))
        )
        assert (cond["status"], cond["reason"]) == ("False", c.POD_REFUSED)
        said = refusals(e2e_cluster, namespace)[0]["message"]
        assert 'violates PodSecurity "restricted' in said
        assert '"metrics-logger-and-collector"' in said  # Katib's collector, not our trainer
        for words in ("trial refused-", "violates PodSecurity", "injectSecurityContext: true",
                      "rollout restart deployment/katib-controller"):  # fmt: skip
            assert words in cond["message"], cond["message"]
        assert warning(e2e_cluster, "refused", namespace, c.POD_REFUSED)
        tuning = e2e_cluster.get("mnisttuning", "refused", namespace)
        assert tuning["status"]["phase"] in ("Pending", "Running")
        ours, katib = counts(tuning), katib_counts(experiment_of(e2e_cluster, tuning))
        assert ours.get("failed", 0) == katib["failed"] == 0  # a refused pod fails nothing
        assert ours.get("succeeded", 0) == katib["succeeded"] == 0
        e2e_cluster.kubectl("delete", "mnisttuning", "refused", "-n", namespace, "--timeout=120s")
