"""Reading Argo CD's own records: Applications, their health and sync, and what they judged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from node import gitops
from watch import Watch

TUNING, TUNING_NAMESPACE = "quick", "mnist"
UNLABELLED = "gitops-unlabelled"
TUNING_NAMESPACES = (TUNING_NAMESPACE, UNLABELLED)


@dataclass(frozen=True)
class Synced:
    """Argo CD running on the node, and every version of every Application it wrote."""

    gitops: gitops.GitOps
    applications: Watch


def time_of(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def kubectl_json(synced: Synced, *args: str) -> dict[str, Any]:
    return dict(json.loads(synced.gitops.node.kubectl(*args, "-o", "json").stdout))


def application(synced: Synced, name: str) -> dict[str, Any]:
    found = synced.gitops.application(name)
    assert found is not None, f"Argo CD has no Application {name}"
    return found


def tuning_of(
    synced: Synced, name: str = TUNING, namespace: str = TUNING_NAMESPACE
) -> dict[str, Any]:
    return kubectl_json(synced, "get", "mnisttuning", name, "-n", namespace)


def health(app: dict[str, Any]) -> str:
    return str((app.get("status") or {}).get("health", {}).get("status", ""))


def sync_status(app: dict[str, Any]) -> str:
    return str((app.get("status") or {}).get("sync", {}).get("status", ""))


def resource_health(app: dict[str, Any], kind: str, name: str) -> dict[str, Any] | None:
    """What Argo CD judged one of the Application's resources to be, in this version of it."""
    for resource in (app.get("status") or {}).get("resources") or []:
        if resource.get("kind") == kind and resource.get("name") == name:
            return resource.get("health")
    return None
