"""Why a trial's or the suggestion's pod cannot start or was killed: read from pod statuses as
the kubelet and the scheduler write them, turned into one condition with the fix, an Event
when it appears and one when it is gone."""

from __future__ import annotations

from typing import Any

import pytest
from mnist_tuning.api.expand import LABEL_TUNING
from mnist_tuning.api.spec import parse_tuning
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.memory import Key, Memory
from mnist_tuning.controller.pods import (
    EXPERIMENT_LABEL,
    SUGGESTION_LABEL,
    TRIAL_LABEL,
    pods_condition,
)
from mnist_tuning.controller.queue import DelayQueue
from mnist_tuning.controller.reconcile import mirrored_status, status_events
from mnist_tuning.controller.settings import OperatorSettings
from mnist_tuning.controller.watches import Watches

EXPERIMENT = "t-abc"
BUDGET = {"maxTrialCount": 4, "parallelTrialCount": 2, "maxFailedTrialCount": 1}
IMAGE = "127.0.0.1:5000/mnist-trainer:missing"


def pod(trial: str, phase: str = "Running", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{trial}-x1y2z", "labels": {TRIAL_LABEL: trial}},
        "status": {"phase": phase, **status},
    }


def container(name: str = "training-container", **state: Any) -> dict[str, Any]:
    return {"name": name, "image": IMAGE, "state": state}


PULL_BACKOFF = pod(
    f"{EXPERIMENT}-b",
    "Pending",
    containerStatuses=[
        container(waiting={"reason": "ImagePullBackOff", "message": f'Back-off pulling "{IMAGE}"'})
    ],
)
UNSCHEDULABLE = pod(
    f"{EXPERIMENT}-c",
    "Pending",
    conditions=[
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu.",
        }
    ],
)
OOM = pod(
    f"{EXPERIMENT}-d",
    "Failed",
    containerStatuses=[
        container(terminated={"reason": "OOMKilled", "exitCode": 137}),
        container("metrics-logger-and-collector", terminated={"reason": "Completed"}),
    ],
)
RUNNING = pod(f"{EXPERIMENT}-a", containerStatuses=[container(running={})])


@pytest.mark.parametrize(
    ("troubled", "reason", "said"),
    [
        (PULL_BACKOFF, c.IMAGE_PULL_FAILED, [IMAGE, "ImagePullBackOff", "spec.trial.image",
                                             "spec.trial.imagePullSecrets"]),
        (UNSCHEDULABLE, c.UNSCHEDULABLE, ["Insufficient cpu", "spec.trial.resources.requests"]),
        (OOM, c.OOM_KILLED, ["OOMKilled", "exit 137", "spec.trial.resources.limits.memory"]),
    ],
)  # fmt: skip
def test_each_trouble_names_the_trial_the_pods_reason_and_the_fix(
    troubled: dict[str, Any], reason: str, said: list[str]
) -> None:
    cond = pods_condition([RUNNING, troubled], [], EXPERIMENT, 2)
    assert cond is not None
    assert (cond.type, cond.status, cond.reason) == (c.PODS_HEALTHY, "False", reason)
    assert cond.observed_generation == 2
    trial = troubled["metadata"]["labels"][TRIAL_LABEL]
    for words in [f"trial {trial}", troubled["metadata"]["name"], *said]:
        assert words in cond.message


def test_pods_that_start_and_run_or_belong_to_a_replaced_experiment_say_nothing() -> None:
    waiting = pod(
        f"{EXPERIMENT}-e",
        "Pending",
        containerStatuses=[container(waiting={"reason": "ContainerCreating"})],
    )
    done = pod(
        f"{EXPERIMENT}-f",
        "Succeeded",
        containerStatuses=[container(terminated={"reason": "Completed", "exitCode": 0})],
    )
    replaced = {
        **PULL_BACKOFF,
        "metadata": {"name": "t-old-a-1", "labels": {TRIAL_LABEL: "t-old-a"}},
    }
    assert pods_condition([RUNNING, waiting, done, replaced], [], EXPERIMENT, 1) is None


def test_the_first_troubled_pod_by_name_is_named_and_the_others_counted() -> None:
    cond = pods_condition([OOM, UNSCHEDULABLE, PULL_BACKOFF], [], EXPERIMENT, 1)
    assert cond is not None
    assert cond.reason == c.IMAGE_PULL_FAILED  # t-abc-b comes first
    assert cond.message.endswith("(2 more pod(s) in trouble)")


def tuning() -> Any:
    return parse_tuning(
        {
            "apiVersion": "tuning.mnist.dev/v1alpha1",
            "kind": "MnistTuning",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": {
                "budget": {"maxTrials": 4, "parallelTrials": 2, "maxFailedTrials": 1},
                "search": {"learningRate": {"min": 0.001, "max": 0.1}},
            },
        }
    )


def test_the_condition_comes_with_a_warning_and_goes_with_a_normal_event() -> None:
    t = tuning()
    experiment = {"metadata": {"name": EXPERIMENT}, "spec": dict(BUDGET), "status": {}}

    def status(*pods: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
        stuck = pods_condition(pods, [], EXPERIMENT, 1)
        return mirrored_status(t, experiment, old, wanted_budget=BUDGET, at="t", stuck=stuck)

    fine = status(RUNNING, old={})
    assert c.PODS_HEALTHY not in {d["type"] for d in fine["conditions"]}
    stuck = status(RUNNING, PULL_BACKOFF, old=fine)
    (warning,) = status_events(t, fine, stuck)
    assert (warning.type, warning.reason) == ("Warning", c.IMAGE_PULL_FAILED)
    assert IMAGE in warning.message
    assert status_events(t, stuck, status(RUNNING, PULL_BACKOFF, old=stuck)) == []
    healed = status(RUNNING, old=stuck)
    assert c.PODS_HEALTHY not in {d["type"] for d in healed["conditions"]}
    (recovered,) = status_events(t, stuck, healed)
    assert (recovered.type, recovered.reason) == ("Normal", c.PODS_RECOVERED)


def suggestion_pod(experiment: str, **status: Any) -> dict[str, Any]:
    labels = {EXPERIMENT_LABEL: experiment, SUGGESTION_LABEL: experiment}
    return {"metadata": {"name": f"{experiment}-random-5d8f-q2x", "labels": labels},
            "status": {"phase": "Pending", **status}}  # fmt: skip


def test_a_suggestion_that_cannot_pull_its_image_points_at_katibs_config() -> None:
    waiting = {"reason": "ErrImagePull", "message": "connection refused"}
    stuck = suggestion_pod(EXPERIMENT, containerStatuses=[container("suggestion", waiting=waiting)])
    cond = pods_condition([RUNNING, stuck], [], EXPERIMENT, 1)
    assert cond is not None
    assert cond.reason == c.IMAGE_PULL_FAILED
    for words in (f"the suggestion of Experiment {EXPERIMENT}", IMAGE, "katib-config",
                  "spec.algorithm.name"):  # fmt: skip
        assert words in cond.message
    other = suggestion_pod("t-other", containerStatuses=[container("suggestion", waiting=waiting)])
    assert pods_condition([RUNNING, other], [], EXPERIMENT, 1) is None


def job(trial: str, reason: str) -> dict[str, Any]:
    failed = {"type": "Failed", "status": "True", "reason": reason, "message": "m"}
    return {
        "metadata": {"name": trial},
        "spec": {"activeDeadlineSeconds": 30},
        "status": {"conditions": [failed]},
    }


def test_a_trial_stopped_at_its_deadline_is_read_from_its_job() -> None:
    cond = pods_condition([RUNNING], [job(f"{EXPERIMENT}-g", "DeadlineExceeded")], EXPERIMENT, 1)
    assert cond is not None
    assert cond.reason == c.DEADLINE_EXCEEDED
    for words in (f"trial {EXPERIMENT}-g", "(30 s)", "spec.trial.timeoutSeconds"):
        assert words in cond.message
    other = [job(f"{EXPERIMENT}-h", "BackoffLimitExceeded"), job("t-old-a", "DeadlineExceeded")]
    assert pods_condition([RUNNING], other, EXPERIMENT, 1) is None


def test_a_kill_stays_shown_after_katib_deletes_the_trials_pods_a_pull_failure_does_not() -> None:
    killed = pods_condition([OOM], [], EXPERIMENT, 1)
    assert killed is not None
    shown = killed.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert pods_condition([RUNNING], [], EXPERIMENT, 1, previous=shown) == killed
    assert pods_condition([], [], "t-new", 2, previous=shown) is None  # a replaced Experiment
    pulled = pods_condition([PULL_BACKOFF], [], EXPERIMENT, 1)
    assert pulled is not None
    gone = pulled.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert pods_condition([RUNNING], [], EXPERIMENT, 1, previous=gone) is None


def watched(body: dict[str, Any], kind: str) -> dict[str, Any]:
    """`body` as the watch brings it: its kind, its namespace and our label."""
    meta = body["metadata"]
    labels = {**meta.get("labels", {}), LABEL_TUNING: "t"}
    return {**body, "kind": kind, "metadata": {**meta, "namespace": "ns", "labels": labels}}


def test_the_watch_keeps_a_killed_pod_or_job_past_its_deletion_and_drops_the_others() -> None:
    """Katib deletes a failed trial's Job and pods within seconds: a coalesced reconcile that
    runs after the deletion still finds the kill, and nothing else outlives its object."""
    watches = Watches(Memory(), DelayQueue[Key](), OperatorSettings())
    key = ("ns", "t")
    oom, stopped = watched(OOM, "Pod"), watched(job(f"{EXPERIMENT}-g", "DeadlineExceeded"), "Job")
    for body in (oom, watched(RUNNING, "Pod")):
        watches.saw_pod("MODIFIED", body)
        watches.saw_pod("DELETED", body)
    for body in (stopped, watched(job(f"{EXPERIMENT}-h", "BackoffLimitExceeded"), "Job")):
        watches.saw_trial_job("MODIFIED", body)
        watches.saw_trial_job("DELETED", body)
    assert set(watches.memory.pods[key]) == {oom["metadata"]["name"]}
    assert set(watches.memory.jobs[key]) == {stopped["metadata"]["name"]}
    cond = pods_condition(watches.memory.pods[key].values(), [], EXPERIMENT, 1)
    assert cond is not None
    assert cond.reason == c.OOM_KILLED
    watches.memory.forget(key, None)
    assert key not in watches.memory.pods
    assert key not in watches.memory.jobs


# The Job controller's Event, as kube-controller-manager writes it in a restricted namespace
# whose Katib leaves the collector without a securityContext.
REFUSAL = (
    'Error creating: pods "t-abc-k-x1y2z" is forbidden: violates PodSecurity "restricted:latest": '
    'allowPrivilegeEscalation != false (container "metrics-logger-and-collector" must set '
    "securityContext.allowPrivilegeEscalation=false)"
)


def test_a_trial_job_whose_pod_is_refused_names_the_refusal_and_katibs_option() -> None:
    refused = job(f"{EXPERIMENT}-k", "none")
    refused["status"] = {}
    cond = pods_condition(
        [RUNNING], [refused], EXPERIMENT, 1, refusals={f"{EXPERIMENT}-k": REFUSAL}
    )
    assert cond is not None
    assert (cond.status, cond.reason) == ("False", c.POD_REFUSED)
    for words in (f"trial {EXPERIMENT}-k", REFUSAL, "injectSecurityContext: true",
                  "rollout restart deployment/katib-controller"):  # fmt: skip
        assert words in cond.message, cond.message
    # The trainer's own container refused: the namespace's policy, not Katib's option.
    own = REFUSAL.replace("metrics-logger-and-collector", "training-container")
    cond = pods_condition([], [refused], EXPERIMENT, 1, refusals={f"{EXPERIMENT}-k": own})
    assert cond is not None
    assert "pod-security.kubernetes.io/enforce" in cond.message
    assert "injectSecurityContext" not in cond.message
    # Katib's webhook down (its controller restarting): a refusal too, with its own fix.
    unanswered = (
        'Error creating: Internal error occurred: failed calling webhook "mutator.pod.katib'
        '.kubeflow.org": connect: connection refused'
    )
    cond = pods_condition([], [refused], EXPERIMENT, 1, refusals={f"{EXPERIMENT}-k": unanswered})
    assert cond is not None
    assert "kubectl -n kubeflow get pods" in cond.message
    # Gone once the Job has a pod, or for a Job of another Experiment.
    started = pod(f"{EXPERIMENT}-k", containerStatuses=[container(running={})])
    refusals = {f"{EXPERIMENT}-k": REFUSAL}
    assert pods_condition([started], [refused], EXPERIMENT, 1, refusals=refusals) is None
    assert pods_condition([], [refused], "t-new", 2, refusals=refusals) is None


def test_the_watch_keeps_a_refusal_under_the_tuning_of_its_job_until_the_job_goes() -> None:
    watches = Watches(Memory(), DelayQueue[Key](), OperatorSettings())
    key = ("ns", "t")
    trial_job = watched(job(f"{EXPERIMENT}-k", "none"), "Job")
    event = {
        "kind": "Event",
        "reason": "FailedCreate",
        "message": REFUSAL,
        "involvedObject": {"kind": "Job", "namespace": "ns", "name": f"{EXPERIMENT}-k"},
    }
    watches.saw_refusal("ADDED", event)  # before its Job is seen: nobody's yet
    assert watches.memory.refusals == {}
    watches.saw_trial_job("ADDED", trial_job)
    watches.saw_refusal("MODIFIED", event)  # the Job controller tried again
    other = {**event, "involvedObject": {**event["involvedObject"], "namespace": "elsewhere"}}
    watches.saw_refusal("ADDED", other)
    watches.saw_refusal("ADDED", {**event, "involvedObject": {"kind": "ReplicaSet"}})
    assert watches.memory.refusals == {key: {f"{EXPERIMENT}-k": REFUSAL}}
    watches.saw_trial_job("DELETED", trial_job)
    assert watches.memory.refusals == {}
