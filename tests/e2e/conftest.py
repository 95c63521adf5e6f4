"""The kind cluster for the e2e tier: created once per session, skipped without Docker.

Overrides pytest-kind-ng's `kind_cluster` fixture (its options --cluster-name, --keep-cluster,
--kind-image, --kind-bin and --kind-kubectl-bin still apply) so that a machine without a Docker
engine skips with the reason instead of failing, and kind is built from the Go module proxy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_kind import KindCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kindcluster import ClusterUnavailableError, cluster_before_creation


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
        pytest.skip(f"e2e tier needs a kind cluster: {reason}")
    cluster.create()
    yield cluster
    if not option("keep_cluster"):
        cluster.delete()
