"""Why a trial's or the suggestion's pod cannot start or was killed, from its status (pure).

Katib leaves such trials Pending or Running without a word in the Experiment, and says only
"Deployment is not ready" of a suggestion it cannot start; the kubelet and the scheduler have
already said why in the pod (and the Job controller in the trial's Job, for a trial stopped at
its deadline: it deletes the pods). This turns the first such pod of the running Experiment
into one condition that names the trial (or the suggestion), the pod's own reason and the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mnist_tuning.api.expand import PRIMARY_CONTAINER
from mnist_tuning.api.spec import Condition
from mnist_tuning.controller import conditions as c

TRIAL_LABEL = "katib.kubeflow.org/trial"  # Katib's webhook puts it on every trial pod
# Katib's labels on the pods of an Experiment's suggestion Deployment.
SUGGESTION_LABEL = "katib.kubeflow.org/suggestion"
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
# The kubelet's waiting reasons for an image it cannot get.
PULL_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
KILLS = frozenset({c.OOM_KILLED, c.DEADLINE_EXCEEDED})  # shown for the Experiment's life
COLLECTOR_CONTAINER = "metrics-logger-and-collector"  # the sidecar Katib's webhook injects
KATIB_SECURITY_FIX = (
    "Katib's metrics collector has no securityContext: set init.controller."
    "injectSecurityContext: true in Katib's katib-config (kubectl -n kubeflow edit configmap "
    "katib-config), then kubectl -n kubeflow rollout restart deployment/katib-controller, as "
    "deploy/katib does; the trial then runs as a restricted pod"
)
KATIB_CONFIG_FIX = (
    "Katib's katib-config names the image for the algorithm: make it pullable by the nodes, or "
    "change runtime.suggestions[].image for spec.algorithm.name with kubectl -n kubeflow edit "
    "configmap katib-config (Katib reads it at each new suggestion)"
)


@dataclass(frozen=True)
class _Whose:
    """Whose pod it is, as the message names it, and the fixes that are the user's."""

    where: str
    pull_fix: str
    schedule_fix: str


def _whose(pod: Mapping[str, Any], experiment: str) -> _Whose | None:
    meta = pod.get("metadata") or {}
    labels, name = meta.get("labels") or {}, meta.get("name")
    trial = str(labels.get(TRIAL_LABEL, ""))
    # Katib names each trial after its Experiment; pods of a replaced one are not this run's.
    if trial.startswith(f"{experiment}-"):
        return _Whose(
            f"trial {trial} (pod {name})",
            "set spec.trial.image to an image the nodes can pull, or, for a private registry, "
            "create a pull Secret (kubectl create secret docker-registry NAME ...) and name it "
            "in spec.trial.imagePullSecrets",
            "lower spec.trial.resources.requests to what a node has free, or add nodes",
        )
    if SUGGESTION_LABEL in labels and labels.get(EXPERIMENT_LABEL) == experiment:
        return _Whose(
            f"the suggestion of Experiment {experiment} (pod {name})",
            KATIB_CONFIG_FIX,
            "free room on a node, or lower runtime.suggestions[].resources in Katib's katib-config",
        )
    return None


def _oom_killed(container: Mapping[str, Any]) -> bool:
    ended = (container.get("state") or {}).get("terminated") or {}
    return container.get("name") == PRIMARY_CONTAINER and ended.get("reason") == "OOMKilled"


def _stopped_at_deadline(job: Mapping[str, Any]) -> bool:
    return any(
        condition.get("type") == "Failed" and condition.get("reason") == "DeadlineExceeded"
        for condition in (job.get("status") or {}).get("conditions") or []
    )


def killed(pod_or_job: Mapping[str, Any]) -> bool:
    """Whether a trial pod's trainer was OOM-killed, or a trial Job stopped at its deadline.

    Katib deletes a failed trial's Job and pods within seconds, often before a coalesced
    reconcile reads them: the watch keeps such a one after its deletion, for this.
    """
    if pod_or_job.get("kind") == "Job":
        return _stopped_at_deadline(pod_or_job)
    statuses = (pod_or_job.get("status") or {}).get("containerStatuses") or []
    return any(_oom_killed(container) for container in statuses)


def _trouble(pod: Mapping[str, Any], whose: _Whose) -> tuple[str, str] | None:
    """Return the reason and message for a pod that cannot start or whose trainer was killed."""
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        waiting, ended = state.get("waiting") or {}, state.get("terminated") or {}
        if waiting.get("reason") in PULL_FAILURES:
            return c.IMAGE_PULL_FAILED, (
                f"{whose.where} cannot pull image {container.get('image')} ({waiting['reason']}: "
                f"{waiting.get('message', '')}). Fix: {whose.pull_fix}"
            )
        if _oom_killed(container):
            return c.OOM_KILLED, (
                f"{whose.where}: the trainer ran out of memory and was killed (OOMKilled, exit "
                f"{ended.get('exitCode')}). Fix: raise spec.trial.resources.limits.memory, "
                "or lower spec.fixed.batchSize"
            )
    if status.get("phase") == "Pending":
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("reason") == (
                "Unschedulable"
            ):
                return c.UNSCHEDULABLE, (
                    f"{whose.where} cannot be scheduled: {condition.get('message', '')}. "
                    f"Fix: {whose.schedule_fix}"
                )
    return None


def _deadline(job: Mapping[str, Any], experiment: str) -> tuple[str, str] | None:
    """Return the reason and message for a trial Job stopped at its deadline."""
    trial = str((job.get("metadata") or {}).get("name"))
    if not trial.startswith(f"{experiment}-"):
        return None
    if not _stopped_at_deadline(job):
        return None
    limit = (job.get("spec") or {}).get("activeDeadlineSeconds")
    return c.DEADLINE_EXCEEDED, (
        f"trial {trial} ran longer than spec.trial.timeoutSeconds ({limit} s) and was "
        "stopped (DeadlineExceeded). Fix: raise spec.trial.timeoutSeconds, or lower "
        "spec.fixed.epochs"
    )


def _refused(
    job: Mapping[str, Any], experiment: str, refusal: str | None
) -> tuple[str, str] | None:
    """Return the reason and message for a trial Job whose pod the API server refused."""
    trial = str((job.get("metadata") or {}).get("name"))
    if refusal is None or not trial.startswith(f"{experiment}-"):
        return None
    if "failed calling webhook" in refusal:
        fix = (
            "a webhook did not answer, often Katib's, while katib-controller is down or "
            "restarting: kubectl -n kubeflow get pods; the Job controller tries again, and this "
            "clears once the pod is created"
        )
    elif "PodSecurity" in refusal and f'"{COLLECTOR_CONTAINER}"' in refusal:
        fix = KATIB_SECURITY_FIX
    elif "PodSecurity" in refusal:
        fix = (
            "the namespace's pod-security.kubernetes.io/enforce label refuses the trial's pod: "
            "relax it, or run the tuning in a namespace that allows the trial's securityContext"
        )
    else:
        fix = (
            f"an admission policy or quota of the namespace refuses it: kubectl describe job "
            f"{trial} says which; change the policy, or spec.trial.resources to fit the quota"
        )
    return c.POD_REFUSED, (
        f"trial {trial} has no pod: the API server refused it ({refusal}). Fix: {fix}"
    )


def pods_condition(
    pods: Iterable[Mapping[str, Any]],
    jobs: Iterable[Mapping[str, Any]],
    experiment: str,
    generation: int | None,
    previous: Mapping[str, Any] | None = None,
    refusals: Mapping[str, str] | None = None,
) -> Condition | None:
    """Return PodsHealthy=False for the first troubled pod (or trial Job) of `experiment`.

    The first by name, so the message does not flap; None while every one starts and runs.
    Katib deletes a finished trial's Job and pods, so a trial killed for memory or time would
    vanish with them: that cause stays (from the `previous` status) for the Experiment's life.
    A Job's pod refused by the API server (`refusals`, by Job name) is trouble until the Job
    has a pod.
    """
    pods, refusals = list(pods), refusals or {}
    started = {str((p.get("metadata") or {}).get("labels", {}).get(TRIAL_LABEL)) for p in pods}
    troubles = []
    for pod in sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("name"))):
        whose = _whose(pod, experiment)
        if whose is not None and (trouble := _trouble(pod, whose)) is not None:
            troubles.append(trouble)
    for job in sorted(jobs, key=lambda j: str((j.get("metadata") or {}).get("name"))):
        name = str((job.get("metadata") or {}).get("name"))
        refused = None if name in started else refusals.get(name)
        trouble = _deadline(job, experiment) or _refused(job, experiment, refused)
        if trouble is not None:
            troubles.append(trouble)
    if not troubles:
        if (
            previous is not None
            and previous.get("reason") in KILLS
            and f"trial {experiment}-" in str(previous.get("message"))
        ):
            return Condition.model_validate(previous)
        return None
    reason, message = troubles[0]
    if len(troubles) > 1:
        message += f" ({len(troubles) - 1} more pod(s) in trouble)"
    return c.condition(c.PODS_HEALTHY, False, reason, message, generation)
