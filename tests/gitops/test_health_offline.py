"""Our health checks in Argo CD's own Lua engine, offline: every fixture of the unit tier through
`argocd admin settings resource-overrides health OBJ --argocd-cm-path deploy/argocd/argocd-cm.yaml`.

The unit tier runs the same fixtures through gopher-lua and a Lua 5.1 sandbox; here the real
`argocd` binary (built by `build.sh gitops`) reads the shipped argocd-cm.yaml the way Argo CD's
settings code reads it, so a key or a script that Argo CD itself would not load fails here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import launcher
import pytest
import yaml

FIXTURES = launcher.REPO_ROOT / "tests" / "unit" / "fixtures" / "argocd"
ARGOCD_CM = launcher.REPO_ROOT / "deploy" / "argocd" / "argocd-cm.yaml"


def cases() -> list[tuple[Path, dict[str, Any]]]:
    """(object file, expected health) for every test of every kind's health_test.yaml."""
    found = []
    for tests in sorted(FIXTURES.glob("*/*/health_test.yaml")):
        for case in yaml.safe_load(tests.read_text())["tests"]:
            found.append((tests.parent / case["inputPath"], case["healthStatus"]))
    return found


def judged(argocd: Path, obj: Path) -> dict[str, str]:
    """STATUS and MESSAGE as `argocd admin` prints them for one object."""
    result = subprocess.run(
        [str(argocd), "admin", "settings", "resource-overrides", "health", str(obj),
         f"--argocd-cm-path={ARGOCD_CM}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    fields = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return {"status": fields["STATUS"], "message": fields["MESSAGE"]}


@pytest.mark.parametrize(
    ("obj", "expected"),
    cases(),
    ids=lambda v: f"{v.parent.parent.name}-{v.stem}" if isinstance(v, Path) else "",
)
def test_argocd_judges_each_fixture_as_the_unit_tier_expects(
    obj: Path, expected: dict[str, str]
) -> None:
    argocd = launcher.DEFAULT_BIN_DIR / "argocd"
    if not argocd.exists():
        pytest.fail(f"no {argocd}; run `make gitops-binaries`", pytrace=False)
    assert judged(argocd, obj) == {
        "status": expected["status"],
        "message": expected.get("message", ""),
    }
