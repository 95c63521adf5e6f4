"""The node's Katib install is Katib's own standalone install, changed only where it must be.

Both are rendered with the real kubectl's kustomize from the module's manifests (left beside
the binaries by `build.sh node`), and compared object by object.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import launcher
import pytest
import yaml
from mnist_tuning.api.expand import TRIAL_SECURITY_CONTEXT
from mnist_tuning.api.spec import ALGORITHMS
from node.katib import (
    EARLY_STOPPING_IMAGE,
    NAMESPACE,
    RESOURCES_PATCH,
    SERVED_BY_STAND_IN,
    SERVICES_IMAGE,
    SERVICES_MEMORY,
    manifests_dir,
    mariadb_image,
    users_katib_config,
    write_overlay,
)

Objects = dict[tuple[str, str], dict[str, Any]]
POD_WEBHOOK = "mutator.pod.katib.kubeflow.org"
COMPONENT_LABEL = "katib.kubeflow.org/component"  # on every Katib pod, on no trial's
# A suggestion's: the trial's, but in the image's own group (Katib's images are group 0's).
RESTRICTED_CONTAINER = {k: v for k, v in TRIAL_SECURITY_CONTEXT.items() if k != "runAsGroup"}


def users_requests() -> dict[str, dict[str, Any]]:
    """Deployment name → its container's resources, as deploy/katib/resources.yaml sets them."""
    return {
        patch["metadata"]["name"]: patch["spec"]["template"]["spec"]["containers"][0]["resources"]
        for patch in yaml.safe_load_all(RESOURCES_PATCH.read_text())
    }


def rendered(directory: Path) -> Objects:
    return {(d["kind"], d["metadata"]["name"]): d for d in launcher.kustomize(directory)}


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Objects, Objects]:
    manifests = manifests_dir(launcher.DEFAULT_BIN_DIR)
    if not manifests.is_dir():
        pytest.fail(f"no Katib manifests in {manifests}; run `make node-binaries`", pytrace=False)
    target = tmp_path_factory.mktemp("katib")
    overlay = write_overlay(manifests, target, Path("/var/lib/katib-mysql"))
    upstream = rendered(target / "v1beta1" / "installs" / "katib-standalone")
    return upstream, rendered(overlay)


def test_the_overlay_drops_the_ui_and_adds_only_the_database_volume(
    both: tuple[Objects, Objects],
) -> None:
    upstream, ours = both
    assert {key for key in upstream if "katib-ui" in key[1]} == {
        ("ClusterRole", "katib-ui"),
        ("ClusterRoleBinding", "katib-ui"),
        ("Deployment", "katib-ui"),
        ("Service", "katib-ui"),
        ("ServiceAccount", "katib-ui"),
    }
    assert set(upstream) - set(ours) == {key for key in upstream if "katib-ui" in key[1]}
    assert set(ours) - set(upstream) == {("PersistentVolume", "katib-mysql")}
    volume = ours[("PersistentVolume", "katib-mysql")]["spec"]
    assert volume["claimRef"] == {"namespace": NAMESPACE, "name": "katib-mysql"}


def test_everything_else_is_katibs_except_the_database_image_requests_and_two_suggestions(
    both: tuple[Objects, Objects],
) -> None:
    upstream, ours = both
    changed = {key for key in set(upstream) & set(ours) if upstream[key] != ours[key]}
    webhooks = ("MutatingWebhookConfiguration", "katib.kubeflow.org")
    requests = users_requests()
    requested = {("Deployment", name) for name in requests}
    assert changed == {*requested, ("ConfigMap", "katib-config"), webhooks}

    # Katib's controller, DB manager and database request what deploy/katib's patch gives
    # users, and nothing else in their Deployments changes but the database's image.
    for key in requested:
        deployment = copy.deepcopy(ours[key])
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        [original] = upstream[key]["spec"]["template"]["spec"]["containers"]
        assert container.pop("resources") == requests[key[1]]
        if key[1] == "katib-mysql":
            assert container["image"] == mariadb_image()
            container["image"] = original["image"]
        assert deployment == upstream[key]

    # The pod webhook only leaves Katib's own pods alone, as deploy/katib does for users.
    spared = {"matchExpressions": [{"key": COMPONENT_LABEL, "operator": "DoesNotExist"}]}
    mutators = {w["name"]: w for w in ours[webhooks]["webhooks"]}
    assert mutators[POD_WEBHOOK].pop("objectSelector") == spared
    assert mutators == {w["name"]: w for w in upstream[webhooks]["webhooks"]}
    for kind, name in upstream:
        if kind == "Deployment":
            template = upstream[(kind, name)]["spec"]["template"]
            assert COMPONENT_LABEL in template["metadata"]["labels"], name

    # The node runs the katib-config users get from deploy/katib, with the stand-in's images.
    config = yaml.safe_load(ours[("ConfigMap", "katib-config")]["data"]["katib-config.yaml"])
    before = yaml.safe_load(users_katib_config())
    moved = {
        s["algorithmName"]: s
        for s, b in zip(
            config["runtime"]["suggestions"], before["runtime"]["suggestions"], strict=True
        )
        if s != b
    }
    assert moved == {
        name: {
            "algorithmName": name,
            "image": SERVICES_IMAGE,
            "resources": {"limits": {"memory": SERVICES_MEMORY}},
            "securityContext": RESTRICTED_CONTAINER,
        }
        for name in SERVED_BY_STAND_IN
    }
    assert set(SERVED_BY_STAND_IN) == {
        "random", "tpe", "grid", "multivariate-tpe", "bayesianoptimization"
    }  # fmt: skip
    [stopping] = config["runtime"]["earlyStoppings"]
    [upstream_stopping] = before["runtime"]["earlyStoppings"]
    assert stopping == {**upstream_stopping, "image": EARLY_STOPPING_IMAGE}
    assert stopping["algorithmName"] == "medianstop"
    assert {**config, "runtime": {}} == {**before, "runtime": {}}
    assert config["runtime"]["metricsCollectors"] == before["runtime"]["metricsCollectors"]


def test_users_katib_config_is_katibs_own_ready_for_restricted_pods(
    both: tuple[Objects, Objects],
) -> None:
    """deploy/katib changes Katib's katib-config in two ways only: the collector copies the
    trial container's securityContext, and the suggestions of the algorithms we offer run as
    restricted pods (Katib builds their images for any user); early stopping has no field."""
    upstream, _ = both
    before = yaml.safe_load(upstream[("ConfigMap", "katib-config")]["data"]["katib-config.yaml"])
    users = yaml.safe_load(users_katib_config())
    assert users["init"]["controller"].pop("injectSecurityContext") is True
    hardened = set()
    for suggestion in users["runtime"]["suggestions"]:
        if "securityContext" in suggestion:
            assert suggestion.pop("securityContext") == RESTRICTED_CONTAINER
            hardened.add(suggestion["algorithmName"])
    assert hardened == set(ALGORITHMS)
    assert users == before
