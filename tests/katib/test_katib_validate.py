"""Katib's own Go defaulting and validation judge every Experiment we render.

`katib-validate` (tests/harness/katib-validate) runs Katib v0.19.0's `Experiment.SetDefault` and
experiment validator. An Experiment passes only if Katib accepts it and defaulting leaves it
unchanged, i.e. what we render is exactly what Katib would run.
"""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import launcher
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from mnist_tuning.api.expand import expand
from mnist_tuning.api.spec import ALGORITHMS, parse_tuning
from mnist_tuning.api.spec import UNIFORM_ONLY_ALGORITHMS as UNIFORM_ONLY
from mnist_tuning.api.yamlio import to_yaml
from strategies import Manifest, valid_manifests

REPO_ROOT = launcher.REPO_ROOT
SAMPLES = sorted((REPO_ROOT / "deploy" / "samples").glob("*.yaml"))
Experiment = dict[str, Any]


@pytest.fixture(scope="module")
def katib_validate() -> Path:
    try:
        return launcher.binaries_dir() / "katib-validate"
    except launcher.ControlPlaneError as error:
        pytest.fail(str(error), pytrace=False)


def render(sample: Path) -> str:
    """`mnist-tuning render` of a sample: the YAML a user pipes to kubectl."""
    result = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "mnist-tuning"), "render", "-f", str(sample)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"render {sample.name} failed: {result.stderr}"
    return result.stdout


def judge(
    katib_validate: Path, tmp_path: Path, *documents: str
) -> subprocess.CompletedProcess[str]:
    """Run katib-validate on each document (YAML or JSON text), one file each."""
    paths = []
    for index, text in enumerate(documents):
        path = tmp_path / f"experiment-{index}.yaml"
        path.write_text(text)
        paths.append(str(path))
    return subprocess.run(
        [str(katib_validate), *paths], capture_output=True, text=True, timeout=120, check=False
    )


def test_there_are_samples() -> None:
    assert {path.name for path in SAMPLES} >= {"quick.yaml", "seed-random.yaml", "full.yaml"}


@pytest.mark.parametrize("sample", SAMPLES, ids=[path.stem for path in SAMPLES])
def test_katib_accepts_every_rendered_sample_unchanged(
    katib_validate: Path, tmp_path: Path, sample: Path
) -> None:
    result = judge(katib_validate, tmp_path, render(sample))
    assert result.returncode == 0, result.stderr
    assert "accepted unchanged" in result.stdout


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(manifest=valid_manifests())
def test_katib_accepts_every_generated_experiment_unchanged(
    katib_validate: Path, tmp_path: Path, manifest: Manifest
) -> None:
    # Exactly what `mnist-tuning render` prints for this manifest.
    rendered = to_yaml(expand(parse_tuning(manifest)))
    result = judge(katib_validate, tmp_path, rendered)
    assert result.returncode == 0, result.stderr + yaml.safe_dump(manifest)


@pytest.fixture(scope="module")
def reference() -> Experiment:
    """The rendered seed experiment: a known-good starting point for broken variants."""
    experiment: Experiment = yaml.safe_load(render(REPO_ROOT / "deploy/samples/seed-random.yaml"))
    return experiment


def _trial_template(experiment: Experiment) -> dict[str, Any]:
    template: dict[str, Any] = experiment["spec"]["trialTemplate"]
    return template


def _container(experiment: Experiment) -> dict[str, Any]:
    container: dict[str, Any] = _trial_template(experiment)["trialSpec"]["spec"]["template"][
        "spec"
    ]["containers"][0]
    return container


def parallel_above_max(experiment: Experiment) -> None:
    spec = experiment["spec"]
    spec["parallelTrialCount"] = spec["maxTrialCount"] + 1


def trial_parameter_missing(experiment: Experiment) -> None:
    # The placeholder stays in the command, but nothing declares it any more.
    _trial_template(experiment)["trialParameters"].pop(0)


def undeclared_placeholder(experiment: Experiment) -> None:
    _container(experiment)["command"].append("--extra=${trialParameters.notDeclared}")


def name_of_41_characters(experiment: Experiment) -> None:
    experiment["metadata"]["name"] = "a" * 41


def defaulting_would_change_it(experiment: Experiment) -> None:
    del experiment["spec"]["resumePolicy"]


def misspelt_field(experiment: Experiment) -> None:
    experiment["spec"]["maxTrialCounts"] = experiment["spec"].pop("maxTrialCount")


BROKEN: dict[str, tuple[Callable[[Experiment], None], str]] = {
    "parallel-above-max": (
        parallel_above_max,
        "spec.parallelTrialCount: Invalid value: ",
    ),
    "trial-parameter-missing": (
        trial_parameter_missing,
        "in spec.trialTemplate not found in spec.trialParameters",
    ),
    "undeclared-placeholder": (
        undeclared_placeholder,
        "parameters: [${trialParameters.notDeclared}] in spec.trialTemplate not found",
    ),
    "name-of-41-characters": (
        name_of_41_characters,
        "may not be longer than 40 characters",
    ),
    "defaulting-would-change-it": (
        defaulting_would_change_it,
        "Katib's defaulting webhook would change the Experiment "
        "(SetDefault, then re-encoding through Katib's types):\n"
        '  add /spec/resumePolicy "Never"',
    ),
    "misspelt-field": (
        misspelt_field,
        'Katib\'s Experiment type cannot hold it: json: unknown field "maxTrialCounts"',
    ),
}


def test_the_reference_is_accepted(
    katib_validate: Path, tmp_path: Path, reference: Experiment
) -> None:
    result = judge(katib_validate, tmp_path, json.dumps(reference))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_katib_refuses_broken_experiments_with_its_message(
    katib_validate: Path, tmp_path: Path, reference: Experiment, case: str
) -> None:
    breaker, message = BROKEN[case]
    broken = copy.deepcopy(reference)
    breaker(broken)
    result = judge(katib_validate, tmp_path, json.dumps(broken))
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stderr


def test_one_refusal_among_several_files_fails_the_run(
    katib_validate: Path, tmp_path: Path, reference: Experiment
) -> None:
    broken = copy.deepcopy(reference)
    name_of_41_characters(broken)
    result = judge(katib_validate, tmp_path, json.dumps(reference), json.dumps(broken))
    assert result.returncode == 1
    assert "experiment-0.yaml: accepted unchanged" in result.stdout
    assert "experiment-1.yaml" in result.stderr


# One search that every algorithm's service accepts: two stepped real ranges (grid, cmaes),
# both above 0 (bayesianoptimization), and a list; linear for cmaes and sobol, which refuse log.
EVERY_ALGORITHM_SEARCH = {
    "learningRate": {"min": 0.01, "max": 0.1, "step": 0.01, "scale": "log"},
    "momentum": {"min": 0.5, "max": 0.9, "step": 0.1},
    "optimizer": {"values": ["sgd", "adam"]},
}


@pytest.mark.parametrize("early_stopping", [None, {}, {"minTrials": 2, "startStep": 1}])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_katib_accepts_every_algorithm_and_early_stopping_unchanged(
    katib_validate: Path,
    tmp_path: Path,
    algorithm: str,
    early_stopping: dict[str, int] | None,
) -> None:
    spec: dict[str, Any] = {
        "algorithm": {"name": algorithm, "seed": 3},
        "budget": {"maxTrials": 8, "parallelTrials": 2},
        "search": {
            name: {k: v for k, v in space.items() if algorithm not in UNIFORM_ONLY or k != "scale"}
            for name, space in EVERY_ALGORITHM_SEARCH.items()
        },
    }
    if early_stopping is not None:
        spec["earlyStopping"] = early_stopping
    manifest = {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": algorithm, "namespace": "tuning"},
        "spec": spec,
    }
    experiment = expand(parse_tuning(manifest))
    assert experiment["spec"]["algorithm"]["algorithmName"] == algorithm
    result = judge(katib_validate, tmp_path, to_yaml(experiment))
    assert result.returncode == 0, result.stderr
    assert "accepted unchanged" in result.stdout
