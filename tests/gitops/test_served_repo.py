"""The repository Argo CD syncs on our node is this checkout, changed only where an offline
single node must change it (`gitops.SERVED_CHANGES`, listed in docs/gitops.md).

Rendered into a temporary folder, with Katib's manifests from the module `build.sh node` left
beside the binaries, and compared file by file with the checkout.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import launcher
import pytest
import yaml
from node import gitops
from node.katib import manifests_dir

URL = "http://127.0.0.1:9/mnist-tuning.git"
OPERATOR_IMAGE = "localhost/mnist-tuning/operator:abc"
TRAINER_IMAGE = "localhost/mnist-tuning/trainer:def"
KATIB_APPLICATION = "deploy/argocd/apps/katib.yaml"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    manifests = manifests_dir(launcher.DEFAULT_BIN_DIR)
    if not manifests.is_dir():
        pytest.fail(f"no Katib manifests in {manifests}; run `make node-binaries`", pytrace=False)
    target = tmp_path_factory.mktemp("served") / "repo"
    gitops.write_served_tree(
        launcher.REPO_ROOT,
        target,
        url=URL,
        katib_manifests=manifests,
        mysql_volume=Path("/var/lib/katib-mysql"),
        operator_image=OPERATOR_IMAGE,
        trainer_image=TRAINER_IMAGE,
    )
    return target


def served_files(tree: Path) -> set[str]:
    return {str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()}


def test_only_the_applications_differ_and_only_the_node_overlays_are_added(tree: Path) -> None:
    ours = set(gitops.project_files(launcher.REPO_ROOT))
    served = served_files(tree)
    assert ours <= served
    added = served - ours
    assert added
    assert all(name.startswith("deploy/node/") for name in added), sorted(added)[:5]
    changed = {n for n in ours if not filecmp.cmp(launcher.REPO_ROOT / n, tree / n, shallow=False)}
    assert changed == set(gitops.SERVED_CHANGES)


@pytest.mark.parametrize("name", sorted(gitops.SERVED_CHANGES))
def test_each_application_changes_its_source_and_nothing_else(tree: Path, name: str) -> None:
    before = yaml.safe_load((launcher.REPO_ROOT / name).read_text())
    after = yaml.safe_load((tree / name).read_text())
    source, wanted = after["spec"].pop("source"), before["spec"].pop("source")
    if name == KATIB_APPLICATION:  # less its katib-config patch: the node's overlay has it
        patches = wanted["kustomize"]["patches"]
        configs = [p for p in patches if yaml.safe_load(p["patch"])["kind"] == "ConfigMap"]
        assert len(configs) == 1
        wanted["kustomize"]["patches"] = [p for p in patches if p not in configs]
    assert source == {**wanted, "repoURL": URL, **gitops.SERVED_CHANGES[name]}
    assert after == before
    # Comments stay (but the left-out patch's): a person reading the served file reads ours.
    lines = [line for line in (launcher.REPO_ROOT / name).read_text().splitlines() if "#" in line]
    missing = [line for line in lines if line not in (tree / name).read_text()]
    assert all("katib-config.yaml" in line for line in missing), missing


def test_the_overlays_render_katib_and_the_operator_with_the_images_built_here(tree: Path) -> None:
    katib = launcher.kustomize(tree / gitops.KATIB_PATH)
    assert {"katib-controller", "katib-db-manager", "katib-mysql"} <= {
        d["metadata"]["name"] for d in katib if d["kind"] == "Deployment"
    }
    operator = launcher.kustomize(tree / gitops.OPERATOR_PATH)
    [deployment] = [d for d in operator if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == OPERATOR_IMAGE
    assert {"name": "MNIST_TUNING_TRIAL_IMAGE", "value": TRAINER_IMAGE} in container["env"]
