"""The operator's Kubernetes I/O: a thin wrapper over the official client.

Every call the operator makes is here, so the RBAC in `deploy/operator/` can be read
against one file. Errors are sorted into what the operator does about them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mnist_tuning.api.expand import KATIB_API_VERSION
from mnist_tuning.api.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION
from mnist_tuning.api.summarize import rfc3339

KATIB_GROUP, KATIB_VERSION = KATIB_API_VERSION.split("/")
EXPERIMENTS: Final = "experiments"
RBAC_DENIAL: Final = re.compile(r'cannot [a-z]+ resource "')
COMPONENT: Final = "mnist-tuning-operator"
MAX_EVENT_MESSAGE: Final = 1024


@dataclass(frozen=True)
class Refusal:
    """Why the API server would not take an Experiment, in its own words."""

    code: int
    message: str
    katib_missing: bool
    forbidden_by_rbac: bool

    @property
    def refused(self) -> bool:
        """Admission or validation said no: retrying the same object cannot help."""
        return self.code in (400, 403, 422) and not self.forbidden_by_rbac


def refusal(exc: ApiException) -> Refusal:
    """Classify a failed write: Katib missing (404 on the collection) vs refused vs RBAC."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    message = str(body.get("message") or exc.reason or exc)
    details = body.get("details") or {}
    # A create answers 404 only when the collection is not served (the namespace itself
    # missing names kind "namespaces").
    katib_missing = exc.status == 404 and details.get("kind") in (None, EXPERIMENTS)
    # RBAC denials say 'User "..." cannot <verb> resource "..."'; admission denials do not.
    forbidden = exc.status == 403 and RBAC_DENIAL.search(message) is not None
    return Refusal(exc.status or 0, message, katib_missing, forbidden)


def _object(value: object) -> dict[str, Any]:
    """Narrow the client's untyped custom-object answers to the JSON objects they are."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object from the API server, got {type(value).__name__}")
    return value


def _unless_gone(call: Callable[[], object]) -> bool:
    """Run a write on a tuning; a tuning deleted meanwhile is not an error, just False."""
    try:
        call()
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


class Kube:
    """The API calls the operator makes, on one shared (thread-safe) API client."""

    def __init__(self) -> None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            config.load_kube_config()  # type: ignore[no-untyped-call]
        api = client.ApiClient()
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        """Labels of a namespace (the Katib injection label is read from here)."""
        ns = self._core.read_namespace(namespace)
        return dict((ns.metadata and ns.metadata.labels) or {})

    def patch_tuning_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch `.status` through the status subresource; False if the tuning is gone."""
        return _unless_gone(
            lambda: self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        )

    def post_event(self, tuning: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Post a core/v1 Event on the tuning (what `kubectl describe` shows)."""
        meta = tuning["metadata"]
        at = rfc3339(datetime.now(UTC))
        event: Any = {  # the client sends a plain dict as is
            "metadata": {"generateName": f"{meta['name']}."},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": type_,
            "reason": reason,
            "message": message[:MAX_EVENT_MESSAGE],
            "source": {"component": COMPONENT},
            "firstTimestamp": at,
            "lastTimestamp": at,
            "count": 1,
        }
        self._core.create_namespaced_event(meta["namespace"], event)

    def get_experiment(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Read the Experiment; None when it does not exist."""
        try:
            body = _object(
                self._custom.get_namespaced_custom_object(
                    KATIB_GROUP, KATIB_VERSION, namespace, EXPERIMENTS, name
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return body

    def create_experiment(self, experiment: dict[str, Any]) -> dict[str, Any] | None:
        """Create the Experiment; None when it already exists (409 is not an error here)."""
        try:
            body = _object(
                self._custom.create_namespaced_custom_object(
                    KATIB_GROUP,
                    KATIB_VERSION,
                    experiment["metadata"]["namespace"],
                    EXPERIMENTS,
                    experiment,
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return body

    def patch_experiment_spec(
        self, namespace: str, name: str, spec: dict[str, int]
    ) -> dict[str, Any]:
        """Merge-patch the budget fields of a running Experiment."""
        return _object(
            self._custom.patch_namespaced_custom_object(
                KATIB_GROUP, KATIB_VERSION, namespace, EXPERIMENTS, name, {"spec": spec}
            )
        )

    def delete_experiment(self, namespace: str, name: str) -> None:
        """Delete an Experiment (its Trials follow by owner reference); gone already is fine."""
        try:
            self._custom.delete_namespaced_custom_object(
                KATIB_GROUP,
                KATIB_VERSION,
                namespace,
                EXPERIMENTS,
                name,
                body=client.V1DeleteOptions(propagation_policy="Background"),
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
