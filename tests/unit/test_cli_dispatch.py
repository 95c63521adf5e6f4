"""The top-level `mnist-tuning` dispatcher."""

from __future__ import annotations

import pytest
from mnist_tuning import cli


def test_every_subcommand_shows_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.SUBCOMMANDS)


def test_a_missing_optional_extra_is_one_sentence_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.SUBCOMMANDS, "run", ("mnist_tuning_absent_extra", "run", "help"))
    assert cli.main(["run", "-f", "x.yaml"]) == 2
    err = capsys.readouterr().err
    assert "mnist_tuning_absent_extra" in err
    assert "make venv" in err
    assert "Traceback" not in err


def test_dispatch_reaches_the_chosen_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == 0
    assert "kind: CustomResourceDefinition" in capsys.readouterr().out
