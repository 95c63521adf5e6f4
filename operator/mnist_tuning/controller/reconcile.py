"""Pure decisions of the operator: which status to write and which Events to post.

No I/O here: the handlers feed in what they read from the API server and apply what
comes out, so every rule can be read (and tested) without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mnist_tuning.api.expand import budget_of
from mnist_tuning.api.spec import Condition, MnistTuning, MnistTuningStatus, Phase, TrialCounts
from mnist_tuning.api.summarize import TERMINAL, is_better, summarize
from mnist_tuning.controller import conditions as c


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the MnistTuning."""

    type: str  # Normal | Warning
    reason: str
    message: str


def is_settled(
    status: Mapping[str, Any], generation: int | None, experiment_phase: Phase | None = None
) -> bool:
    """Tell whether this spec generation already ended (succeeded, failed or was refused).

    A settled tuning is left alone: nothing is recreated after an operator restart, an
    upgrade that changes the default trainer image, or a deleted finished Experiment. One
    whose Experiment (`experiment_phase`, when there is one) runs again is not settled: Katib
    restarted it after a raised maxTrials, and its status must follow.
    """
    ended = status.get("phase") in TERMINAL and status.get("observedGeneration") == generation
    return ended and (experiment_phase is None or experiment_phase in TERMINAL)


def katib_found(generation: int | None) -> Condition:
    """Say that Katib's Experiment API is served."""
    return c.condition(
        c.KATIB_AVAILABLE,
        True,
        c.KATIB_FOUND,
        "Katib serves experiments.kubeflow.org/v1beta1",
        generation,
    )


def namespace_enabled(generation: int | None) -> Condition:
    """Say that the namespace carries Katib's injection label."""
    return c.condition(
        c.NAMESPACE_ENABLED,
        True,
        c.NAMESPACE_LABELLED,
        f"the namespace has {c.LABEL_KATIB_INJECTION}=enabled",
        generation,
    )


def accepted_conditions(experiment: str, generation: int | None) -> list[Condition]:
    """Return the operator's own conditions while an Experiment serves the spec."""
    return [
        katib_found(generation),
        namespace_enabled(generation),
        c.condition(
            c.EXPERIMENT_ACCEPTED,
            True,
            c.EXPERIMENT_CREATED,
            f"Katib Experiment {experiment} runs this spec",
            generation,
        ),
    ]


def mirrored_status(
    tuning: MnistTuning,
    experiment: Mapping[str, Any],
    old: Mapping[str, Any],
    *,
    wanted_budget: Mapping[str, int],
    at: str,
    refused: Condition | None = None,
    stuck: Condition | None = None,
) -> dict[str, Any]:
    """Our status from the Experiment now serving the spec, plus the operator's conditions.

    `observedGeneration` only moves to the tuning's generation once the Experiment runs
    its budget too; until the patch lands the old generation stays, and a `refused` budget
    patch stays visible as ExperimentAccepted=False while the Experiment runs on unchanged.
    `stuck` (PodsHealthy=False, from `pods.pods_condition`) says which trial pod cannot
    start or was killed; it is gone from the status once no pod is.
    """
    generation = tuning.metadata.generation
    summary = summarize(experiment, tuning)
    current = budget_of(experiment) == dict(wanted_budget)
    summary.observed_generation = generation if current else old.get("observedGeneration")
    own = accepted_conditions(str(summary.experiment), generation)
    earlier = [
        Condition.model_validate(cond)
        for cond in old.get("conditions") or []
        if cond.get("type") == c.EXPERIMENT_ACCEPTED and cond.get("status") == "False"
    ]
    if refused is None and earlier and not current:
        refused = earlier[0]
    if refused is not None and not current:
        own[-1] = refused
    own.append(trials_condition(summary.trials, str(summary.experiment), generation))
    if stuck is not None:
        own.append(stuck)
    katib = [
        cond.model_copy(update={"observed_generation": generation}) for cond in summary.conditions
    ]
    return with_conditions(summary, old, own + katib, at)


def trials_condition(trials: TrialCounts, experiment: str, generation: int | None) -> Condition:
    """Say whether trials fail, and how to read why, before maxFailedTrials ends the run."""
    failed = trials.failed + trials.metrics_unavailable
    if not failed:
        return c.condition(c.TRIALS_HEALTHY, True, c.NO_TRIAL_FAILED, "", generation)
    return c.condition(
        c.TRIALS_HEALTHY,
        False,
        c.TRIALS_FAILING,
        f"{failed} trial(s) failed or reported no metrics. Find them with kubectl get trials "
        f"-l katib.kubeflow.org/experiment={experiment}, then read one with kubectl logs "
        "-l katib.kubeflow.org/trial=TRIAL -c training-container",
        generation,
    )


def with_conditions(
    status: MnistTuningStatus, old: Mapping[str, Any], conditions: list[Condition], at: str
) -> dict[str, Any]:
    """Return the status to write: `conditions` settled against the ones it had."""
    manifest = status.to_manifest()
    manifest["conditions"] = c.settle(old.get("conditions") or [], conditions, at)
    return manifest


def fault_status(
    tuning: MnistTuning,
    old: Mapping[str, Any],
    *,
    phase: Phase,
    faults: list[Condition],
    seed: int,
    at: str,
) -> dict[str, Any]:
    """Status when no Experiment serves the spec: the fault says why and what to do."""
    status = MnistTuningStatus(
        phase=phase,
        observed_generation=tuning.metadata.generation,
        seed=seed,
        progress=f"0/{tuning.spec.budget.max_trials}",
    )
    return with_conditions(status, old, faults, at)


def invalid_status(
    old: Mapping[str, Any], *, message: str, generation: int | None, at: str
) -> dict[str, Any]:
    """Status of a spec the operator cannot read: Failed until the spec changes."""
    invalid = c.condition(c.SPEC_VALID, False, c.SPEC_INVALID, message, generation)
    status = MnistTuningStatus(phase="Failed", observed_generation=generation)
    return with_conditions(status, old, [invalid], at)


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return the JSON merge patch (RFC 7386) turning `old` into `new`; None if they are equal.

    Keys that disappear become None at any depth, so a replaced Experiment's best
    hyperparameters do not linger next to the new ones.
    """
    if dict(old) == dict(new):
        return None
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = status_patch(before, value)
            if nested is not None:
                patch[key] = nested
        elif value != before or key not in old:
            patch[key] = value
    return patch


def _best_value(status: Mapping[str, Any], metric: str) -> float | None:
    best = status.get("best") or {}
    value = best.get(metric)
    return float(value) if isinstance(value, int | float) else None


def describe_best(best: Mapping[str, Any], metric: str) -> str:
    """'accuracy 0.9871 with learningRate=0.0312, momentum=0.83 (trial x)'."""
    params = ", ".join(f"{k}={v}" for k, v in (best.get("hyperparameters") or {}).items())
    params = params or "no hyperparameters"
    return f"{metric} {best.get(metric)} with {params} (trial {best.get('trial')})"


def status_events(
    tuning: MnistTuning, old: Mapping[str, Any], new: Mapping[str, Any]
) -> list[Event]:
    """Events for what changed between two statuses: a better best trial, the end of the run."""
    events: list[Event] = []
    objective = tuning.spec.objective
    same_experiment = old.get("experiment") == new.get("experiment")
    candidate = _best_value(new, objective.metric)
    incumbent = _best_value(old, objective.metric) if same_experiment else None
    if candidate is not None and is_better(candidate, incumbent, objective):
        events.append(
            Event("Normal", c.BEST_TRIAL_IMPROVED, describe_best(new["best"], objective.metric))
        )
    events.extend(_pod_events(old, new))
    ended = new.get("phase") in TERMINAL and not (
        same_experiment and old.get("phase") == new.get("phase")
    )
    if ended and new.get("experiment"):
        terminal = [cond for cond in new.get("conditions") or [] if cond.get("type") in TERMINAL]
        said = f"{terminal[-1].get('reason')}: {terminal[-1].get('message')}" if terminal else ""
        best = new.get("best")
        found = f"; best {describe_best(best, objective.metric)}" if best else ""
        if new["phase"] == "Succeeded":
            events.append(Event("Normal", c.TUNING_SUCCEEDED, f"{said}{found}"))
        else:
            events.append(Event("Warning", c.TUNING_FAILED, f"{said}{found}"))
    return events


def _pod_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """Return a Warning when a trial pod gets into a new kind of trouble, a Normal after."""
    before, now = (pods_condition_of(old), pods_condition_of(new))
    if now is not None and (before is None or before.get("reason") != now.get("reason")):
        return [Event("Warning", str(now.get("reason")), str(now.get("message")))]
    if before is not None and now is None:
        return [Event("Normal", c.PODS_RECOVERED, "no trial pod is in trouble any more")]
    return []


def pods_condition_of(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the status's PodsHealthy condition, if it has one."""
    conditions = status.get("conditions") or []
    return next((d for d in conditions if d.get("type") == c.PODS_HEALTHY), None)
