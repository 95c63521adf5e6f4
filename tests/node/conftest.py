"""Fixtures of the node tier: a namespace per test on the session's node (tests/conftest.py).

Tests marked `destroys_node` stop and restart the node: they run last, after
`reads_node_counters` tests, which read what the others did.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from node.katib import INJECTION_LABEL
from node.node import RunningNode


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


@pytest.fixture
def node_namespace(node: RunningNode, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on the node; deleted after the test (without waiting)."""
    stem = "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:40].strip("-")
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", name)
    yield name
    node.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def katib(katib_node: RunningNode) -> RunningNode:
    """Real Katib here (the root conftest's `katib` is the control-plane tier's stand-in)."""
    return katib_node


@pytest.fixture
def katib_namespace(katib: RunningNode, node_namespace: str) -> str:
    """A fresh namespace that Katib's webhooks accept Experiments in."""
    katib.kubectl("label", "namespace", node_namespace, f"{INJECTION_LABEL}=enabled")
    return node_namespace
