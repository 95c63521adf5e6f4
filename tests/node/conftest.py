"""Fixtures of the node tier: one real single-node Kubernetes per session, a namespace per test.

The node runs from a temporary state directory (tests/harness/node), so it never touches a
developer's `make katib-cluster` in .katib-cluster/; since only one node fits on a machine, a
running one is reported instead of being torn down. Tests marked `destroys_node` stop and
restart it: they run last, after `reads_node_counters` tests, which read what the others did.
The `katib` fixture installs real Katib on the node once, for the tests that ask for it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from launcher import DEFAULT_BIN_DIR
from node.katib import INJECTION_LABEL, install, manifests_dir
from node.node import Node, RunningNode, read_running, recorded_root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within this tier: counter readers after the other tests, node destroyers last."""

    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("destroys_node"):
            return 2
        return 1 if item.get_closest_marker("reads_node_counters") else 0

    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if item.path.is_relative_to(here)]
    for slot, item in zip(slots, sorted((items[i] for i in slots), key=rank), strict=True):
        items[slot] = item


@pytest.fixture(scope="session")
def ip_forward_before() -> str:
    """The machine's IPv4 forwarding switch before any node of this session started."""
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


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
    harness = Node(tmp_path_factory.mktemp("node"), DEFAULT_BIN_DIR)
    yield harness
    harness.down()


@pytest.fixture(scope="session")
def node(node_harness: Node) -> RunningNode:
    """A running node: Ready, CoreDNS answering, the test image imported."""
    return node_harness.up()


@pytest.fixture
def node_namespace(node: RunningNode, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the node; deleted after the test (without waiting)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", name)
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def katib(node: RunningNode) -> RunningNode:
    """The node with real Katib v0.19.0 installed and every Deployment of it Available."""
    install(node, DEFAULT_BIN_DIR, manifests_dir(DEFAULT_BIN_DIR))
    return node


@pytest.fixture
def katib_namespace(katib: RunningNode, node_namespace: str) -> str:
    """A fresh namespace that Katib's webhooks accept Experiments in."""
    katib.kubectl("label", "namespace", node_namespace, f"{INJECTION_LABEL}=enabled")
    return node_namespace
