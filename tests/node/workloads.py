"""What the node tier applies: pods of the locally built Debian test image; waits on them."""

from __future__ import annotations

import json
from typing import Any

from launcher import wait_for
from node.node import RunningNode, userland_image


def container(name: str, script: str, **extra: Any) -> dict[str, Any]:
    """A container of the test image running a Python script (never pulled)."""
    return {
        "name": name,
        "image": userland_image(),
        "imagePullPolicy": "Never",
        "command": ["python3", "-u", "-c", script],
        **extra,
    }


def pod(name: str, namespace: str, *containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A pod that runs its containers once."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "containers": list(containers), **spec},
    }


def wait_pod_phase(node: RunningNode, namespace: str, name: str, phases: set[str]) -> str:
    """The pod's phase once it is one of `phases` (e.g. Succeeded, Failed)."""
    seen = ""

    def reached() -> bool:
        nonlocal seen
        got = node.kubectl("get", "pod", name, "-n", namespace, "-o", "json", check=False)
        seen = json.loads(got.stdout)["status"].get("phase", "") if got.returncode == 0 else ""
        return seen in phases

    wait_for(f"pod {namespace}/{name} to reach {sorted(phases)}", reached)
    return seen


def served(
    name: str, namespace: str, server: dict[str, Any], port: int, target: int
) -> list[dict[str, Any]]:
    """A long-running pod of one container and the Service in front of it."""
    backend = pod(name, namespace, server)
    backend["metadata"]["labels"] = {"app": name}
    backend["spec"]["restartPolicy"] = "Always"
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": target}]},
    }
    return [backend, service]
