"""Our Argo CD manifests against a real kube-apiserver that serves Argo CD's Application CRD.

Argo CD's CRD comes from Argo CD's own Go module (`manifests/crds/application-crd.yaml` ships
in the module zip), fetched through the Go module proxy like the rest of the harness and kept in
Go's module cache. Server-side dry-runs with strict field validation then check every field of
every Application against Argo CD's real schema, and the documented `kubectl patch` of argocd-cm
is run for real to show it adds our health checks and keeps the settings already there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import launcher
import pytest
import yaml
from launcher import ControlPlane

ARGO_CD_MODULE = "github.com/argoproj/argo-cd/v3"
ARGO_CD_VERSION = "v3.5.7"
ARGOCD_DIR = launcher.REPO_ROOT / "deploy" / "argocd"
APPLICATIONS = [ARGOCD_DIR / "root.yaml", *sorted((ARGOCD_DIR / "apps").glob("*.yaml"))]
ARGOCD_CM = ARGOCD_DIR / "argocd-cm.yaml"


def argo_cd_module_dir(work_dir: Path) -> Path:
    """Download Argo CD's Go module (once per machine: Go's module cache) and return its dir."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is needed to fetch Argo CD's CRD from its Go module", pytrace=False)
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{ARGO_CD_MODULE}@{ARGO_CD_VERSION}"],
        cwd=work_dir,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"go mod download {ARGO_CD_MODULE}: {result.stderr.strip()}", pytrace=False)
    return Path(json.loads(result.stdout)["Dir"])


def established(control_plane: ControlPlane, crd: str) -> bool:
    got = json.loads(control_plane.run_kubectl("get", "crd", crd, "-o", "json").stdout)
    conditions = got.get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def argocd(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> ControlPlane:
    """The control plane with Argo CD's Application CRD established and an `argocd` namespace."""
    crd = (
        argo_cd_module_dir(tmp_path_factory.mktemp("argo-cd"))
        / "manifests/crds/application-crd.yaml"
    )
    control_plane.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    deadline = time.monotonic() + 60
    while not established(control_plane, "applications.argoproj.io"):
        assert time.monotonic() < deadline, "Argo CD's Application CRD was not established"
        time.sleep(0.2)
    control_plane.apply(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "argocd"}})
    )
    return control_plane


def dry_run(control_plane: ControlPlane, manifest: str) -> subprocess.CompletedProcess[str]:
    return control_plane.run_kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-o",
        "json",
        "-f",
        "-",
        input_text=manifest,
        check=False,
    )


@pytest.mark.parametrize("path", APPLICATIONS, ids=lambda p: p.name)
def test_each_application_passes_a_strict_server_side_dry_run(
    argocd: ControlPlane, path: Path
) -> None:
    result = dry_run(argocd, path.read_text())
    assert result.returncode == 0, result.stderr
    sent = yaml.safe_load(path.read_text())
    stored = json.loads(result.stdout)
    assert stored["spec"] == sent["spec"], "the API server dropped or changed a field"


def test_a_misspelled_field_is_refused_by_argo_cds_schema(argocd: ControlPlane) -> None:
    app: dict[str, Any] = yaml.safe_load((ARGOCD_DIR / "apps" / "tunings.yaml").read_text())
    app["spec"]["syncPolicy"]["syncOption"] = app["spec"]["syncPolicy"].pop("syncOptions")
    result = dry_run(argocd, yaml.safe_dump(app))
    assert result.returncode != 0
    assert "syncOption" in result.stderr


def test_the_documented_patch_adds_the_health_checks_and_keeps_other_settings(
    argocd: ControlPlane,
) -> None:
    argocd.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "argocd-cm", "namespace": "argocd"},
                "data": {"url": "https://argocd.example.com"},
            }
        )
    )
    argocd.run_kubectl(
        "-n", "argocd", "patch", "configmap", "argocd-cm", "--type", "merge",
        "--patch-file", str(ARGOCD_CM),
    )  # fmt: skip
    data = json.loads(
        argocd.run_kubectl("-n", "argocd", "get", "configmap", "argocd-cm", "-o", "json").stdout
    )["data"]
    shipped = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    assert data == {"url": "https://argocd.example.com", **shipped}
