"""The spec model: defaults, and every invalid manifest refused with the field named."""

from __future__ import annotations

from typing import Any

import numpy
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mnist_tuning.api.spec import (
    BestTrial,
    MnistTuningStatus,
    SpecError,
    grid_size,
    parse_tuning,
)
from strategies import BREAKAGES, Invalid, invalid_manifests, valid_manifests


def minimal(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": "t"},
        "spec": {"search": {"momentum": {"min": 0.5, "max": 0.9}}, **spec},
    }


def test_defaults_follow_the_design() -> None:
    spec = parse_tuning(minimal()).spec
    assert spec.objective.metric == "accuracy"
    assert spec.objective.maximize
    assert spec.algorithm.name == "random"
    assert spec.algorithm.seed is None
    assert (spec.budget.max_trials, spec.budget.parallel_trials) == (12, 3)
    assert spec.budget.max_failed_trials == 3
    assert spec.fixed.values() == {}


@pytest.mark.parametrize("max_trials", [1, 2, 3, 4])
def test_default_parallel_and_failed_counts_are_capped_at_max_trials(max_trials: int) -> None:
    budget = parse_tuning(minimal(budget={"maxTrials": max_trials})).spec.budget
    assert budget.parallel_trials == min(3, max_trials)
    assert budget.max_failed_trials == min(3, max_trials)


def test_every_problem_is_reported_at_once_with_its_path() -> None:
    manifest = minimal(
        search={"batchSize": {"values": [0, 64]}, "lr": {"min": 0.1}},
        fixed={"dropout": 1.0},
        budget={"maxTrials": "many"},
    )
    with pytest.raises(SpecError) as caught:
        parse_tuning(manifest)
    paths = [problem.path for problem in caught.value.problems]
    assert paths == [
        "spec.budget.maxTrials",
        "spec.search.batchSize.values[0]",
        "spec.search.lr",
        "spec.fixed.dropout",
    ]
    assert "unknown field" in caught.value.problems[2].message


@pytest.mark.parametrize(
    ("manifest", "path", "words"),
    [
        (
            minimal(search={"learningRate": {"min": 0.1, "max": 0.01}}),
            "spec.search.learningRate",
            "min must be less than max",
        ),
        (
            minimal(search={"momentum": {"min": 0.0, "max": 0.5, "scale": "log"}}),
            "spec.search.momentum",
            "scale log needs min greater than 0",
        ),
        (
            minimal(search={"optimizer": {"values": ["sgd", "sgd"]}}),
            "spec.search.optimizer",
            "must not repeat",
        ),
        (minimal(search={"momentum": {"min": 0.5}}), "spec.search.momentum", "min and max"),
        (minimal(fixed={"momentum": 0.9}), "spec", "momentum is in both search and fixed"),
        (
            minimal(budget={"maxTrials": 2, "parallelTrials": 3}),
            "spec.budget",
            "parallelTrials must not exceed maxTrials",
        ),
        (minimal(search={}), "spec.search", "at least one hyperparameter"),
        (
            minimal(trial={"resources": {"limits": {"cpu": 0.5}}}),
            "spec.trial.resources.limits.cpu",
            "quantity",
        ),
        (
            {
                "kind": "MnistTuning",
                "metadata": {"name": "t"},
                "spec": {"search": {"epochs": {"values": [1]}}},
            },
            "apiVersion",
            "tuning.mnist.dev/v1alpha1",
        ),
        (
            minimal(algorithm={"name": "grid"}, search={"momentum": {"min": 0.5, "max": 0.9}}),
            "spec",
            "algorithm grid needs a step for search.momentum",
        ),
        (
            minimal(
                algorithm={"name": "grid"},
                search={"momentum": {"min": 0.5, "max": 0.9, "step": 0.1}},
                budget={"maxTrials": 6},
            ),
            "spec",
            "budget.maxTrials must not exceed the number of combinations",
        ),
        (
            minimal(algorithm={"name": "cmaes"}, search={"momentum": {"min": 0.5, "max": 0.9}}),
            "spec",
            "algorithm cmaes needs at least two hyperparameters",
        ),
        (
            minimal(
                algorithm={"name": "bayesianoptimization"},
                search={"dropout": {"min": 0.0, "max": 0.5}},
            ),
            "spec",
            "bayesianoptimization samples search.dropout on a log scale",
        ),
        (
            minimal(
                algorithm={"name": "sobol"},
                search={"learningRate": {"min": 0.001, "max": 0.1, "scale": "log"}},
            ),
            "spec",
            "algorithms cmaes and sobol cannot search search.learningRate on a log scale",
        ),
        (
            minimal(earlyStopping={"rule": "mean"}),
            "spec.earlyStopping.rule",
            "median",
        ),
    ],
)
def test_rule_violations_name_the_field_and_the_fix(
    manifest: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_tuning(manifest)
    assert [(p.path, words in p.message) for p in caught.value.problems] == [(path, True)]


def test_a_name_kubernetes_would_refuse_is_refused_here_too() -> None:
    manifest = minimal()
    manifest["metadata"] = {"name": "My_Tuning"}
    with pytest.raises(SpecError) as caught:
        parse_tuning(manifest)
    [problem] = caught.value.problems
    assert problem.path == "metadata.name"
    assert "lower-case" in problem.message


def test_a_non_mapping_manifest_is_one_readable_problem() -> None:
    with pytest.raises(SpecError) as caught:
        parse_tuning(["not", "a", "mapping"])  # type: ignore[arg-type]
    assert caught.value.problems[0].path == "(top level)"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests())
def test_every_generated_valid_manifest_parses(manifest: dict[str, Any]) -> None:
    tuning = parse_tuning(manifest)
    assert tuning.metadata.name == manifest["metadata"]["name"]
    assert set(tuning.spec.search.names()) == set(manifest["spec"]["search"])


@pytest.mark.parametrize("how", BREAKAGES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_invalid_manifest_is_refused_naming_the_field(how: str, data: st.DataObject) -> None:
    broken: Invalid = data.draw(invalid_manifests(how))
    with pytest.raises(SpecError) as caught:
        parse_tuning(broken.manifest)
    problems = caught.value.problems
    assert any(broken.field in p.path or broken.field in p.message for p in problems), problems


def test_best_trial_is_written_flat_and_read_back() -> None:
    best = BestTrial(
        trial="t-1", metrics={"accuracy": 0.98, "loss": 0.05}, hyperparameters={"batchSize": 64}
    )
    status = MnistTuningStatus(phase="Running", best=best)
    manifest = status.to_manifest()
    assert manifest["best"] == {
        "trial": "t-1",
        "hyperparameters": {"batchSize": 64},
        "accuracy": 0.98,
        "loss": 0.05,
    }
    assert MnistTuningStatus.model_validate(manifest) == status


def katib_grid_count(low: float, high: float, step: float) -> int:
    """Katib's optuna service: numpy.arange(min, max + step, step), less a value above max."""
    values = numpy.arange(low, high + step, step)
    return len(values) - (1 if values[-1] > high else 0)


@settings(max_examples=300, deadline=None)
@given(
    st.floats(0.0, 0.9, allow_subnormal=False),
    st.floats(0.001, 0.5, allow_subnormal=False),
    st.floats(0.001, 0.5, allow_subnormal=False),
)
def test_grid_counts_a_real_range_as_katibs_numpy_arange_does(
    low: float, width: float, step: float
) -> None:
    high = min(low + width, 0.999)
    assume(high > low)
    search = parse_tuning(minimal(search={"momentum": {"min": low, "max": high, "step": step}}))
    assert grid_size(search.spec.search) == katib_grid_count(low, high, step)


def test_grid_size_multiplies_ranges_steps_and_lists() -> None:
    search = {
        "learningRate": {"min": 0.1, "max": 0.3, "step": 0.1},  # 0.1, 0.2, 0.3
        "batchSize": {"min": 32, "max": 128, "step": 32},  # 32, 64, 96, 128
        "epochs": {"min": 1, "max": 3},  # step 1 by default
        "optimizer": {"values": ["sgd", "adam"]},
    }
    assert grid_size(parse_tuning(minimal(search=search)).spec.search) == 3 * 4 * 3 * 2


def test_a_grid_of_exactly_max_trials_and_a_two_range_cmaes_are_accepted() -> None:
    grid = minimal(
        algorithm={"name": "grid"},
        search={"momentum": {"min": 0.5, "max": 0.9, "step": 0.1}},
        budget={"maxTrials": 5},
    )
    cmaes = minimal(
        algorithm={"name": "cmaes"},
        search={"momentum": {"min": 0.5, "max": 0.9}, "batchSize": {"min": 16, "max": 128}},
    )
    assert parse_tuning(grid).spec.budget.max_trials == 5
    assert parse_tuning(cmaes).spec.algorithm.name == "cmaes"
