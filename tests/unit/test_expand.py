"""expand(): a MnistTuning becomes a Katib Experiment that Katib's rules accept."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mnist_trainer.cli import EXIT_DIVERGED, EXIT_USAGE, parse
from mnist_tuning.api.expand import (
    LABEL_TUNING,
    METRICS_FILE_PATH,
    PRIMARY_CONTAINER,
    TRAINER_COMMAND,
    TRIAL_POD_RETRIES,
    budget_of,
    expand,
    experiment_name,
    quantity,
    resolve_seed,
)
from mnist_tuning.api.spec import ALGORITHMS, grid_size, parse_tuning
from strategies import valid_manifests


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": "lr-momentum", "namespace": "tuning", "uid": "0000-1111"},
        "spec": {"search": {"learningRate": {"min": 0.001, "max": 0.1, "scale": "log"}}, **spec},
    }


def test_expand_writes_collector_path_into_the_trial_environment() -> None:
    experiment = expand(parse_tuning(manifest()))
    source = experiment["spec"]["metricsCollectorSpec"]["source"]["fileSystemPath"]
    container = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert source == {"path": METRICS_FILE_PATH, "kind": "File", "format": "JSON"}
    assert {"name": "CLOUD_ML_HP_METRIC_FILE", "value": METRICS_FILE_PATH} in container["env"]
    assert experiment["metadata"]["labels"][LABEL_TUNING] == "lr-momentum"


def test_budget_change_keeps_the_name_and_search_change_replaces_it() -> None:
    base = parse_tuning(manifest())
    more = parse_tuning(manifest(budget={"maxTrials": 20, "parallelTrials": 5}))
    other = parse_tuning(
        manifest(search={"learningRate": {"min": 0.001, "max": 0.2, "scale": "log"}})
    )
    assert experiment_name(base) == experiment_name(more)
    assert experiment_name(base) != experiment_name(other)
    assert budget_of(expand(more)) == {
        "maxTrialCount": 20,
        "parallelTrialCount": 5,
        "maxFailedTrialCount": 3,
    }


def test_seed_is_stable_for_one_object_and_differs_between_objects() -> None:
    first = parse_tuning(manifest())
    again = parse_tuning(manifest())
    other = parse_tuning({**manifest(), "metadata": {"name": "lr-momentum", "uid": "2222"}})
    assert resolve_seed(first) == resolve_seed(again)
    assert resolve_seed(first) != resolve_seed(other)
    assert parse_tuning(manifest(algorithm={"seed": 7})).spec.algorithm.seed == 7
    assert resolve_seed(parse_tuning(manifest(algorithm={"seed": 7}))) == 7


# --- Katib's rules (reference/katib.md §2.3, §3.1) on every valid spec -------------------------

NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
PLACEHOLDER = re.compile(r"\$\{trialParameters\.([^}]*)\}")
SHELL_SAFE = re.compile(r"[A-Za-z0-9_.,=/:+@-]+")


def empty_maps(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        found = [path] if not value else []
        return found + [p for k, v in value.items() for p in empty_maps(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in empty_maps(v, f"{path}[{i}]")]
    return []


def sample_values(parameter: dict[str, Any]) -> list[str]:
    space = parameter["feasibleSpace"]
    return space.get("list") or [space["min"], space["max"]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests())
def test_every_valid_spec_expands_to_an_experiment_katib_accepts(manifest: dict[str, Any]) -> None:
    tuning = parse_tuning(manifest)
    experiment = expand(tuning)
    meta, spec = experiment["metadata"], experiment["spec"]
    # Name: starts with a letter, a DNS label, at most 40 characters; deterministic.
    assert NAME.fullmatch(meta["name"])
    assert len(meta["name"]) <= 40
    assert meta["name"] == experiment_name(tuning)
    assert meta["labels"][LABEL_TUNING] == manifest["metadata"]["name"]
    assert ("ownerReferences" in meta) == ("uid" in manifest["metadata"])
    # Counts.
    assert spec["maxTrialCount"] > 0
    assert spec["parallelTrialCount"] > 0
    assert 0 <= spec["maxFailedTrialCount"] <= spec["maxTrialCount"]
    assert spec["parallelTrialCount"] <= spec["maxTrialCount"]
    # Raising maxTrials after the run ended must be restartable on Katib (Never refuses it).
    assert spec["resumePolicy"] == "LongRunning"
    # Objective: every metric has a strategy, the objective is not an additional metric.
    objective = spec["objective"]
    assert objective["type"] in ("minimize", "maximize")
    assert objective["objectiveMetricName"] not in objective["additionalMetricNames"]
    strategies = {s["name"]: s["value"] for s in objective["metricStrategies"]}
    assert set(strategies) == {
        objective["objectiveMetricName"],
        *objective["additionalMetricNames"],
    }
    assert set(strategies.values()) <= {"min", "max", "latest"}
    # Algorithm: the spec's, with only random_state, a non-negative integer string.
    assert spec["algorithm"]["algorithmName"] == tuning.spec.algorithm.name
    [setting] = spec["algorithm"]["algorithmSettings"]
    assert setting["name"] == "random_state"
    assert setting["value"].isdigit()
    # Parameters: valid types, string feasible spaces, sane ranges.
    parameters = spec["parameters"]
    for parameter in parameters:
        space = parameter["feasibleSpace"]
        assert all(isinstance(v, str) for k, v in space.items() if k != "list")
        assert all(isinstance(v, str) for v in space.get("list", []))
        assert space["distribution"] in ("uniform", "logUniform")
        if parameter["parameterType"] in ("double", "int"):
            assert "list" not in space
            assert float(space["min"]) < float(space["max"])
            if space["distribution"] == "logUniform":
                assert float(space["min"]) > 0
            assert "step" not in space or float(space["step"]) > 0
        else:
            assert parameter["parameterType"] in ("categorical", "discrete")
            assert not {"min", "max", "step"} & set(space)
            assert space["list"]
            assert len(set(space["list"])) == len(space["list"])
    # Parameters <-> trialParameters one to one; placeholders declared <-> used.
    template = spec["trialTemplate"]
    trial_parameters = template["trialParameters"]
    names = [p["name"] for p in parameters]
    assert len(set(names)) == len(names)
    assert sorted(p["reference"] for p in trial_parameters) == sorted(names)
    declared = [p["name"] for p in trial_parameters]
    assert len(set(declared)) == len(declared)
    assert not any("{" in n or "}" in n for n in declared)
    used = PLACEHOLDER.findall(json.dumps(template["trialSpec"]))
    assert sorted(used) == sorted(declared)
    # The Job: no name/namespace, the primary container, the collector path in the env.
    job = template["trialSpec"]
    assert not empty_maps(job), "Katib's strict Job conversion refuses empty maps"
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert "name" not in job.get("metadata", {})
    assert "namespace" not in job.get("metadata", {})
    assert job["spec"]["backoffLimit"] == TRIAL_POD_RETRIES
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    assert container["name"] == template["primaryContainerName"]
    path = spec["metricsCollectorSpec"]["source"]["fileSystemPath"]
    assert path["path"].startswith("/")
    assert path["format"] == "JSON"
    assert path["kind"] == "File"
    assert {"name": "CLOUD_ML_HP_METRIC_FILE", "value": path["path"]} in container["env"]
    assert "filter" not in spec["metricsCollectorSpec"]["source"]
    # Arguments survive Katib's `sh -c` wrapper: no spaces or shell characters once rendered.
    values = {p["name"]: sample_values(p) for p in parameters}
    by_reference = {p["name"]: values[p["reference"]] for p in trial_parameters}
    for argument in container["command"]:
        for name, choices in by_reference.items():
            for value in choices:
                rendered = argument.replace(f"${{trialParameters.{name}}}", value)
                if "${" not in rendered:
                    assert SHELL_SAFE.fullmatch(rendered), rendered
        if "${" not in argument:
            assert SHELL_SAFE.fullmatch(argument), argument


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests(), st.integers(1, 1000))
def test_only_a_budget_change_keeps_the_experiment_name(manifest: dict[str, Any], n: int) -> None:
    before = parse_tuning(manifest)
    if before.spec.algorithm.name == "grid":
        n = min(n, int(grid_size(before.spec.search)))  # a grid holds only so many trials
    budget = {"maxTrials": n, "parallelTrials": min(n, 100), "maxFailedTrials": n}
    after = parse_tuning({**manifest, "spec": {**manifest["spec"], "budget": budget}})
    assert experiment_name(before) == experiment_name(after)
    assert budget_of(expand(after)) == {
        "maxTrialCount": n,
        "parallelTrialCount": min(n, 100),
        "maxFailedTrialCount": n,
    }


def test_long_and_digit_first_names_still_make_a_valid_experiment_name() -> None:
    long_name = manifest()
    long_name["metadata"] = {"name": "9" + "a" * 62}
    dotted = manifest()
    dotted["metadata"] = {"name": "lr.momentum.v2"}
    for case in (long_name, dotted):
        name = experiment_name(parse_tuning(case))
        assert NAME.fullmatch(name), name
        assert len(name) <= 40, name


def test_fixed_values_and_trainer_defaults_fill_the_unsearched_flags() -> None:
    tuning = parse_tuning(manifest(fixed={"batchSize": 128, "optimizer": "adam"}))
    command = expand(tuning)["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert command[:3] == ["python", "-m", "mnist_trainer"]
    assert "--learning-rate=${trialParameters.learningRate}" in command
    assert "--batch-size=128" in command
    assert "--optimizer=adam" in command
    assert "--momentum=0.5" in command
    assert "--epochs=1" in command
    assert f"--metrics-file={METRICS_FILE_PATH}" in command


def test_the_operator_default_image_applies_only_when_the_spec_names_none() -> None:
    plain = parse_tuning(manifest())
    named = parse_tuning(manifest(trial={"image": "registry.example/t:1"}))

    def image(experiment: dict[str, Any]) -> str:
        pod = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
        return str(pod["containers"][0]["image"])

    assert image(expand(plain, default_image="mine:2")) == "mine:2"
    assert image(expand(named, default_image="mine:2")) == "registry.example/t:1"
    assert experiment_name(plain, default_image="mine:2") != experiment_name(plain)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_is_katibs_name_with_the_seed_as_random_state(algorithm: str) -> None:
    search = {
        "learningRate": {"min": 0.01, "max": 0.1, "step": 0.01},
        "momentum": {"min": 0.5, "max": 0.9, "step": 0.1},
    }
    tuning = parse_tuning(manifest(search=search, algorithm={"name": algorithm, "seed": 7}))
    assert expand(tuning)["spec"]["algorithm"] == {
        "algorithmName": algorithm,
        "algorithmSettings": [{"name": "random_state", "value": "7"}],
    }
    assert "earlyStopping" not in expand(tuning)["spec"]


def test_early_stopping_is_medianstop_with_katibs_defaults_written_out() -> None:
    defaults = expand(parse_tuning(manifest(earlyStopping={})))["spec"]["earlyStopping"]
    assert defaults == {
        "algorithmName": "medianstop",
        "algorithmSettings": [
            {"name": "min_trials_required", "value": "3"},
            {"name": "start_step", "value": "4"},
        ],
    }
    given = expand(parse_tuning(manifest(earlyStopping={"minTrials": 2, "startStep": 1})))
    assert given["spec"]["earlyStopping"]["algorithmSettings"] == [
        {"name": "min_trials_required", "value": "2"},
        {"name": "start_step", "value": "1"},
    ]


@pytest.mark.parametrize(
    ("resources", "threads"),
    [
        (None, 1),
        ({"limits": {"memory": "1Gi"}}, 1),
        ({"requests": {"cpu": "500m"}}, 1),
        ({"requests": {"cpu": "2"}}, 2),
        ({"requests": {"cpu": "1500m"}}, 2),
        ({"requests": {"cpu": 1}, "limits": {"cpu": "3"}}, 3),
        ({"limits": {"cpu": "2.5", "memory": "1Gi"}}, 3),
    ],
)
def test_each_trainer_takes_as_many_threads_as_its_cpu_share(
    resources: dict[str, Any] | None, threads: int
) -> None:
    trial = {"trial": {"resources": resources}} if resources else {}
    experiment = expand(parse_tuning(manifest(**trial)))
    pod = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[: len(TRAINER_COMMAND)] == list(TRAINER_COMMAND)
    # What Katib hands the trainer once it has put a trial's values in.
    args = [
        re.sub(r"\$\{trialParameters\.\w+\}", "0.01", arg)
        for arg in command[len(TRAINER_COMMAND) :]
    ]
    assert parse(args)[1].threads == threads


COLLECTOR = "metrics-logger-and-collector"  # the container Katib injects beside ours


def policy_action(policy: dict[str, Any], exits: dict[str, int], conditions: set[str]) -> str:
    """What a Job does with a failed pod, read as the Job controller reads `podFailurePolicy`.

    The first rule that matches decides; a pod no rule matches counts against backoffLimit.
    `exits` holds each container's exit status, `conditions` the pod's True conditions.
    """
    for rule in policy["rules"]:
        if "onPodConditions" in rule:
            if any(wanted["type"] in conditions for wanted in rule["onPodConditions"]):
                return str(rule["action"])
            continue
        codes = rule["onExitCodes"]
        named = codes.get("containerName")
        for container, code in exits.items():
            if named not in (None, container) or code == 0:
                continue
            if (code in codes["values"]) == (codes["operator"] == "In"):
                return str(rule["action"])
    return "Count"


@pytest.mark.parametrize(
    ("exits", "conditions", "action"),
    [
        # The trial's own failures: run again, they fail again.
        ({PRIMARY_CONTAINER: EXIT_DIVERGED, COLLECTOR: 0}, set(), "FailJob"),
        ({PRIMARY_CONTAINER: EXIT_USAGE, COLLECTOR: 0}, set(), "FailJob"),
        ({PRIMARY_CONTAINER: 137, COLLECTOR: 0}, set(), "FailJob"),  # out of memory
        ({PRIMARY_CONTAINER: 143, COLLECTOR: 0}, set(), "FailJob"),  # ended by SIGTERM
        # Katib's part failed after the trainer finished: run again, within the retries.
        ({PRIMARY_CONTAINER: 0, COLLECTOR: 255}, set(), "Count"),
        # Evicted or preempted mid-epoch: run again, not counted.
        ({PRIMARY_CONTAINER: 143, COLLECTOR: 2}, {"DisruptionTarget"}, "Ignore"),
    ],
)
def test_a_trial_pod_runs_again_only_when_the_trial_is_not_to_blame(
    exits: dict[str, int], conditions: set[str], action: str
) -> None:
    job = expand(parse_tuning(manifest()))["spec"]["trialTemplate"]["trialSpec"]["spec"]
    assert job["backoffLimit"] == TRIAL_POD_RETRIES > 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # the policy requires it
    assert policy_action(job["podFailurePolicy"], exits, conditions) == action


@pytest.mark.parametrize(
    ("written", "value"),
    [
        ("500m", "0.5"),
        ("2", "2"),
        (3, "3"),
        ("1.5e3", "1500"),
        ("1E3", "1000"),
        ("2E", "2e18"),
        ("1Ki", "1024"),
        ("250u", "0.00025"),
        ("+1.5k", "1500"),
    ],
)
def test_a_quantity_reads_as_kubernetes_reads_it(written: int | str, value: str) -> None:
    assert quantity(written) == Decimal(value)
