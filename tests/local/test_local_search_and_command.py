"""The local engine searches the Experiment's space and starts the trial pod's command."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path
from typing import Any

import optuna
from hypothesis import HealthCheck, given, settings
from mnist_tuning.api.expand import METRICS_FILE_PATH, expand
from mnist_tuning.api.spec import TRAINER_FLAGS, parse_tuning
from mnist_tuning.local.command import trial_process
from mnist_tuning.local.search import (
    assignments,
    distributions,
    draw,
    make_sampler,
    search_space,
    suggest,
)
from strategies import valid_manifests

optuna.logging.set_verbosity(optuna.logging.ERROR)


def tuning_manifest(search: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": "local"},
        "spec": {"algorithm": {"seed": 3}, "search": search},
    }


SEARCH = {
    "learningRate": {"min": 0.001, "max": 0.1, "scale": "log"},
    "momentum": {"min": 0.5, "max": 0.9, "step": 0.1},
    "batchSize": {"values": [32, 64, 128]},
    "epochs": {"min": 1, "max": 3},
    "optimizer": {"values": ["sgd", "adam"]},
    "weightDecay": {"min": 0.0001, "max": 0.01, "scale": "log", "step": 0.0005},
}


def in_space(value: str, spec_space: dict[str, Any]) -> bool:
    if "values" in spec_space:
        return value in {str(v) for v in spec_space["values"]}
    number = float(value)
    return spec_space["min"] <= number <= spec_space["max"]


def sample(experiment: dict[str, Any], n: int) -> list[dict[str, str]]:
    space = search_space(experiment)
    study = optuna.create_study(sampler=make_sampler(experiment, 3))
    out = []
    for _ in range(n):
        trial = study.ask(distributions(space))
        out.append(assignments(space, trial.params))
        study.tell(trial, 0.0)
    return out


def test_sampled_assignments_stay_in_the_searched_ranges_and_steps() -> None:
    experiment = expand(parse_tuning(tuning_manifest(SEARCH)))
    for values in sample(experiment, 40):
        for name, value in values.items():
            assert in_space(value, SEARCH[name]), (name, value)
        momentum = float(values["momentum"])
        assert math.isclose(momentum * 10, round(momentum * 10), abs_tol=1e-9)
        # A log scale with a step is sampled on the log scale and rounded to the step.
        decay = float(values["weightDecay"]) / 0.0005
        assert math.isclose(decay, round(decay), abs_tol=1e-6) or values["weightDecay"] in (
            "0.0001",
            "0.01",
        )
        assert values["epochs"].isdigit()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests())
def test_every_valid_spec_samples_inside_its_space(manifest: dict[str, Any]) -> None:
    tuning = parse_tuning(manifest)
    experiment = expand(tuning)
    search = manifest["spec"]["search"]
    for values in sample(experiment, 3):
        for name, value in values.items():
            assert in_space(value, search[name]), (name, value, search[name])


def test_points_drawn_in_memory_and_written_one_by_one_are_what_asking_draws() -> None:
    # A resumed run draws its earlier points again instead of reading them back.
    experiment = expand(parse_tuning(tuning_manifest(SEARCH)))
    unbroken = sample(experiment, 5)
    space = distributions(search_space(experiment))
    study = optuna.create_study(sampler=make_sampler(experiment, 3))
    between: list[int] = []
    for _ in range(5):
        study.enqueue_trial(draw(study.sampler, study, space, lambda: between.append(1)))
        trial = study.ask()
        for name, dist in space.items():
            suggest(trial, name, dist)
    assert [assignments(search_space(experiment), t.params) for t in study.trials] == unbroken
    assert unbroken[3] != unbroken[0]
    assert len(between) == 5 * (len(space) - 1)


def test_trial_command_is_the_pods_command_substituted_and_pointed_at_local_paths(
    tmp_path: Path,
) -> None:
    experiment = expand(parse_tuning(tuning_manifest(SEARCH)))
    values = sample(experiment, 1)[0]
    metrics = tmp_path / "metrics.json"
    process = trial_process(
        experiment,
        values,
        python=sys.executable,
        data_dir=tmp_path / "data",
        metrics_file=metrics,
        threads=3,
        extra_args=["--train-limit=100"],
    )
    assert process.argv[:3] == [sys.executable, "-m", "mnist_trainer"]
    assert process.argv[-2:] == ["--threads=3", "--train-limit=100"]
    for name, value in values.items():
        assert f"{TRAINER_FLAGS[name]}={value}" in process.argv
    assert f"--data-dir={tmp_path / 'data'}" in process.argv
    assert f"--metrics-file={metrics}" in process.argv
    assert process.env["CLOUD_ML_HP_METRIC_FILE"] == str(metrics)
    assert not any("${" in arg or METRICS_FILE_PATH in arg for arg in process.argv)


def test_placeholders_resolve_through_the_trial_parameter_reference(tmp_path: Path) -> None:
    # Katib substitutes ${trialParameters.<name>} with the value of the parameter the entry
    # references, not the parameter of the same name.
    experiment = copy.deepcopy(
        expand(parse_tuning(tuning_manifest({"learningRate": {"min": 0.01, "max": 0.1}})))
    )
    template = experiment["spec"]["trialTemplate"]
    template["trialParameters"] = [{"name": "lr", "reference": "learningRate"}]
    container = template["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [
        arg.replace("trialParameters.learningRate", "trialParameters.lr")
        for arg in container["command"]
    ]
    process = trial_process(
        experiment,
        {"learningRate": "0.042"},
        python="py",
        data_dir=tmp_path,
        metrics_file=tmp_path / "m.json",
        threads=1,
    )
    assert "--learning-rate=0.042" in process.argv
    assert process.argv[0] == "py"


def test_integer_log_scale_with_step_gives_multiples_of_the_step() -> None:
    space = {"min": 1, "max": 64, "scale": "log", "step": 8}
    experiment = expand(parse_tuning(tuning_manifest({"batchSize": space})))
    seen = {int(values["batchSize"]) for values in sample(experiment, 30)}
    assert all(value % 8 == 0 and 8 <= value <= 64 for value in seen)
    assert len(seen) > 2
