"""The e2e tier's cluster: kind where a Docker engine answers, else our single-node Kubernetes.

`e2e_cluster` picks the provider once per session. With Docker (the GitHub workflow) it creates
a kind cluster through pytest-kind-ng's `kind_cluster` fixture (overridden here so kind is built
from the Go module proxy; its options --cluster-name, --keep-cluster, --kind-image, --kind-bin
and --kind-kubectl-bin still apply), installs Katib from deploy/katib and builds both images
with `docker build`. Without Docker it takes the session's node with real Katib
(tests/conftest.py) and builds both images with buildah (tests/harness/node/builds.py). Either
way the operator is applied from deploy/default with the images built in this run. A machine
that is not root and has no Docker engine skips the tier with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_kind import KindCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kindcluster import (
    KATIB_NAMESPACE,
    REPO_ROOT,
    ClusterUnavailableError,
    cluster_before_creation,
    docker_problem,
    operator_image_of,
)
from node import product
from node.node import RunningNode
from providers import E2ECluster

KIND_TRAINER_IMAGE = "mnist-trainer:e2e"


@pytest.fixture(scope="session")
def kind_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KindCluster]:
    option = request.config.getoption
    try:
        cluster = cluster_before_creation(
            option("cluster_name"),
            tmp_path_factory.mktemp("kind"),
            os.environ,
            kind_bin=option("kind_bin"),
            kubectl_bin=option("kind_kubectl_bin"),
            node_image=option("kind_image"),
        )
    except ClusterUnavailableError as reason:
        # Only asked for where a Docker engine answers: kind must then work.
        pytest.fail(f"the e2e tier cannot create its kind cluster: {reason}", pytrace=False)
    cluster.create()
    yield cluster
    if not option("keep_cluster"):
        cluster.delete()


def on_kind(kind: KindCluster, work: Path) -> E2ECluster:
    """Katib from deploy/katib, both images built by Docker and loaded, the operator rolled out."""
    kind.kubectl("apply", "--server-side", "-k", str(REPO_ROOT / "deploy" / "katib"))
    kind.kubectl(
        "wait", "deployment", "--all", "-n", KATIB_NAMESPACE,
        "--for=condition=Available", "--timeout=900s",
    )  # fmt: skip
    operator_image = operator_image_of(kind.kubectl("kustomize", str(REPO_ROOT / "deploy/default")))
    built = {"Dockerfile.operator": operator_image, "Dockerfile.trainer": KIND_TRAINER_IMAGE}
    for dockerfile, image in built.items():
        subprocess.run(
            ["docker", "build", "--platform", "linux/amd64", "-f", dockerfile, "-t", image, "."],
            cwd=REPO_ROOT,
            check=True,
        )
        kind.load_docker_image(image)
    overlay = product.write_overlay(REPO_ROOT, work, operator_image, KIND_TRAINER_IMAGE)
    kind.kubectl("apply", "--server-side", "-k", str(overlay))
    kind.kubectl(
        "rollout", "status", f"deployment/{product.OPERATOR_DEPLOYMENT}",
        "-n", product.OPERATOR_NAMESPACE, "--timeout=300s",
    )  # fmt: skip
    bin_dir = work / "bin"  # E2ECluster runs bin_dir/kubectl, whatever --kind-kubectl-bin is named
    bin_dir.mkdir()
    (bin_dir / "kubectl").symlink_to(kind.kubectl_path.resolve())
    return E2ECluster("kind", bin_dir, kind.kubeconfig_path)


def on_node(node: RunningNode, mnist_root: Path) -> E2ECluster:
    """Both images built here with buildah and imported, the operator rolled out."""
    product.install(node, REPO_ROOT, mnist_root)
    return E2ECluster("node", node.layout.bin, node.layout.kubeconfig, node.layout.root)


@pytest.fixture(scope="session")
def e2e_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> E2ECluster:
    """Real Katib, both images of this tree and the operator, on kind or on our node."""
    if docker_problem(os.environ) is None:
        kind = request.getfixturevalue("kind_cluster")
        return on_kind(kind, tmp_path_factory.mktemp("operator"))
    if os.geteuid() != 0:
        pytest.skip("the e2e tier needs a Docker engine (kind) or root (our node)")
    node = request.getfixturevalue("katib_node")
    return on_node(node, request.getfixturevalue("mnist_root"))


@pytest.fixture(scope="module")
def namespaces(e2e_cluster: E2ECluster) -> Iterator[list[str]]:
    """The namespaces this module made (appended by the scenarios); deleted at its end."""
    made: list[str] = []
    yield made
    for name in made:
        e2e_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
