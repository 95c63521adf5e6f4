"""Our product on the node: the two images built from our Dockerfiles, the operator from kustomize.

`install()` imports the trainer and operator images (`node.builds` makes them with buildah) and
applies `deploy/default` through an overlay that changes two things only: the operator's image
is the one built here, and so is the default trial image the operator puts in Experiments. A
tuning applied afterwards (`kubectl apply -f deploy/samples/quick.yaml`) needs nothing else.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from node import builds, images
from node.node import RunningNode

OPERATOR_NAMESPACE = "mnist-tuning-system"
OPERATOR_DEPLOYMENT = "mnist-tuning-operator"
# The image name deploy/operator's Deployment uses, which kustomize's `images` rewrites.
OPERATOR_IMAGE_NAME = "mnist-tuning-operator"
TRIAL_IMAGE_ENV = "MNIST_TUNING_TRIAL_IMAGE"
# What the overlay copies: deploy/default and the folders its resources reach.
DEPLOY_SOURCES = ("deploy/default", "deploy/crds", "deploy/operator", "crds")


def trial_image_patch(trainer_image: str) -> dict[str, Any]:
    """A strategic-merge patch setting the operator's default trial image."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": OPERATOR_DEPLOYMENT, "namespace": OPERATOR_NAMESPACE},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "operator",
                            "env": [{"name": TRIAL_IMAGE_ENV, "value": trainer_image}],
                        }
                    ]
                }
            }
        },
    }


def operator_kustomization(
    operator_image: str, trainer_image: str, base: str = "../src/deploy/default"
) -> dict[str, Any]:
    """The overlay over deploy/default (by default copied beside it as `src/`) with our images."""
    name, _, tag = operator_image.rpartition(":")
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [base],
        "images": [{"name": OPERATOR_IMAGE_NAME, "newName": name, "newTag": tag}],
        "patches": [{"patch": yaml.safe_dump(trial_image_patch(trainer_image))}],
    }


def write_overlay(repo_root: Path, target: Path, operator_image: str, trainer_image: str) -> Path:
    """Copy deploy/default's sources under `target` and write the overlay beside them."""
    shutil.rmtree(target, ignore_errors=True)
    for source in DEPLOY_SOURCES:
        shutil.copytree(repo_root / source, target / "src" / source)
    overlay = target / "local-images"
    overlay.mkdir()
    kustomization = operator_kustomization(operator_image, trainer_image)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return overlay


def import_images(node: RunningNode, repo_root: Path, data_dir: Path) -> tuple[str, str]:
    """Build (or take from the cache) both images, import them; their names, operator first."""
    built = builds.build_archives(repo_root, data_dir)
    for archive in built.values():
        images.import_archive(["ctr"], archive)
    # The names the archives were built under: the tree may change while a build runs.
    [operator] = [n for n in built if n.startswith(f"{builds.OPERATOR.repository}:")]
    [trainer] = [n for n in built if n.startswith(f"{builds.TRAINER.repository}:")]
    return operator, trainer


def deploy_operator(
    node: RunningNode, repo_root: Path, operator_image: str, trainer_image: str
) -> None:
    """Apply the CRD and the operator with the given images; wait until it has rolled out."""
    overlay = write_overlay(repo_root, node.layout.root / "operator", operator_image, trainer_image)
    node.kubectl("apply", "--server-side", "-k", str(overlay), timeout=300)
    node.rollout(OPERATOR_DEPLOYMENT, OPERATOR_NAMESPACE)


def install(node: RunningNode, repo_root: Path, data_dir: Path) -> str:
    """Both images on the node, the CRD and the operator running with them; the trial image."""
    operator, trainer = import_images(node, repo_root, data_dir)
    deploy_operator(node, repo_root, operator, trainer)
    return trainer
