"""The repository layout that people and scripts rely on (DESIGN §2, §9)."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import mnist_trainer
import mnist_tuning

ROOT = Path(__file__).resolve().parents[2]

LAYOUT = [
    "operator/mnist_tuning",
    "trainer/mnist_trainer",
    "crds",
    "deploy",
    "tests/unit",
    "tests/katib",
    "tests/controlplane",
    "tests/trainer",
    "tests/local",
    "tests/node",
    "tests/e2e",
    "benchmarks",
    "Dockerfile.operator",
    "Dockerfile.trainer",
    "README.md",
    "Makefile",
    "pyproject.toml",
    ".ci/run",
    ".gitignore",
]


def test_every_top_level_path_of_the_design_exists() -> None:
    missing = [path for path in LAYOUT if not (ROOT / path).exists()]
    assert missing == []


def test_import_operator_from_the_repository_root_is_the_standard_library() -> None:
    # The folder `operator/` must never become an importable package: it would
    # shadow the stdlib module that half of the ecosystem imports.
    assert not (ROOT / "operator" / "__init__.py").exists()
    probe = (
        "import operator, sysconfig, pathlib;"
        "std = pathlib.Path(sysconfig.get_paths()['stdlib']).resolve();"
        "mod = pathlib.Path(operator.__file__).resolve();"
        "print(mod.is_relative_to(std), hasattr(operator, 'itemgetter'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["True", "True"]


def test_no_module_of_ours_is_named_operator() -> None:
    names = [
        info.name
        for package in (mnist_tuning, mnist_trainer)
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    ]
    assert names, "walk_packages found nothing: the packages are not where pyproject says"
    assert [name for name in names if name.rsplit(".", 1)[-1] == "operator"] == []


def test_ci_entry_point_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert "\nmake test\n" in ci


def test_make_help_lists_every_target_with_one_line() -> None:
    makefile = (ROOT / "Makefile").read_text()
    declared = set(re.findall(r"^([a-zA-Z][a-zA-Z_-]*):(?!=)", makefile, flags=re.MULTILINE))
    result = subprocess.run(
        ["make", "--no-print-directory", "help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    listed = {line.split()[0] for line in plain.splitlines() if line.strip()}
    assert {"venv", "data", "test", "lint", "demo", "cluster", "cluster-down"} <= listed
    assert declared - listed == set(), "every target needs a `## help` comment"


def test_test_module_names_are_unique_across_tiers() -> None:
    # The tiers are plain folders collected in one pytest run: two test modules with one
    # basename make collection fail with "import file mismatch".
    names = sorted(path.name for path in (ROOT / "tests").rglob("test_*.py"))
    assert [name for name in set(names) if names.count(name) > 1] == []
