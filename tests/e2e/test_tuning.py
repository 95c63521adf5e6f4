"""The whole story on a real cluster: kind, Katib v0.19.0, both images, the operator, a tuning.

Runs in .github/workflows/e2e.yaml on a hosted runner; without a Docker engine the session's
`kind_cluster` fixture skips every test here with the reason.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from kindcluster import (
    KATIB_INJECTION_LABEL,
    KATIB_NAMESPACE,
    OPERATOR_DEPLOYMENT,
    REPO_ROOT,
    operator_image_of,
    small_tuning,
    table_row,
)
from pytest_kind import KindCluster

NAMESPACE = "mnist-e2e"
TUNING = "e2e"
TRAINER_IMAGE = "mnist-trainer:e2e"
OPERATOR_NAMESPACE = "mnist-tuning-system"
# A hosted runner trains two one-epoch trials side by side in a few minutes; Katib's images and
# MySQL take a few more to come up.
TUNING_DEADLINE_S = 30 * 60


def wait_until(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(5)


def as_number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def docker(*args: str) -> None:
    subprocess.run(["docker", *args], cwd=REPO_ROOT, check=True)


@pytest.fixture(scope="module")
def cluster(kind_cluster: KindCluster) -> KindCluster:
    """Katib installed and ready, both images loaded, the operator deployed and rolled out."""
    kind_cluster.kubectl("apply", "--server-side", "-k", str(REPO_ROOT / "deploy" / "katib"))
    kind_cluster.kubectl(
        "wait", "deployment", "--all", "-n", KATIB_NAMESPACE,
        "--for=condition=Available", "--timeout=900s",
    )  # fmt: skip
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": {KATIB_INJECTION_LABEL: "enabled"}},
    }
    kind_cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(namespace))

    default = str(REPO_ROOT / "deploy" / "default")
    operator_image = operator_image_of(kind_cluster.kubectl("kustomize", default))
    images = {"Dockerfile.operator": operator_image, "Dockerfile.trainer": TRAINER_IMAGE}
    for dockerfile, image in images.items():
        docker("build", "--platform", "linux/amd64", "-f", dockerfile, "-t", image, ".")
        kind_cluster.load_docker_image(image)

    kind_cluster.kubectl("apply", "--server-side", "-k", default)
    kind_cluster.kubectl(
        "rollout", "status", f"deployment/{OPERATOR_DEPLOYMENT}", "-n", OPERATOR_NAMESPACE,
        "--timeout=300s",
    )  # fmt: skip
    return kind_cluster


def get_json(cluster: KindCluster, *args: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kubectl("get", *args, "-n", NAMESPACE, "-o", "json")))


def names(cluster: KindCluster, kind: str, *selector: str) -> list[str]:
    out = cluster.kubectl("get", kind, *selector, "-n", NAMESPACE, "-o", "name")
    return out.split()


@pytest.fixture(scope="module")
def finished(cluster: KindCluster) -> dict[str, Any]:
    """The small tuning, applied and followed until it ends; its final object."""
    cluster.kubectl(
        "apply", "-f", "-", input=yaml.safe_dump(small_tuning(TUNING, NAMESPACE, TRAINER_IMAGE))
    )

    def ended() -> bool:
        phase = get_json(cluster, "mnisttuning", TUNING).get("status", {}).get("phase")
        return phase in ("Succeeded", "Failed")

    try:
        wait_until(ended, f"MnistTuning {TUNING} to finish", TUNING_DEADLINE_S)
    finally:
        print(cluster.kubectl("get", "mnisttunings,experiments,trials,pods", "-n", NAMESPACE))
        operator = f"deployment/{OPERATOR_DEPLOYMENT}"
        print(cluster.kubectl("logs", operator, "-n", OPERATOR_NAMESPACE, "--tail=50"))
    return get_json(cluster, "mnisttuning", TUNING)


def test_the_tuning_succeeds_with_numeric_best_hyperparameters_in_range(
    finished: dict[str, Any],
) -> None:
    status = finished["status"]
    assert status["phase"] == "Succeeded", yaml.safe_dump(status)
    assert status["observedGeneration"] == finished["metadata"]["generation"]
    best = status["best"]["hyperparameters"]
    search = finished["spec"]["search"]
    for name in ("learningRate", "momentum"):
        assert isinstance(best[name], float), f"{name} is {best[name]!r}, not a number"
        assert search[name]["min"] <= best[name] <= search[name]["max"]
    assert 0.0 <= status["best"]["accuracy"] <= 1.0


def test_kubectl_get_shows_the_best_hyperparameters(
    cluster: KindCluster, finished: dict[str, Any]
) -> None:
    row = table_row(cluster.kubectl("get", "mnisttunings", "-n", NAMESPACE), TUNING)
    assert row["PHASE"] == "Succeeded"
    best = finished["status"]["best"]
    printed = [number for cell in row.values() if (number := as_number(cell)) is not None]
    for value in (best["hyperparameters"]["learningRate"], best["accuracy"]):
        assert any(math.isclose(value, shown, rel_tol=1e-6) for shown in printed), (value, row)


def test_deleting_the_tuning_removes_its_experiment_and_trials(
    cluster: KindCluster, finished: dict[str, Any]
) -> None:
    experiment = finished["status"]["experiment"]
    selector = f"-l=katib.kubeflow.org/experiment={experiment}"
    assert names(cluster, "experiments", f"--field-selector=metadata.name={experiment}")
    assert names(cluster, "trials", selector)

    cluster.kubectl("delete", "mnisttuning", TUNING, "-n", NAMESPACE, "--timeout=120s")

    def gone() -> bool:
        return not names(cluster, "trials", selector) and not names(
            cluster, "experiments", f"--field-selector=metadata.name={experiment}"
        )

    wait_until(gone, f"Experiment {experiment} and its trials to be deleted", 300)
