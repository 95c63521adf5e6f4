"""Shared fixtures: the MNIST digits, a real control plane per session, a namespace per test,
a Katib stand-in; one real single-node Kubernetes per session and real Katib on it, for the
node and e2e tiers.

The control plane is etcd + kube-apiserver + kube-controller-manager built by `make binaries`
(tests/harness/build.sh) and started by tests/harness/launcher.py in a temporary directory, so
it never touches a developer's `make cluster` in .cluster/. The node (tests/harness/node) also
runs from a temporary directory; since only one node fits on a machine, a running
`make katib-cluster` is reported instead of being torn down. Harness modules are importable
from tests as `launcher`, `katib_standin` and `node`.
"""

from __future__ import annotations

import os
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
from node import host
from node.katib import install as install_katib
from node.katib import manifests_dir
from node.node import SAVED_SYSCTLS, Node, RunningNode, read_running, recorded_root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The gitops tier first: Argo CD installs the session's Katib and operator from Git, on a
    node that has nothing else yet; the e2e and node tiers then share that Katib."""
    gitops = Path(__file__).parent / "gitops"
    items.sort(key=lambda item: not item.path.is_relative_to(gitops))


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


@pytest.fixture(scope="session")
def ip_forward_before() -> str:
    """The machine's IPv4 forwarding switch before any node started.

    A node killed in an earlier session leaves the switch on and its saved value behind; the
    first start of this session restores that value, so it is the one to compare with.
    """
    return host.Sysctls(SAVED_SYSCTLS).original("net.ipv4.ip_forward")


@pytest.fixture(scope="session")
def node_harness(
    tmp_path_factory: pytest.TempPathFactory, ip_forward_before: str
) -> Iterator[Node]:
    """The node's lifecycle object; the node is down again when the session ends."""
    if os.geteuid() != 0:
        pytest.skip("the node tier needs root (containerd, kubelet, iptables)")
    recorded = recorded_root()
    if recorded is not None and read_running(recorded) is not None:
        pytest.fail(
            f"a node already runs from {recorded}; stop it with `make katib-cluster-down`",
            pytrace=False,
        )
    harness = Node(tmp_path_factory.mktemp("node"), launcher.DEFAULT_BIN_DIR)
    yield harness
    harness.down()


@pytest.fixture(scope="session")
def node(node_harness: Node) -> RunningNode:
    """A running node: Ready, CoreDNS answering, the test image imported."""
    return node_harness.up()


@pytest.fixture(scope="session")
def katib_node(node: RunningNode) -> RunningNode:
    """The node with real Katib v0.19.0 installed and every Deployment of it Available."""
    install_katib(node, launcher.DEFAULT_BIN_DIR, manifests_dir(launcher.DEFAULT_BIN_DIR))
    return node
