"""`mnist-tuning render|validate|crd`: output for people and scripts, errors without tracebacks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from mnist_tuning.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "deploy" / "samples" / "seed-random.yaml"
GOLDEN = Path(__file__).resolve().parent / "golden" / "seed-random.experiment.yaml"


def test_render_prints_the_golden_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(SAMPLE)]) == 0
    assert capsys.readouterr().out == GOLDEN.read_text()


def test_render_namespace_overrides_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(SAMPLE), "--namespace", "team-a"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["namespace"] == "team-a"


def test_render_image_sets_the_default_trainer_image(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "-f", str(SAMPLE), "--image", "registry.example/t:2"]) == 0
    experiment = yaml.safe_load(capsys.readouterr().out)
    pod = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/t:2"


def test_validate_accepts_a_sample(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(SAMPLE)]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_lists_every_problem_with_its_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: tuning.mnist.dev/v1alpha1\nkind: MnistTuning\nmetadata: {name: t}\n"
        "spec:\n  search:\n    learningRate: {min: 0.1, max: 0.01}\n    lr: {min: 1}\n"
        "  budget: {maxTrials: 2, parallelTrials: 3}\n"
    )
    assert main(["validate", "-f", str(bad)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "spec.budget",
        "spec.search.learningRate",
        "spec.search.lr",
    ]
    assert all(line.startswith(f"{bad}: ") for line in lines)


@pytest.mark.parametrize("command", ["render", "validate"])
def test_malformed_yaml_is_one_readable_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("spec:\n  search: [1,\n")
    assert main([command, "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "not valid YAML at line" in err


@pytest.mark.parametrize("command", ["render", "validate"])
def test_a_missing_file_exits_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "-f", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_crd_prints_the_committed_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == (REPO_ROOT / "crds" / "mnisttuning.yaml").read_text()


def test_the_installed_command_shows_no_traceback_for_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    result = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "mnist-tuning"), "render", "-f", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "expected a MnistTuning object" in result.stderr


def test_validate_says_what_an_algorithms_katib_service_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "apiVersion: tuning.mnist.dev/v1alpha1\nkind: MnistTuning\nmetadata: {name: t}\n"
        "spec:\n  algorithm: {name: grid}\n  search:\n    momentum: {min: 0.5, max: 0.9}\n"
    )
    assert main(["validate", "-f", str(grid)]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{grid}: spec: algorithm grid needs a step for search.momentum")
