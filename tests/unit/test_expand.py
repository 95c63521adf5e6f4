"""expand(): a MnistTuning becomes a Katib Experiment that Katib's rules accept."""

from __future__ import annotations

from typing import Any

from mnist_tuning.api.expand import (
    LABEL_TUNING,
    METRICS_FILE_PATH,
    budget_of,
    expand,
    experiment_name,
    resolve_seed,
)
from mnist_tuning.api.spec import parse_tuning


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
