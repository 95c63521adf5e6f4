"""The e2e tier's code path up to kind cluster creation, on a machine without Docker.

The Docker probe talks to real sockets: a missing one, a closed TCP port, and small servers
that answer the Engine API's `GET /_ping` the way an engine does (or does not).
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mnist_tuning.api.spec import MnistTuning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import kindcluster
from kindcluster import (
    KIND_MODULE,
    KIND_VERSION,
    ClusterUnavailableError,
    cluster_before_creation,
    docker_problem,
    kind_install_command,
    operator_image_of,
    resolve_kind,
    resolve_kubectl,
    small_tuning,
    table_row,
)

PING_OK = b"HTTP/1.1 200 OK\r\nApi-Version: 1.47\r\nContent-Length: 2\r\n\r\nOK"
PING_ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nerror"


def serve_once(reply: bytes, path: Path) -> Iterator[str]:
    """Listen on a unix socket at `path`; answer one request with `reply`; yield DOCKER_HOST."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    requests: list[bytes] = []

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            requests.append(conn.recv(4096))
            conn.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield f"unix://{path}"
    thread.join(timeout=5)
    server.close()
    assert requests, "the probe never sent a request"
    assert requests[0].startswith(b"GET /_ping HTTP/1.")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[str]:
    yield from serve_once(PING_OK, tmp_path / "docker.sock")


@pytest.fixture
def broken_engine(tmp_path: Path) -> Iterator[str]:
    yield from serve_once(PING_ERROR, tmp_path / "docker.sock")


@pytest.fixture
def executable(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "tool"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_a_missing_socket_is_a_reason_naming_the_address(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/absent.sock"
    problem = docker_problem({"DOCKER_HOST": host})
    assert problem is not None
    assert host in problem


def test_a_closed_tcp_port_is_a_reason() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    problem = docker_problem({"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}, timeout=1)
    assert problem is not None
    assert f"127.0.0.1:{port}" in problem


def test_an_unusable_docker_host_is_named() -> None:
    problem = docker_problem({"DOCKER_HOST": "ssh://builder@example"})
    assert problem is not None
    assert "ssh://builder@example" in problem


def test_an_engine_answering_ping_is_reachable(engine: str) -> None:
    assert docker_problem({"DOCKER_HOST": engine}) is None


def test_an_engine_answering_ping_with_an_error_is_a_reason(broken_engine: str) -> None:
    problem = docker_problem({"DOCKER_HOST": broken_engine})
    assert problem is not None
    assert "500" in problem


def test_without_an_engine_the_fixture_path_stops_before_any_tool_is_resolved(
    tmp_path: Path,
) -> None:
    environ = {"DOCKER_HOST": f"unix://{tmp_path}/absent.sock", "PATH": ""}
    with pytest.raises(ClusterUnavailableError, match="no Docker engine reachable"):
        cluster_before_creation("e2e", tmp_path, environ, kind_bin=str(tmp_path / "nope"))


def test_with_an_engine_the_fixture_path_yields_a_cluster_ready_to_create(
    engine: str, executable: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # pytest-kind keeps its state under ./.pytest-kind
    environ = {"DOCKER_HOST": engine, "PATH": ""}
    cluster = cluster_before_creation(
        "mnist-e2e",
        tmp_path,
        environ,
        kind_bin=str(executable),
        kubectl_bin=str(executable),
        node_image="kindest/node:v1.34.0",
    )
    assert cluster.name == "mnist-e2e"
    assert (cluster.kind_path, cluster.kubectl_path) == (executable, executable)
    assert cluster.kubeconfig_path == tmp_path / "kubeconfig"
    assert cluster.image == "kindest/node:v1.34.0"
    assert not cluster.kubeconfig_path.exists(), "nothing is created before create()"


def test_an_explicit_kind_bin_must_be_executable(tmp_path: Path) -> None:
    with pytest.raises(ClusterUnavailableError, match="--kind-bin"):
        resolve_kind(str(tmp_path / "kind"), {})


def test_kind_is_built_from_its_go_module_at_the_pinned_version() -> None:
    assert kind_install_command("go") == ["go", "install", f"{KIND_MODULE}@{KIND_VERSION}"]


def test_without_go_or_a_cached_kind_the_reason_says_so(tmp_path: Path) -> None:
    environ = {"MNIST_TUNING_CACHE": str(tmp_path), "PATH": ""}
    with pytest.raises(ClusterUnavailableError, match="Go is needed"):
        resolve_kind(None, environ)


def test_a_cached_kind_is_reused_without_go(tmp_path: Path, executable: Path) -> None:
    slot = tmp_path / "bin" / f"kind-{KIND_VERSION}"
    slot.mkdir(parents=True)
    executable.rename(slot / "kind")
    assert resolve_kind(None, {"MNIST_TUNING_CACHE": str(tmp_path), "PATH": ""}) == slot / "kind"


def test_kubectl_comes_from_the_option_then_path(executable: Path, tmp_path: Path) -> None:
    assert resolve_kubectl(str(executable), {"PATH": ""}) == executable
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "kubectl").write_bytes(executable.read_bytes())
    (on_path / "kubectl").chmod(0o755)
    assert resolve_kubectl(None, {"PATH": str(on_path)}) == on_path / "kubectl"


def test_the_operator_image_is_read_from_the_rendered_deployment() -> None:
    rendered = yaml.safe_dump_all(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mnist-tuning-system"}},
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": kindcluster.OPERATOR_DEPLOYMENT},
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [{"name": "operator", "image": "op:0.1.0"}],
                        }
                    }
                },
            },
        ]
    )
    assert operator_image_of(rendered) == "op:0.1.0"
    with pytest.raises(LookupError):
        operator_image_of("kind: Namespace\nmetadata: {name: x}\n")


def test_the_operator_deployment_the_suite_waits_for_exists_in_deploy() -> None:
    deployment = yaml.safe_load(
        (kindcluster.REPO_ROOT / "deploy" / "operator" / "deployment.yaml").read_text()
    )
    assert deployment["metadata"]["name"] == kindcluster.OPERATOR_DEPLOYMENT


def test_the_e2e_tuning_is_a_valid_small_mnist_tuning() -> None:
    manifest = small_tuning("e2e", "mnist-e2e", "mnist-trainer:e2e")
    tuning = MnistTuning.model_validate(manifest)
    assert tuning.spec.budget.max_trials <= 2
    assert tuning.spec.trial.image == "mnist-trainer:e2e"


def test_a_kubectl_table_row_is_read_by_its_column_names() -> None:
    table = (
        "NAME    PHASE       ACCURACY   LEARNING-RATE   PROGRESS   AGE\n"
        "other   Running                               0/4        2m\n"
        "e2e     Succeeded   0.9712     0.0412589       2/2        9m\n"
    )
    row = table_row(table, "e2e")
    assert row == {
        "NAME": "e2e",
        "PHASE": "Succeeded",
        "ACCURACY": "0.9712",
        "LEARNING-RATE": "0.0412589",
        "PROGRESS": "2/2",
        "AGE": "9m",
    }
    assert table_row(table, "other")["ACCURACY"] == ""
    with pytest.raises(LookupError):
        table_row(table, "absent")
