"""Shared fixtures: the MNIST digits, a real control plane per session, a namespace per test,
a Katib stand-in.

The control plane is etcd + kube-apiserver + kube-controller-manager built by `make binaries`
(tests/harness/build.sh) and started by tests/harness/launcher.py in a temporary directory, so
it never touches a developer's `make cluster` in .cluster/. Harness modules are importable from
tests as `launcher` and `katib_standin`.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "harness"))

import launcher
from cluster import default_crds
from katib_standin import KATIB_INJECTION_LABEL, KatibStandIn
from launcher import ControlPlane
from mnist_trainer.prepare import prepare


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The repository's data/ folder, written by `make data` (or here, if it is missing)."""
    root = launcher.REPO_ROOT / "data"
    prepare(root)
    return root


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the whole test session, with our and Katib's CRDs."""
    try:
        bin_dir = launcher.binaries_dir()
    except launcher.ControlPlaneError as error:
        pytest.fail(str(error), pytrace=False)
    crds = default_crds(launcher.REPO_ROOT / ".cluster")
    if not any(path.parent.name == "katib" for path in crds):
        pytest.fail(
            "Katib's CRDs are missing from .cluster/crds/katib; run `make binaries`", pytrace=False
        )
    with launcher.running_control_plane(
        tmp_path_factory.mktemp("control-plane"), bin_dir, crds
    ) as running:
        yield running


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace enabled for Katib; deleted after the test (without waiting)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    control_plane.apply(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {KATIB_INJECTION_LABEL: "enabled"}},
            }
        )
    )
    yield name
    control_plane.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def katib(control_plane: ControlPlane) -> KatibStandIn:
    """Plays Katib's experiment controller by writing Experiment status in Katib's shapes."""
    return KatibStandIn(control_plane.bin_dir, control_plane.kubeconfig)
