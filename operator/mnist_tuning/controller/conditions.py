"""Condition types and reasons the operator writes, and how conditions merge.

These names are an interface: Argo CD's health check and the troubleshooting table in
docs/troubleshooting.md match on them. Katib's own terminal reasons (ExperimentGoalReached,
...) are passed through by `summarize()` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from mnist_tuning.api.spec import Condition
from mnist_tuning.api.summarize import rfc3339

# Condition types.
KATIB_AVAILABLE: Final = "KatibAvailable"
NAMESPACE_ENABLED: Final = "NamespaceEnabled"
EXPERIMENT_ACCEPTED: Final = "ExperimentAccepted"
SPEC_VALID: Final = "SpecValid"
TRIALS_HEALTHY: Final = "TrialsHealthy"
PODS_HEALTHY: Final = "PodsHealthy"  # written only while a trial or suggestion pod is in trouble

# Reasons (CamelCase; one place).
KATIB_FOUND: Final = "KatibFound"
KATIB_NOT_INSTALLED: Final = "KatibNotInstalled"
NAMESPACE_LABELLED: Final = "NamespaceLabelled"
NAMESPACE_NOT_ENABLED: Final = "NamespaceNotEnabled"
EXPERIMENT_CREATED: Final = "ExperimentCreated"
EXPERIMENT_REFUSED: Final = "ExperimentRefused"
OPERATOR_FORBIDDEN: Final = "OperatorForbidden"
SPEC_INVALID: Final = "SpecInvalid"
NO_TRIAL_FAILED: Final = "NoTrialFailed"
TRIALS_FAILING: Final = "TrialsFailing"
IMAGE_PULL_FAILED: Final = "ImagePullFailed"
UNSCHEDULABLE: Final = "Unschedulable"
OOM_KILLED: Final = "OOMKilled"
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"
POD_REFUSED: Final = "PodRefused"  # the API server refused the trial Job's pod (admission)
# Reasons that only Events carry (Warning Events reuse the condition reasons above).
EXPERIMENT_RECREATED: Final = "ExperimentRecreated"
EXPERIMENT_REPLACED: Final = "ExperimentReplaced"
BUDGET_UPDATED: Final = "BudgetUpdated"
BEST_TRIAL_IMPROVED: Final = "BestTrialImproved"
TUNING_SUCCEEDED: Final = "TuningSucceeded"
TUNING_FAILED: Final = "TuningFailed"
PODS_RECOVERED: Final = "PodsRecovered"

LABEL_KATIB_INJECTION: Final = "katib.kubeflow.org/metrics-collector-injection"
KATIB_INSTALL_COMMAND: Final = (
    'kubectl apply -k "github.com/kubeflow/katib.git/manifests/v1beta1/installs/'
    'katib-standalone?ref=v0.19.0"'
)


def katib_missing_message(namespace: str) -> str:
    """Say what to do when the API server does not serve kubeflow.org/v1beta1 experiments."""
    return (
        f"Katib is not installed: the API server does not serve experiments.kubeflow.org/v1beta1 "
        f"(needed in namespace {namespace}). Install it with {KATIB_INSTALL_COMMAND}; "
        "the operator retries with backoff and continues by itself once it is there."
    )


def namespace_message(namespace: str) -> str:
    """Say what to do when the namespace is not enabled for Katib's metrics collector."""
    return (
        f"namespace {namespace} is not enabled for Katib, which refuses Experiments there. "
        f"Run: kubectl label namespace {namespace} {LABEL_KATIB_INJECTION}=enabled"
    )


def condition(type_: str, ok: bool, reason: str, message: str, generation: int | None) -> Condition:
    """Build a condition for a generation; `settle` decides its transition time."""
    return Condition(
        type=type_,
        status="True" if ok else "False",
        reason=reason,
        message=message,
        observed_generation=generation,
    )


def now() -> str:
    """RFC 3339 UTC time as Kubernetes writes it."""
    return rfc3339(datetime.now(UTC))


def settle(
    old: Iterable[Mapping[str, Any]], new: Iterable[Condition], at: str
) -> list[dict[str, Any]]:
    """Return `new` as written, keeping the old transition time where the status held.

    Each status write states every condition it knows, so stale ones (from a replaced
    Experiment or a healed fault) disappear instead of lingering.
    """
    previous = {str(c.get("type")): c for c in old}
    settled = []
    for cond in new:
        data = cond.model_dump(mode="json", by_alias=True, exclude_none=True)
        before = previous.get(cond.type)
        if before is not None and before.get("status") == cond.status:
            data["lastTransitionTime"] = before.get("lastTransitionTime") or at
        else:
            data.setdefault("lastTransitionTime", at)
        settled.append(data)
    return settled
