"""The example Argo CD Applications: the shape Argo CD needs and the order the product needs.

The server-side dry-run against Argo CD's real Application CRD lives in
tests/controlplane/test_argocd_manifests.py; these checks need no cluster and say in product
terms what each Application is for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
APPS = ARGOCD / "apps"
WAVE = "argocd.argoproj.io/sync-wave"
KATIB_INJECTION = "katib.kubeflow.org/metrics-collector-injection"
# Sync options as Argo CD spells them (docs/user-guide/sync-options.md): a typo is silently ignored.
KNOWN_SYNC_OPTIONS = {
    "Validate=false",
    "SkipDryRunOnMissingResource=true",
    "Prune=false",
    "Prune=confirm",
    "Delete=false",
    "Delete=confirm",
    "ApplyOutOfSyncOnly=true",
    "PruneLast=true",
    "Replace=true",
    "Force=true",
    "ServerSideApply=true",
    "ServerSideApply=false",
    "FailOnSharedResource=true",
    "RespectIgnoreDifferences=true",
    "CreateNamespace=true",
    "PrunePropagationPolicy=foreground",
    "PrunePropagationPolicy=background",
    "PrunePropagationPolicy=orphan",
}


def load(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def application_files() -> list[Path]:
    return [ARGOCD / "root.yaml", *sorted(APPS.glob("*.yaml"))]


def apps_by_name() -> dict[str, dict[str, Any]]:
    return {load(path)["metadata"]["name"]: load(path) for path in sorted(APPS.glob("*.yaml"))}


def sync_options(app: dict[str, Any]) -> list[str]:
    return list(app["spec"].get("syncPolicy", {}).get("syncOptions", []))


@pytest.mark.parametrize("path", application_files(), ids=lambda p: p.name)
def test_each_file_is_one_complete_application(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert len(documents) == 1
    app = documents[0]
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert app["metadata"]["namespace"] == "argocd"
    spec = app["spec"]
    assert spec["project"] == "default"
    assert {"repoURL", "targetRevision", "path"} <= set(spec["source"])
    assert spec["destination"]["server"] == "https://kubernetes.default.svc"
    assert spec["destination"]["namespace"]
    assert set(sync_options(app)) <= KNOWN_SYNC_OPTIONS


def test_waves_put_katib_before_the_operator_before_the_tunings() -> None:
    apps = apps_by_name()
    waves = {name: int(app["metadata"]["annotations"][WAVE]) for name, app in apps.items()}
    assert waves["katib"] < waves["mnist-tuning-operator"] < waves["mnist-tunings"]


def test_the_root_application_syncs_the_apps_directory() -> None:
    root = load(ARGOCD / "root.yaml")
    assert (ROOT / root["spec"]["source"]["path"]).resolve() == APPS.resolve()


def test_katib_comes_from_its_pinned_release_and_is_applied_server_side() -> None:
    katib = apps_by_name()["katib"]
    source = katib["spec"]["source"]
    assert source["repoURL"] == "https://github.com/kubeflow/katib.git"
    assert source["targetRevision"] == "v0.19.0"
    assert source["path"] == "manifests/v1beta1/installs/katib-standalone"
    assert "ServerSideApply=true" in sync_options(katib)
    # What Katib's controller writes at run time is ignored, and syncs leave it alone.
    ignored = {entry["kind"] for entry in katib["spec"]["ignoreDifferences"]}
    assert ignored == {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "Secret"}
    assert "RespectIgnoreDifferences=true" in sync_options(katib)


def test_the_operator_application_deploys_what_make_deploy_deploys() -> None:
    operator = apps_by_name()["mnist-tuning-operator"]
    assert operator["spec"]["source"]["path"] == "deploy/default"
    makefile = (ROOT / "Makefile").read_text()
    assert "-k deploy/default" in makefile


def test_tunings_wait_for_the_crd_and_land_in_a_namespace_katib_accepts() -> None:
    tunings = apps_by_name()["mnist-tunings"]
    options = sync_options(tunings)
    assert "SkipDryRunOnMissingResource=true" in options
    assert "CreateNamespace=true" in options
    labels = tunings["spec"]["syncPolicy"]["managedNamespaceMetadata"]["labels"]
    assert labels[KATIB_INJECTION] == "enabled"
    source = tunings["spec"]["source"]
    included = ROOT / source["path"] / source["directory"]["include"]
    tuning = load(included)
    assert (tuning["apiVersion"], tuning["kind"]) == ("tuning.mnist.dev/v1alpha1", "MnistTuning")
    # The namespace comes from the Application, so the sample must not pin another one.
    assert tuning["metadata"].get("namespace") in (
        None,
        tunings["spec"]["destination"]["namespace"],
    )


def test_our_applications_point_at_one_repository() -> None:
    ours = {
        load(path)["spec"]["source"]["repoURL"]
        for path in application_files()
        if "kubeflow" not in load(path)["spec"]["source"]["repoURL"]
    }
    assert len(ours) == 1


def test_katibs_webhooks_sync_only_after_the_pods_they_would_refuse() -> None:
    # Katib's pod webhook (failurePolicy Fail) covers its own namespace: its configurations
    # must reach the cluster in a later wave than the Deployments whose pods serve them.
    patches = apps_by_name()["katib"]["spec"]["source"]["kustomize"]["patches"]
    waves = {}
    for entry in patches:
        patch = yaml.safe_load(entry["patch"])
        if WAVE not in patch["metadata"].get("annotations", {}):
            continue
        waves[(patch["kind"], patch["metadata"]["name"])] = int(
            patch["metadata"]["annotations"][WAVE]
        )
    assert waves == {
        ("MutatingWebhookConfiguration", "katib.kubeflow.org"): 1,
        ("ValidatingWebhookConfiguration", "katib.kubeflow.org"): 1,
    }


@pytest.mark.parametrize(
    "change",
    [
        "pod-webhook.yaml",  # without it a deleted katib-controller pod never comes back
        "katib-config.yaml",  # without it a `restricted` namespace refuses the trials' pods
        "resources.yaml",  # without it trainers starve Katib's pods, and the kubelet restarts them
    ],
)
def test_katib_from_git_gets_each_change_deploy_katib_makes(change: str) -> None:
    patches = apps_by_name()["katib"]["spec"]["source"]["kustomize"]["patches"]
    inline = [yaml.safe_load(entry["patch"]) for entry in patches]
    ours = list(yaml.safe_load_all((ROOT / "deploy" / "katib" / change).read_text()))
    assert ours
    assert all(document in inline for document in ours)
    assert {"path": change} in yaml.safe_load(
        (ROOT / "deploy" / "katib" / "kustomization.yaml").read_text()
    )["patches"]
