"""The test control plane itself: real servers, real RBAC, real controllers, Katib's CRDs.

These tests do not need our CRD; they prove that what the operator tests stand on behaves like
a cluster: versions are what we built, the controller manager collects garbage and finishes
namespace deletion, ServiceAccount tokens are subject to RBAC, and the Katib stand-in writes
Experiment status in Katib's shapes through the status subresource.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import launcher
import pytest
import yaml
from katib_standin import KATIB_INJECTION_LABEL, KatibStandIn
from launcher import ControlPlane


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def experiment(name: str, namespace: str, owner: dict[str, str] | None = None) -> str:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if owner:
        metadata["ownerReferences"] = [{**owner, "controller": True, "blockOwnerDeletion": True}]
    return yaml.safe_dump(
        {
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Experiment",
            "metadata": metadata,
            "spec": {"maxTrialCount": 3, "parallelTrialCount": 1},
        }
    )


def test_servers_report_the_version_we_built(control_plane: ControlPlane) -> None:
    versions = json.loads(control_plane.run_kubectl("version", "-o", "json").stdout)
    kubernetes_go_mod = (launcher.REPO_ROOT / "tests/harness/kubernetes/go.mod").read_text()
    built = next(
        line.split()[-1]
        for line in kubernetes_go_mod.splitlines()
        if line.startswith("require k8s.io/kubernetes ")
    )
    assert versions["clientVersion"]["gitVersion"] == built
    assert versions["serverVersion"]["gitVersion"] == built


def test_katib_crds_are_served(control_plane: ControlPlane) -> None:
    resources = control_plane.run_kubectl("api-resources", "--api-group=kubeflow.org", "-o", "name")
    assert set(resources.stdout.split()) >= {
        "experiments.kubeflow.org",
        "trials.kubeflow.org",
        "suggestions.kubeflow.org",
    }


def test_namespace_fixture_is_enabled_for_katib(
    control_plane: ControlPlane, namespace: str
) -> None:
    labels = control_plane.run_kubectl(
        "get", "namespace", namespace, "-o", "jsonpath={.metadata.labels}"
    )
    assert json.loads(labels.stdout)[KATIB_INJECTION_LABEL] == "enabled"


def test_deleting_a_namespace_completes(control_plane: ControlPlane) -> None:
    name = "doomed-namespace"
    control_plane.run_kubectl("create", "namespace", name)
    control_plane.apply(experiment("doomed", name))
    control_plane.run_kubectl("create", "configmap", "doomed", "-n", name)
    control_plane.run_kubectl("delete", "namespace", name, "--timeout=90s")
    gone = control_plane.run_kubectl("get", "namespace", name, check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def test_garbage_collector_deletes_owned_custom_resources(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.run_kubectl("create", "configmap", "owner", "-n", namespace)
    uid = control_plane.run_kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
    control_plane.apply(experiment("owned", namespace, owner))
    control_plane.apply(experiment("unowned", namespace))
    control_plane.run_kubectl("delete", "configmap", "owner", "-n", namespace)

    def owned_is_gone() -> bool:
        result = control_plane.run_kubectl(
            "get", "experiments", "owned", "-n", namespace, check=False
        )
        return result.returncode != 0 and "NotFound" in result.stderr

    wait_for(owned_is_gone, "the garbage collector to delete the owned Experiment", 90)
    control_plane.run_kubectl("get", "experiments", "unowned", "-n", namespace)


def test_service_account_tokens_are_subject_to_rbac(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.run_kubectl("create", "serviceaccount", "reader", "-n", namespace)
    kubeconfig = control_plane.kubeconfig_for_service_account(namespace, "reader")
    who = control_plane.run_kubectl(
        "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", kubeconfig=kubeconfig
    )
    assert who.stdout == f"system:serviceaccount:{namespace}:reader"
    denied = control_plane.run_kubectl(
        "get", "experiments", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr

    control_plane.run_kubectl(
        "create", "role", "read-experiments", "-n", namespace,
        "--verb=get,list", "--resource=experiments.kubeflow.org",
    )  # fmt: skip
    control_plane.run_kubectl(
        "create", "rolebinding", "reader", "-n", namespace,
        "--role=read-experiments", f"--serviceaccount={namespace}:reader",
    )  # fmt: skip
    allowed = control_plane.run_kubectl(
        "get", "experiments", "-n", namespace, kubeconfig=kubeconfig
    )
    assert allowed.returncode == 0
    still_denied = control_plane.run_kubectl(
        "get", "configmaps", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert "forbidden" in still_denied.stderr


def test_katib_stand_in_moves_an_experiment_through_katib_status_shapes(
    control_plane: ControlPlane, namespace: str, katib: KatibStandIn
) -> None:
    control_plane.apply(experiment("lifecycle", namespace))
    katib.create(namespace, "lifecycle")
    status = katib.status(namespace, "lifecycle")
    assert [c["type"] for c in status["conditions"]] == ["Created"]
    assert status["currentOptimalTrial"] == {"observation": {}}
    assert "trials" not in status

    katib.run(namespace, "lifecycle", running=["lifecycle-a"], pending=["lifecycle-b"])
    katib.report_best(
        namespace,
        "lifecycle",
        "lifecycle-a",
        {"lr": "0.0312", "momentum": "0.83"},
        {"accuracy": ("0.91", "0.9712", "0.9712"), "loss": ("0.081", "0.31", "0.081")},
    )
    katib.finish(namespace, "lifecycle", "max-trials", succeeded=["lifecycle-a", "lifecycle-b"])

    final = katib.get(namespace, "lifecycle")
    status = final["status"]
    assert final["spec"] == {"maxTrialCount": 3, "parallelTrialCount": 1}
    assert [(c["type"], c["status"], c["reason"]) for c in status["conditions"]] == [
        ("Created", "True", "ExperimentCreated"),
        ("Running", "False", "ExperimentRunning"),
        ("Succeeded", "True", "ExperimentMaxTrialsReached"),
    ]
    assert status["trials"] == 2
    assert status["trialsSucceeded"] == 2
    for omitted in ("trialsRunning", "trialsPending", "trialsFailed", "runningTrialList"):
        assert omitted not in status
    optimal = status["currentOptimalTrial"]
    assert optimal["bestTrialName"] == "lifecycle-a"
    metrics = {m["name"]: m for m in optimal["observation"]["metrics"]}
    assert metrics["accuracy"] == {
        "name": "accuracy",
        "min": "0.91",
        "max": "0.9712",
        "latest": "0.9712",
    }
    assert status["completionTime"]
    printed = control_plane.run_kubectl("get", "experiments", "lifecycle", "-n", namespace)
    assert "Succeeded" in printed.stdout


def test_status_writes_do_not_touch_the_spec(
    control_plane: ControlPlane, namespace: str, katib: KatibStandIn
) -> None:
    control_plane.apply(experiment("spec-guard", namespace))
    patch = json.dumps({"spec": {"maxTrialCount": 99}, "status": {"trials": 1}})
    control_plane.run_kubectl(
        "patch", "experiments", "spec-guard", "-n", namespace,
        "--subresource=status", "--type=merge", "-p", patch,
    )  # fmt: skip
    current = katib.get(namespace, "spec-guard")
    assert current["spec"]["maxTrialCount"] == 3
    assert current["status"]["trials"] == 1


def test_cluster_up_and_down_leave_nothing_running(
    tmp_path: Path, control_plane: ControlPlane
) -> None:
    cluster = [sys.executable, str(launcher.REPO_ROOT / "tests/harness/cluster.py")]
    katib_crd = launcher.REPO_ROOT / ".cluster/crds/katib/experiment.yaml"
    up = subprocess.run(
        [*cluster, "up", "--dir", str(tmp_path), "--bin-dir", str(control_plane.bin_dir),
         "--crd", str(katib_crd)],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        running = launcher.read_state(tmp_path)
        assert running is not None
        kubeconfig = tmp_path / "kubeconfig"
        crds = launcher.kubectl(control_plane.bin_dir, kubeconfig, "get", "crds", "-o", "name")
        assert crds.stdout.split() == [
            "customresourcedefinition.apiextensions.k8s.io/experiments.kubeflow.org"
        ]
        again = subprocess.run(
            [*cluster, "up", "--dir", str(tmp_path), "--bin-dir", str(control_plane.bin_dir)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert again.returncode == 1
        assert "already runs" in again.stderr
    finally:
        down = subprocess.run(
            [*cluster, "down", "--dir", str(tmp_path)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert down.returncode == 0, down.stderr
    assert launcher.read_state(tmp_path) is None
    assert not (tmp_path / "kubeconfig").exists()
    leftovers = subprocess.run(
        ["pgrep", "-s", str(running.pid)], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""
