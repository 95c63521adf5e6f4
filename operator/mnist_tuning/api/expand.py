"""expand(): a MnistTuning becomes the Katib Experiment that runs it.

Every field Katib's defaulting webhook would fill is written explicitly, so the object we
create is the object that runs, and a later comparison with the live Experiment is exact.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from mnist_tuning.api.spec import (
    API_VERSION,
    GROUP,
    HYPERPARAMETERS,
    KIND,
    TRAINER_DEFAULTS,
    TRAINER_FLAGS,
    ChoiceSpace,
    FloatSpace,
    IntSpace,
    MnistTuning,
    Trial,
)

KATIB_API_VERSION = "kubeflow.org/v1beta1"
KATIB_KIND = "Experiment"
LABEL_TUNING = f"{GROUP}/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "mnist-tuning"
# The File collector's emptyDir is mounted at this file's directory in the trial container;
# cloudml-hypertune writes there because CLOUD_ML_HP_METRIC_FILE points at it.
METRICS_FILE_PATH = "/var/log/katib/metrics.json"
METRICS_FILE_ENV = "CLOUD_ML_HP_METRIC_FILE"
# Where the trainer image keeps MNIST (torchvision layout: <dir>/MNIST/raw).
TRAINER_DATA_DIR = "/data"
TRAINER_COMMAND = ("python", "-m", "mnist_trainer")
DEFAULT_TRAINER_IMAGE = "ghcr.io/mnist-tuning/mnist-trainer:0.1.0"
PRIMARY_CONTAINER = "training-container"
TRAINER_UID = 65532  # the trainer image's own user (Dockerfile.trainer), named for any image
# What the `restricted` Pod Security Standard asks of a container, on the trainer's own: Katib
# copies the first container's securityContext onto its metrics collector when its katib-config
# says `injectSecurityContext: true`, and a pod-level one would bind the collector with it off.
TRIAL_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": TRAINER_UID,
    "runAsGroup": TRAINER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
JOB_SUCCESS = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILURE = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
# Pods a trial may lose to faults that are not its own (its collector could not reach Katib's
# DB manager, ...) before the trial fails; evicted and preempted pods are not counted at all.
# With the Job's backoff (10 s, 20 s, 40 s) between them, three cover a minute or more of a
# MySQL and DB manager coming back (on our node, that once took both of two).
TRIAL_POD_RETRIES = 3
MAX_EXPERIMENT_NAME = 40
HASH_LENGTH = 6
BUDGET_FIELDS = ("maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")
DEFAULT_NAMESPACE = "default"
# Katib's only early-stopping service; spec.earlyStopping.rule median maps to it.
MEDIANSTOP = "medianstop"
MEDIANSTOP_MIN_TRIALS = "min_trials_required"
MEDIANSTOP_START_STEP = "start_step"
# Quantity suffixes as Kubernetes reads them: decimal powers of ten, binary powers of two.
_DECIMAL_SUFFIXES = {
    "n": -9,
    "u": -6,
    "m": -3,
    "": 0,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
# The trainer's --threads accepts up to this many.
MAX_THREADS = 1024
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}


def resolve_seed(tuning: MnistTuning) -> int:
    """Return the spec's seed, else one derived from the uid (or name): stable across restarts."""
    if tuning.spec.algorithm.seed is not None:
        return tuning.spec.algorithm.seed
    basis = tuning.metadata.uid or f"{tuning.metadata.namespace}/{tuning.metadata.name}"
    return int.from_bytes(hashlib.sha256(basis.encode()).digest()[:4], "big") % 2**31


def format_value(value: float | int | str) -> str:
    """Render a value the way Katib and the trainer's argparse both read it back."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parameter(name: str, space: FloatSpace[Any] | IntSpace[Any] | ChoiceSpace) -> dict[str, Any]:
    feasible: dict[str, Any]
    if isinstance(space, ChoiceSpace):
        kind, feasible = "categorical", {"list": list(space.values)}
    elif space.values is not None:
        kind, feasible = "discrete", {"list": [format_value(v) for v in space.values]}
    else:
        if space.min is None or space.max is None:  # the model's rules make this unreachable
            raise ValueError(f"search.{name} needs min and max")
        kind = "int" if isinstance(space, IntSpace) else "double"
        feasible = {"min": format_value(space.min), "max": format_value(space.max)}
        if space.step is not None:
            feasible["step"] = format_value(space.step)
    feasible["distribution"] = "logUniform" if getattr(space, "scale", None) == "log" else "uniform"
    return {"name": name, "parameterType": kind, "feasibleSpace": feasible}


def quantity(value: int | str) -> Decimal:
    """Read a Kubernetes quantity as a number: "500m" is 0.5, "1.5e3" 1500, "1Ki" 1024."""
    if isinstance(value, int):
        return Decimal(value)
    number = value.rstrip("".join({*_DECIMAL_SUFFIXES, *"".join(_BINARY_SUFFIXES)}))
    suffix = value[len(number) :]
    if suffix in _BINARY_SUFFIXES:
        return Decimal(number) * Decimal(2) ** _BINARY_SUFFIXES[suffix]
    # No suffix covers an exponent too ("1e3", "2.5E-1": a digit ends them).
    return Decimal(number).scaleb(_DECIMAL_SUFFIXES[suffix])


def trainer_threads(trial: Trial) -> int:
    """CPU threads for each trainer: its CPU limit, else its CPU request, rounded up; else 1.

    A pod sees every core of its node, so a trainer left to itself takes a thread per core,
    and trials sharing a node wait for each other's time slices. Its CPU share is all it
    should take; with no share given, one thread (MNIST's small network gains little from
    more, and `parallelTrials` trials may share a node).
    """
    resources = trial.resources
    for given in (resources.limits, resources.requests) if resources else ():
        if given and "cpu" in given:
            return min(MAX_THREADS, max(1, math.ceil(quantity(given["cpu"]))))
    return 1


def _command(tuning: MnistTuning, seed: int) -> list[str]:
    search = tuning.spec.search
    fixed = tuning.spec.fixed.values()
    searched = set(search.names())
    args = [
        f"{TRAINER_FLAGS[name]}=${{trialParameters.{name}}}"
        if name in searched
        else f"{TRAINER_FLAGS[name]}={format_value(fixed.get(name, TRAINER_DEFAULTS[name]))}"
        for name in HYPERPARAMETERS
    ]
    return [
        *TRAINER_COMMAND,
        *args,
        f"--seed={seed}",
        f"--threads={trainer_threads(tuning.spec.trial)}",
        f"--data-dir={TRAINER_DATA_DIR}",
        f"--metrics-file={METRICS_FILE_PATH}",
    ]


def pod_failure_policy() -> dict[str, Any]:
    """Run a trial's pod again only when the trial is not to blame for its failure.

    The trainer container's exit status is its verdict: 2 for a bad flag, 3 for a diverged
    loss, 137 for running out of memory; the same trial would fail the same way again, so
    its Job fails at once. (A trial Katib stopped early ends non-zero too, 2 from Katib's
    wrapper shell; Katib has marked it EarlyStopped by then, and a failed Job leaves it so.)
    A pod evicted, preempted or drained (Kubernetes marks it `DisruptionTarget`) runs again
    without counting. Any other failure, a trainer that finished but whose metrics collector
    could not report, counts against `TRIAL_POD_RETRIES`.
    """
    return {
        "rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": PRIMARY_CONTAINER,
                    "operator": "NotIn",
                    "values": [0],
                },
            },
        ]
    }


def _job(tuning: MnistTuning, seed: int, default_image: str) -> dict[str, Any]:
    trial = tuning.spec.trial
    container: dict[str, Any] = {
        "name": PRIMARY_CONTAINER,
        "image": trial.image or default_image,
        "command": _command(tuning, seed),
        "env": [{"name": METRICS_FILE_ENV, "value": METRICS_FILE_PATH}],
        "securityContext": copy.deepcopy(TRIAL_SECURITY_CONTEXT),
    }
    if trial.resources is not None:
        # Katib's strict Job conversion refuses empty maps; an empty one means "none" anyway.
        resources = {k: v for k, v in trial.resources.model_dump().items() if v}
        if resources:
            container["resources"] = resources
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if trial.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in trial.image_pull_secrets]
    labels = {LABEL_TUNING: tuning.metadata.name}  # the operator watches both by it
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": labels},
        "spec": {
            "backoffLimit": TRIAL_POD_RETRIES,
            "podFailurePolicy": pod_failure_policy(),
            "activeDeadlineSeconds": trial.timeout_seconds,
            "template": {
                "metadata": {"labels": labels},
                "spec": pod,
            },
        },
    }


def _experiment_spec(tuning: MnistTuning, default_image: str) -> dict[str, Any]:
    spec = tuning.spec
    seed = resolve_seed(tuning)
    objective_type = "maximize" if spec.objective.maximize else "minimize"
    other = spec.objective.other_metric
    objective: dict[str, Any] = {
        "type": objective_type,
        "objectiveMetricName": spec.objective.metric,
        "additionalMetricNames": [other],
        "metricStrategies": [
            {"name": name, "value": value} for name, value in spec.objective.strategies.items()
        ],
    }
    if spec.objective.goal is not None:
        objective["goal"] = spec.objective.goal
    names = spec.search.names()
    experiment: dict[str, Any] = {
        "objective": objective,
        "algorithm": {
            "algorithmName": spec.algorithm.name,
            "algorithmSettings": [{"name": "random_state", "value": str(seed)}],
        },
        "parallelTrialCount": spec.budget.parallel_trials,
        "maxTrialCount": spec.budget.max_trials,
        "maxFailedTrialCount": spec.budget.max_failed_trials,
        # A finished tuning whose maxTrials is raised runs just the extra trials: Katib restarts
        # only LongRunning or FromVolume Experiments. LongRunning keeps the suggestion pod, with
        # the search's memory, at a small pod per finished tuning; FromVolume restores nothing
        # for optuna or goptuna (their state is in memory) and needs a StorageClass.
        "resumePolicy": "LongRunning",
        "metricsCollectorSpec": {
            "collector": {"kind": "File"},
            "source": {
                "fileSystemPath": {"path": METRICS_FILE_PATH, "kind": "File", "format": "JSON"}
            },
        },
        "parameters": [_parameter(name, spec.search.space(name)) for name in names],
        "trialTemplate": {
            "primaryContainerName": PRIMARY_CONTAINER,
            "successCondition": JOB_SUCCESS,
            "failureCondition": JOB_FAILURE,
            "trialParameters": [
                {
                    "name": name,
                    "description": f"{TRAINER_FLAGS[name]} of the trainer",
                    "reference": name,
                }
                for name in names
            ],
            "trialSpec": _job(tuning, seed, default_image),
        },
    }
    if spec.early_stopping is not None:
        experiment["earlyStopping"] = {
            "algorithmName": MEDIANSTOP,
            "algorithmSettings": [
                {"name": MEDIANSTOP_MIN_TRIALS, "value": str(spec.early_stopping.min_trials)},
                {"name": MEDIANSTOP_START_STEP, "value": str(spec.early_stopping.start_step)},
            ],
        }
    return experiment


def _spec_hash(experiment_spec: Mapping[str, Any]) -> str:
    """Hash of everything Katib will not let us change in place (all but the budget)."""
    frozen = {k: v for k, v in experiment_spec.items() if k not in BUDGET_FIELDS}
    canonical = json.dumps(frozen, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def _name_prefix(name: str) -> str:
    """Make the tuning's name a DNS label that starts with a letter and leaves room for a hash."""
    prefix = re.sub(r"[^a-z0-9-]", "-", name.lower())
    if not prefix[:1].isalpha():
        prefix = f"mnt-{prefix}"
    return prefix[: MAX_EXPERIMENT_NAME - HASH_LENGTH - 1].rstrip("-")


def _name(tuning: MnistTuning, experiment_spec: Mapping[str, Any]) -> str:
    return f"{_name_prefix(tuning.metadata.name)}-{_spec_hash(experiment_spec)}"


def experiment_name(tuning: MnistTuning, *, default_image: str = DEFAULT_TRAINER_IMAGE) -> str:
    """Deterministic Experiment name: a budget change keeps it, any other change replaces it."""
    return _name(tuning, _experiment_spec(tuning, default_image))


def expand(tuning: MnistTuning, *, default_image: str = DEFAULT_TRAINER_IMAGE) -> dict[str, Any]:
    """Build the full Katib Experiment (kubeflow.org/v1beta1) for a tuning."""
    spec = _experiment_spec(tuning, default_image)
    metadata: dict[str, Any] = {
        "name": _name(tuning, spec),
        "namespace": tuning.metadata.namespace or DEFAULT_NAMESPACE,
        "labels": {LABEL_TUNING: tuning.metadata.name, LABEL_MANAGED_BY: MANAGED_BY},
    }
    if tuning.metadata.uid:
        metadata["ownerReferences"] = [
            {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": tuning.metadata.name,
                "uid": tuning.metadata.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    return {"apiVersion": KATIB_API_VERSION, "kind": KATIB_KIND, "metadata": metadata, "spec": spec}


def budget_of(experiment: Mapping[str, Any]) -> dict[str, int]:
    """Return the three counts Katib lets us patch on a running Experiment."""
    spec = experiment.get("spec") or {}
    return {field: int(spec[field]) for field in BUDGET_FIELDS if field in spec}
