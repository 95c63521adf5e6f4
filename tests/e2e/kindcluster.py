"""Helpers for the kind end-to-end tier: is Docker there, which kind and kubectl, what to apply.

Everything up to `KindCluster.create()` lives here as plain functions, so a unit test
(tests/unit/test_e2e_helpers.py) runs that code path on a machine without Docker.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from pytest_kind import KindCluster

REPO_ROOT = Path(__file__).resolve().parents[2]
# kind v0.30.0 creates Kubernetes v1.34.0 nodes by default: the newest version in Katib
# v0.19.0's own e2e matrix. Built from the Go module proxy, never downloaded from GitHub.
KIND_MODULE = "sigs.k8s.io/kind"
KIND_VERSION = "v0.30.0"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
KATIB_NAMESPACE = "kubeflow"
KATIB_INJECTION_LABEL = "katib.kubeflow.org/metrics-collector-injection"
OPERATOR_DEPLOYMENT = "mnist-tuning-operator"


class ClusterUnavailableError(RuntimeError):
    """The e2e tier cannot run on this machine; the message says why."""


def cache_dir(environ: Mapping[str, str]) -> Path:
    """The cache the harness scripts share (see tests/harness/build.sh)."""
    if environ.get("MNIST_TUNING_CACHE"):
        return Path(environ["MNIST_TUNING_CACHE"])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-tuning"


def docker_problem(environ: Mapping[str, str], timeout: float = 3.0) -> str | None:
    """Why no Docker engine answers at DOCKER_HOST (None when `GET /_ping` returns OK)."""
    host = environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    address = urlparse(host)
    try:
        if address.scheme == "unix":
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(timeout)
            conn.connect(address.path)
        elif address.scheme == "tcp" and address.hostname and address.port:
            conn = socket.create_connection((address.hostname, address.port), timeout=timeout)
        else:
            return f"DOCKER_HOST={host} is neither unix:///path nor tcp://host:port"
        with conn:
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
    except OSError as error:
        return f"no Docker engine reachable at {host} ({error.strerror or error})"
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " not in f"{status_line} " or body.strip() != b"OK":
        return f"the Docker engine at {host} answered /_ping with {status_line!r}"
    return None


def kind_install_command(go: str) -> list[str]:
    """`go install` of the pinned kind, from the Go module proxy."""
    return [go, "install", f"{KIND_MODULE}@{KIND_VERSION}"]


def resolve_kind(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """`--kind-bin` if given, else the pinned kind built once into the cache."""
    if explicit:
        path = Path(explicit)
        if not os.access(path, os.X_OK):
            raise ClusterUnavailableError(f"--kind-bin {path} is not an executable file")
        return path
    slot = cache_dir(environ) / "bin" / f"kind-{KIND_VERSION}"
    if not (slot / "kind").exists():
        go = shutil.which("go", path=environ.get("PATH"))
        if go is None:
            raise ClusterUnavailableError(
                f"Go is needed to build kind {KIND_VERSION} (or pass --kind-bin)"
            )
        slot.mkdir(parents=True, exist_ok=True)
        build_env = {**environ, "GOBIN": str(slot), "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        subprocess.run(kind_install_command(go), env=build_env, check=True)
    return slot / "kind"


def resolve_kubectl(explicit: str | None, environ: Mapping[str, str]) -> Path:
    """`--kind-kubectl-bin`, else kubectl on PATH, else the one `make binaries` built."""
    candidates = [
        Path(explicit) if explicit else None,
        Path(found) if (found := shutil.which("kubectl", path=environ.get("PATH"))) else None,
        REPO_ROOT / ".cluster" / "bin" / "kubectl",
    ]
    for candidate in candidates:
        if candidate is not None and os.access(candidate, os.X_OK):
            return candidate
    raise ClusterUnavailableError(
        "no kubectl: put one on PATH, pass --kind-kubectl-bin or run make binaries"
    )


def cluster_before_creation(
    name: str,
    work_dir: Path,
    environ: Mapping[str, str],
    *,
    kind_bin: str | None = None,
    kubectl_bin: str | None = None,
    node_image: str | None = None,
) -> KindCluster:
    """Everything the e2e fixture does before `create()`; raises ClusterUnavailableError to skip."""
    problem = docker_problem(environ)
    if problem is not None:
        raise ClusterUnavailableError(problem)
    return KindCluster(
        name,
        kubeconfig=work_dir / "kubeconfig",
        image=node_image,
        kind_path=resolve_kind(kind_bin, environ),
        kubectl_path=resolve_kubectl(kubectl_bin, environ),
    )


def operator_image_of(rendered: str) -> str:
    """The operator Deployment's image in a `kubectl kustomize` rendering."""
    for doc in yaml.safe_load_all(rendered):
        if doc and (doc["kind"], doc["metadata"]["name"]) == ("Deployment", OPERATOR_DEPLOYMENT):
            return str(doc["spec"]["template"]["spec"]["containers"][0]["image"])
    raise LookupError(f"no Deployment {OPERATOR_DEPLOYMENT} in the rendering")


def small_tuning(
    name: str, namespace: str, trainer_image: str | None = None, **budget: int
) -> dict[str, Any]:
    """Two one-epoch trials (or the `budget` given): the story, small enough for a hosted runner.

    Without `trainer_image` the trials run the operator's default trial image.
    """
    trial: dict[str, Any] = {
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
        "timeoutSeconds": 1200,
    }
    if trainer_image is not None:
        trial["image"] = trainer_image
    return {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "objective": {"metric": "accuracy"},
            "algorithm": {"name": "random", "seed": 7},
            "budget": {"maxTrials": 2, "parallelTrials": 2, "maxFailedTrials": 1, **budget},
            "search": {
                "learningRate": {"min": 0.01, "max": 0.1, "scale": "log"},
                "momentum": {"min": 0.5, "max": 0.9},
            },
            "fixed": {"epochs": 1, "batchSize": 128},
            "trial": trial,
        },
    }


def table_row(table: str, name: str) -> dict[str, str]:
    """The row for `name` in `kubectl get` output, keyed by the header's column names."""
    lines = [line for line in table.splitlines() if line.strip()]
    header = lines[0]
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    columns = [header[a:b].strip() for a, b in bounds]
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in bounds]
        if cells[0] == name:
            return dict(zip(columns, cells, strict=True))
    raise LookupError(f"no row {name!r} in:\n{table}")
