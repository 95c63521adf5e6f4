"""Mistakes a person makes with `mnist-tuning run` get one clear sentence, never a traceback."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from local_runs import RunCli, tuning
from mnist_tuning.api.expand import expand
from mnist_tuning.api.spec import parse_tuning
from mnist_tuning.local import cli
from mnist_tuning.local.engine import Engine


def assert_one_clear_sentence(text: str, *needles: str) -> None:
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    for needle in needles:
        assert needle in lines[0], text


def test_an_invalid_file_names_each_field(tmp_path: Path, run_cli: RunCli) -> None:
    manifest = tuning("bad", budget={"maxTrials": 2, "parallelTrials": 5})
    manifest["spec"]["search"]["momentum"] = {"min": 0.9, "max": 0.5}
    result = run_cli(manifest, tmp_path / "bad", tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "spec.budget" in result.stderr
    assert "parallelTrials must not exceed maxTrials" in result.stderr
    assert "spec.search.momentum" in result.stderr
    assert not (tmp_path / "bad").exists()


def test_missing_data_says_how_to_get_it(tmp_path: Path, run_cli: RunCli) -> None:
    result = run_cli(tuning("nodata"), tmp_path / "nodata", tmp_path / "empty")
    assert result.returncode == 2
    assert_one_clear_sentence(result.stderr, "no MNIST data", "make data", "--data-dir")


def test_a_workdir_of_another_spec_is_refused(
    tmp_path: Path, mnist_root: Path, run_cli: RunCli
) -> None:
    workdir = tmp_path / "shared"
    workdir.mkdir()
    first = parse_tuning(tuning("first"))
    engine = Engine(
        first, expand(first), workdir=workdir, data_dir=mnist_root, observer=lambda _: None
    )
    engine.open_study()
    result = run_cli(tuning("second"), workdir, mnist_root)
    assert result.returncode == 2
    assert_one_clear_sentence(result.stderr, "different spec", "--workdir")


def test_a_missing_trainer_is_named(
    tmp_path: Path,
    mnist_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec_file = tmp_path / "t.yaml"
    spec_file.write_text(
        "apiVersion: tuning.mnist.dev/v1alpha1\nkind: MnistTuning\nmetadata: {name: t}\n"
        "spec: {search: {momentum: {min: 0.1, max: 0.9}}}\n"
    )
    monkeypatch.setattr(cli, "TRAINER_MODULES", ("mnist_trainer", "no_such_trainer_module"))
    args = argparse.Namespace(filename=str(spec_file), workdir=tmp_path / "w", data_dir=mnist_root)
    assert cli.run(args) == 2
    assert_one_clear_sentence(capsys.readouterr().err, "trainer is not installed", "make venv")
