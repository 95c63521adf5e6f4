"""deploy/: every kustomize base renders, and the API server takes what it renders.

deploy/katib pulls Katib's own manifests from GitHub at build time, which this machine cannot
reach; its pin is checked as text and its rendering is left to the e2e tier.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from launcher import REPO_ROOT, ControlPlane
from node.product import OPERATOR_DEPLOYMENT, TRIAL_IMAGE_ENV, write_overlay

DEPLOY = REPO_ROOT / "deploy"
KATIB_BASE = "github.com/kubeflow/katib.git/manifests/v1beta1/installs/katib-standalone?ref=v0.19.0"


def render(plane: ControlPlane, base: str) -> list[dict[str, Any]]:
    out = plane.run_kubectl("kustomize", str(DEPLOY / base)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.mark.parametrize("base", ["operator", "crds", "default"])
def test_base_renders_and_the_api_server_accepts_it(control_plane: ControlPlane, base: str) -> None:
    docs = render(control_plane, base)
    assert docs
    # A real apply (a dry run cannot create the namespace the rest goes into); the same objects
    # are what the operator tests run under, so applying them twice changes nothing.
    result = control_plane.run_kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input_text=yaml.safe_dump_all(docs),
    )
    assert "would violate PodSecurity" not in result.stderr, result.stderr


def test_crds_base_is_the_generated_crd_itself(control_plane: ControlPlane) -> None:
    (crd,) = render(control_plane, "crds")
    assert crd == yaml.safe_load((REPO_ROOT / "crds" / "mnisttuning.yaml").read_text())


def test_default_composes_the_crd_and_the_operator(control_plane: ControlPlane) -> None:
    kinds = sorted(doc["kind"] for doc in render(control_plane, "default"))
    assert kinds == sorted(
        ["CustomResourceDefinition"] + [doc["kind"] for doc in render(control_plane, "operator")]
    )


def test_operator_deployment_is_locked_down(control_plane: ControlPlane) -> None:
    (deployment,) = by_kind(render(control_plane, "operator"), "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"requests", "limits"} <= set(container["resources"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {item["name"]: item["value"] for item in container["env"]}
    assert all(name.startswith("MNIST_TUNING_") for name in env)


def test_operator_role_grants_no_secrets_and_no_wildcards(control_plane: ControlPlane) -> None:
    roles = by_kind(render(control_plane, "operator"), "ClusterRole")
    (operator_role,) = [r for r in roles if r["metadata"]["name"] == "mnist-tuning-operator"]
    for rule in operator_role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert "secrets" not in rule["resources"], rule


def test_user_roles_aggregate_into_edit_and_view(control_plane: ControlPlane) -> None:
    roles = {
        r["metadata"]["name"]: r for r in by_kind(render(control_plane, "operator"), "ClusterRole")
    }
    edit = roles["mnist-tuning-edit"]["metadata"]["labels"]
    view = roles["mnist-tuning-view"]["metadata"]["labels"]
    assert edit["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    # Users read status but never write it: it is the operator's.
    for rule in roles["mnist-tuning-edit"]["rules"]:
        if "mnisttunings/status" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_katib_base_is_upstream_standalone_pinned_to_v0_19_0() -> None:
    kustomization = yaml.safe_load((DEPLOY / "katib" / "kustomization.yaml").read_text())
    assert kustomization["resources"] == [KATIB_BASE]


def test_operator_image_has_no_pytorch_and_runs_as_non_root() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile.operator").read_text()
    assert '".[operator]"' in dockerfile
    assert "torch" not in dockerfile
    final_stage = dockerfile.rsplit("FROM ", 1)[1]
    assert "USER 65532:65532" in final_stage


def test_the_local_images_overlay_changes_only_the_two_image_names(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    overlay = write_overlay(REPO_ROOT, tmp_path, "localhost/op:abc123", "localhost/trainer:def456")
    upstream = {(d["kind"], d["metadata"]["name"]): d for d in render(control_plane, "default")}
    out = control_plane.run_kubectl("kustomize", str(overlay)).stdout
    ours = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out) if d}
    key = ("Deployment", OPERATOR_DEPLOYMENT)
    assert set(ours) == set(upstream)
    assert {k for k in ours if ours[k] != upstream[k]} == {key}
    [container] = ours[key]["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "localhost/op:abc123"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[TRIAL_IMAGE_ENV] == "localhost/trainer:def456"
    [before] = upstream[key]["spec"]["template"]["spec"]["containers"]
    before_env = {e["name"]: e.get("value") for e in before["env"]}
    assert {k: v for k, v in env.items() if k != TRIAL_IMAGE_ENV} == {
        k: v for k, v in before_env.items() if k != TRIAL_IMAGE_ENV
    }
    assert {k: v for k, v in container.items() if k not in ("image", "env")} == {
        k: v for k, v in before.items() if k not in ("image", "env")
    }
