"""The Kubernetes API from inside a pod, as its service account: what `SetTrialStatus` needs.

Katib's controller gives the suggestion pod of an Experiment with early stopping a service
account allowed to read Trials and write their status, in the Experiment's namespace.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from katib_services.median_stop import early_stopped

ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TRIAL = "/apis/kubeflow.org/v1beta1/namespaces/{namespace}/trials/{name}"
TIMEOUT_S = 30


@dataclass(frozen=True)
class InCluster:
    """The API server, the pod's token and namespace, and a TLS context trusting its CA."""

    server: str
    token: str
    namespace: str
    tls: ssl.SSLContext

    @classmethod
    def from_pod(cls, account: Path = ACCOUNT, env: Mapping[str, str] = os.environ) -> InCluster:
        server = f"https://{env['KUBERNETES_SERVICE_HOST']}:{env['KUBERNETES_SERVICE_PORT']}"
        return cls(
            server=server,
            token=(account / "token").read_text().strip(),
            namespace=(account / "namespace").read_text().strip(),
            tls=ssl.create_default_context(cafile=str(account / "ca.crt")),
        )

    def call(self, method: str, path: str, body: Any = None, kind: str = "json") -> Any:
        """One request; its JSON answer. HTTPError carries the API server's refusal."""
        request = urllib.request.Request(
            self.server + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                "Content-Type": f"application/{kind}",
            },
        )
        with urllib.request.urlopen(request, context=self.tls, timeout=TIMEOUT_S) as answer:
            return json.load(answer)

    def mark_early_stopped(self, trial: str, now: str) -> None:
        """Add the EarlyStopped condition to the Trial's status, as Katib's service does."""
        path = TRIAL.format(namespace=self.namespace, name=trial)
        current = self.call("GET", path)
        self.call("PATCH", f"{path}/status", early_stopped(current, now), "merge-patch+json")
