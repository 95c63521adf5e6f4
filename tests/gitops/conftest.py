"""Fixtures of the gitops tier: Argo CD on the session's node, serving this checkout from Git.

The tier runs before every other tier that uses the node (tests/conftest.py orders it), so
Argo CD meets a node with nothing but its own objects and installs Katib, the operator and the
tunings itself; the e2e and node tiers then share that Katib. Argo CD stops when the story's
module ends, leaving what it installed in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import launcher
import pytest
from node import gitops
from node.node import RunningNode
from records import TUNING_NAMESPACES, Synced
from watch import watching


@pytest.fixture(scope="module")
def argocd(
    node: RunningNode, mnist_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Synced]:
    """Argo CD and the Git server started, the root Application applied, Applications watched."""
    clone = tmp_path_factory.mktemp("gitops") / "repo"
    try:
        served = gitops.start(node, launcher.DEFAULT_BIN_DIR, launcher.REPO_ROOT, mnist_root, clone)
    except gitops.NodeError as error:
        pytest.fail(str(error), pytrace=False)
    kubectl = [str(node.layout.bin / "kubectl"), f"--kubeconfig={node.layout.kubeconfig}"]
    with watching(kubectl, "applications", gitops.NAMESPACE) as applications:
        served.apply_root()
        yield Synced(served, applications)
    gitops.stop(node)
    # What the tier's tunings keep running (LongRunning suggestions) would take the node's CPU
    # requests from the tiers after it.
    node.kubectl("delete", "namespace", *TUNING_NAMESPACES, "--wait=false", check=False)
