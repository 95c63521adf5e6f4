"""GitOps for real: Argo CD v3.6 syncs Katib, the operator and the tunings from Git on our node.

The story runs in order, on one Argo CD (conftest.py): the root Application installs the three
waves; the quick tuning runs and Argo CD's health follows it; nothing drifts; commits made in the
clone raise a finished tuning's budget, refuse a bad spec, degrade a tuning in a namespace Katib
does not watch, heal both, and prune a tuning once its Application may be emptied. Every
assertion reads Argo CD's own records (the Application objects, every version of them seen by a
watch) or the cluster's objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import yaml
from launcher import wait_for
from node import gitops
from node.katib import INJECTION_LABEL
from node.katib import NAMESPACE as KATIB_NAMESPACE
from node.product import OPERATOR_NAMESPACE
from records import (
    TUNING,
    TUNING_NAMESPACE,
    UNLABELLED,
    Synced,
    application,
    health,
    kubectl_json,
    resource_health,
    sync_status,
    time_of,
    tuning_of,
)

pytestmark = pytest.mark.timeout(60 * 60)
ROOT, KATIB, OPERATOR, TUNINGS = "mnist-tuning", "katib", "mnist-tuning-operator", "mnist-tunings"
APPLICATIONS = (ROOT, KATIB, OPERATOR, TUNINGS)
SAMPLE = "deploy/samples/quick.yaml"
DEADLINE_S = 20 * 60
wait_until = partial(wait_for, every=2.0)


def tuning_healths(synced: Synced, since: int = 0) -> list[dict[str, Any]]:
    """The quick tuning's health in every version of its Application seen, from `since` on."""
    versions = synced.applications.versions(TUNINGS)[since:]
    judged = [resource_health(app, "MnistTuning", TUNING) for app in versions]
    return [h for h in judged if h is not None]


def assert_healthy_names_best(judged: dict[str, Any], tuning: dict[str, Any]) -> None:
    best = tuning["status"]["best"]
    message = judged["message"]
    assert message.startswith("Tuning succeeded: best accuracy "), message
    value = float(re.search(r"best accuracy (\S+)", message).group(1))  # type: ignore[union-attr]
    assert value == pytest.approx(best["accuracy"]), (message, best)
    assert message.endswith(f" in trial {best['trial']}"), (message, best)


def edit(synced: Synced, path: str, change: Any) -> None:
    """Rewrite one file of the clone with `change(text)`."""
    target = synced.gitops.clone / path
    target.parent.mkdir(parents=True, exist_ok=True)
    before = target.read_text() if target.exists() else ""
    after = change(before)
    assert after != before, f"the edit of {path} changed nothing"
    target.write_text(after)


def trials(synced: Synced, experiment: str) -> dict[str, dict[str, Any]]:
    listing = kubectl_json(
        synced, "get", "trials", "-n", TUNING_NAMESPACE,
        "-l", f"katib.kubeflow.org/experiment={experiment}",
    )  # fmt: skip
    return {t["metadata"]["name"]: t for t in listing["items"]}


def assignments(trial: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((p["name"], p["value"]) for p in trial["spec"]["parameterAssignments"]))


def best_accuracy(trial: dict[str, Any]) -> float:
    """Katib's rule for a maximized objective: the trial's highest reported accuracy."""
    metrics = trial["status"]["observation"]["metrics"]
    [accuracy] = [m for m in metrics if m["name"] == "accuracy"]
    return float(accuracy["max"])


@pytest.fixture(scope="module")
def first_sync(argocd: Synced) -> dict[str, dict[str, Any]]:
    """The Applications once all of them are Healthy and Synced after the root was applied."""
    try:
        wait_until(
            "Argo CD to install Katib, the operator and the quick tuning from Git",
            lambda: argocd.gitops.settled(*APPLICATIONS),
            timeout=DEADLINE_S,
        )
    except AssertionError as error:
        namespaces = (KATIB_NAMESPACE, OPERATOR_NAMESPACE, TUNING_NAMESPACE)
        raise AssertionError(f"{error}\n{argocd.gitops.diagnose(*namespaces)}") from None
    return {name: application(argocd, name) for name in APPLICATIONS}


def test_the_three_waves_sync_in_order(
    argocd: Synced, first_sync: dict[str, dict[str, Any]]
) -> None:
    katib, operator, tunings = first_sync[KATIB], first_sync[OPERATOR], first_sync[TUNINGS]
    # Argo CD created each wave's Application only once the wave before it was Healthy.
    assert time_of(katib["status"]["health"]["lastTransitionTime"]) <= time_of(
        operator["metadata"]["creationTimestamp"]
    )
    assert time_of(operator["status"]["health"]["lastTransitionTime"]) <= time_of(
        tunings["metadata"]["creationTimestamp"]
    )
    # Katib's webhooks (its Application's wave 1) came after every Katib pod they would refuse.
    pods = kubectl_json(argocd, "get", "pods", "-n", KATIB_NAMESPACE)["items"]
    assert len(pods) == 3, [p["metadata"]["name"] for p in pods]
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        webhooks = kubectl_json(argocd, "get", kind, "katib.kubeflow.org")
        created = time_of(webhooks["metadata"]["creationTimestamp"])
        assert all(time_of(p["metadata"]["creationTimestamp"]) < created for p in pods), kind
    crd = kubectl_json(argocd, "get", "crd", "mnisttunings.tuning.mnist.dev")
    tuning = tuning_of(argocd)
    assert time_of(crd["metadata"]["creationTimestamp"]) <= time_of(
        tunings["metadata"]["creationTimestamp"]
    )
    assert time_of(crd["metadata"]["creationTimestamp"]) <= time_of(
        tuning["metadata"]["creationTimestamp"]
    )
    # Argo CD applied them, nothing else did.
    for kind, name, namespace in (
        ("deployment", "katib-controller", "kubeflow"),
        ("deployment", "mnist-tuning-operator", "mnist-tuning-system"),
        ("mnisttuning", TUNING, TUNING_NAMESPACE),
    ):
        applied = kubectl_json(argocd, "get", kind, name, "-n", namespace, "--show-managed-fields")
        managers = {f["manager"] for f in applied["metadata"]["managedFields"]}
        assert "argocd-controller" in managers, (kind, managers)
        assert not {m for m in managers if m.startswith("kubectl")}, (kind, managers)
    for app in first_sync.values():
        assert app["spec"]["source"]["repoURL"].startswith(argocd.gitops.url.rsplit("/", 1)[0])


def test_the_tunings_application_follows_the_tuning(
    argocd: Synced, first_sync: dict[str, dict[str, Any]]
) -> None:
    tuning = tuning_of(argocd)
    assert tuning["status"]["phase"] == "Succeeded"
    judged = tuning_healths(argocd)
    statuses = [h["status"] for h in judged]
    assert "Progressing" in statuses, statuses
    assert any(h.get("message", "").startswith("Running: ") for h in judged), judged
    # Healthy only once the run had Succeeded, and from then on.
    first_healthy = statuses.index("Healthy")
    assert set(statuses[first_healthy:]) == {"Healthy"}, statuses
    for healthy in judged[first_healthy:]:
        assert_healthy_names_best(healthy, tuning)
    # The app is no healthier than its tuning in any version Argo CD wrote.
    for app in argocd.applications.versions(TUNINGS):
        judged_now = resource_health(app, "MnistTuning", TUNING)
        if judged_now is not None and judged_now["status"] == "Progressing":
            assert health(app) != "Healthy", app["status"]


def test_nothing_drifts_while_the_operator_and_katib_write(
    argocd: Synced, first_sync: dict[str, dict[str, Any]]
) -> None:
    start = len(argocd.applications.history)

    def reconciled_twice() -> bool:
        window = argocd.applications.history[start:]
        return all(
            len(
                {
                    (a.get("status") or {}).get("reconciledAt")
                    for a in window
                    if a["metadata"]["name"] == n
                }
            )
            >= 3
            for n in APPLICATIONS
        )

    # Two full resync periods of every Application: three reconciliations after the start.
    wait_until("two resync periods of every Application", reconciled_twice, timeout=300)
    window = argocd.applications.history[start:]
    assert {(a["metadata"]["name"], sync_status(a)) for a in window} == {
        (n, "Synced") for n in APPLICATIONS
    }
    # The writes Argo CD had to leave alone did happen.
    webhook = kubectl_json(argocd, "get", "validatingwebhookconfiguration", "katib.kubeflow.org")
    assert all(w["clientConfig"].get("caBundle") for w in webhook["webhooks"])
    assert tuning_of(argocd)["status"]["best"]["trial"]


def test_raising_max_trials_of_a_finished_tuning_runs_only_the_extra_trials(
    argocd: Synced, first_sync: dict[str, dict[str, Any]]
) -> None:
    before = tuning_of(argocd)
    assert before["status"]["phase"] == "Succeeded"
    name = before["status"]["experiment"]
    experiment = kubectl_json(argocd, "get", "experiment", name, "-n", TUNING_NAMESPACE)
    earlier = trials(argocd, name)
    assert len(earlier) == 4
    since = len(argocd.applications.versions(TUNINGS))

    edit(argocd, SAMPLE, lambda text: text.replace("maxTrials: 4", "maxTrials: 6"))
    argocd.gitops.push("quick: four more trials")
    argocd.gitops.refresh(TUNINGS)

    def finished_again() -> bool:
        tuning = tuning_of(argocd)
        status = tuning.get("status") or {}
        return (
            status.get("observedGeneration") == tuning["metadata"]["generation"]
            and status.get("phase") == "Succeeded"
            and status.get("progress") == "6/6"
        )

    wait_until("the two extra trials of the quick tuning", finished_again, timeout=DEADLINE_S)
    wait_until("the tunings Application Healthy again", lambda: argocd.gitops.settled(TUNINGS))
    after = tuning_of(argocd)
    assert after["spec"]["budget"]["maxTrials"] == 6
    same = kubectl_json(argocd, "get", "experiment", name, "-n", TUNING_NAMESPACE)
    assert same["metadata"]["uid"] == experiment["metadata"]["uid"]
    now = trials(argocd, name)
    assert len(now) == 6
    assert set(earlier) < set(now)
    for trial, version in earlier.items():
        assert assignments(now[trial]) == assignments(version)
    assert len({assignments(t) for t in now.values()}) == 6
    best = max(now.values(), key=best_accuracy)
    assert after["status"]["best"]["trial"] == best["metadata"]["name"]
    assert after["status"]["best"]["accuracy"] == pytest.approx(best_accuracy(best))
    assert after["status"]["trials"]["succeeded"] == 6
    statuses = [h["status"] for h in tuning_healths(argocd, since)]
    assert "Progressing" in statuses, statuses
    assert statuses[-1] == "Healthy", statuses


def unlabelled_application(
    url: str, *, labelled: bool, allow_empty: bool = False
) -> dict[str, Any]:
    """A wave-2 Application for one tuning in a namespace of its own."""
    sync_policy: dict[str, Any] = {
        "automated": {"prune": True, "selfHeal": True},
        # As deploy/argocd/apps/tunings.yaml prunes: in the background.
        "syncOptions": [
            "CreateNamespace=true",
            "SkipDryRunOnMissingResource=true",
            "PrunePropagationPolicy=background",
        ],
    }
    if allow_empty:
        sync_policy["automated"]["allowEmpty"] = True
    if labelled:
        sync_policy["managedNamespaceMetadata"] = {"labels": {INJECTION_LABEL: "enabled"}}
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {
            "name": UNLABELLED,
            "namespace": gitops.NAMESPACE,
            "annotations": {"argocd.argoproj.io/sync-wave": "2"},
        },
        "spec": {
            "project": "default",
            "source": {"repoURL": url, "targetRevision": gitops.BRANCH, "path": "cases"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": UNLABELLED},
            "syncPolicy": sync_policy,
        },
    }


def one_trial_tuning() -> str:
    tuning = {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": "one"},
        "spec": {
            "algorithm": {"seed": 3},
            "budget": {"maxTrials": 1, "parallelTrials": 1, "maxFailedTrials": 1},
            "search": {"learningRate": {"min": 0.01, "max": 0.1, "scale": "log"}},
            "fixed": {"epochs": 1, "batchSize": 256},
        },
    }
    return str(yaml.safe_dump(tuning, sort_keys=False))


def operation(app: dict[str, Any]) -> dict[str, Any]:
    return dict((app.get("status") or {}).get("operationState") or {})


def test_a_refused_spec_and_an_unlabelled_namespace_show_in_argocd_then_heal(
    argocd: Synced, first_sync: dict[str, dict[str, Any]]
) -> None:
    url = argocd.gitops.url
    good = (argocd.gitops.clone / SAMPLE).read_text()
    edit(
        argocd, SAMPLE, lambda text: text.replace("{min: 0.5, max: 0.95}", "{min: 0.95, max: 0.5}")
    )
    app_file = f"deploy/argocd/apps/{UNLABELLED}.yaml"
    edit(argocd, app_file, lambda _: yaml.safe_dump(unlabelled_application(url, labelled=False)))
    edit(argocd, "cases/tuning.yaml", lambda _: one_trial_tuning())
    edit(argocd, "cases/README.md", lambda _: "One tuning at a time, for the gitops tier.\n")
    argocd.gitops.push("a swapped momentum range, and a tuning where Katib does not look")
    argocd.gitops.refresh(ROOT)
    argocd.gitops.refresh(TUNINGS)

    def refused() -> bool:
        # Argo CD retries a failed automated sync (five times by default, backing off): the
        # refusal is in the operation from the first failed attempt on.
        state = operation(application(argocd, TUNINGS))
        failed = state.get("phase") in ("Failed", "Error") or state.get("retryCount", 0) >= 1
        return failed and "momentum" in json.dumps(state)

    wait_until("the tunings Application's sync to fail on the CRD's rule", refused, timeout=600)
    # The API server's refusal, in the operation's message or in its resource's result.
    said = json.dumps(operation(application(argocd, TUNINGS)))
    assert "min must be less than max; swap them or widen the range" in said, said
    assert tuning_of(argocd)["spec"]["search"]["momentum"] == {"min": 0.5, "max": 0.95}

    def degraded() -> bool:
        app = argocd.gitops.application(UNLABELLED)
        judged = (app and resource_health(app, "MnistTuning", "one")) or {}
        return judged.get("status") == "Degraded"

    wait_until("the unlabelled tuning's Application Degraded", degraded, timeout=300)
    judged = resource_health(application(argocd, UNLABELLED), "MnistTuning", "one") or {}
    assert judged["message"].startswith("NamespaceNotEnabled: "), judged
    assert INJECTION_LABEL in judged["message"], judged

    edit(argocd, SAMPLE, lambda _: good)
    edit(argocd, app_file, lambda _: yaml.safe_dump(unlabelled_application(url, labelled=True)))
    argocd.gitops.push("momentum back in order; the tunings' namespace enabled for Katib")
    argocd.gitops.refresh(ROOT)
    argocd.gitops.refresh(TUNINGS)
    refresh_once_delivered(argocd, UNLABELLED, lambda policy: "managedNamespaceMetadata" in policy)
    wait_until(
        "both Applications Synced and Healthy again",
        lambda: argocd.gitops.settled(ROOT, TUNINGS, UNLABELLED),
        timeout=DEADLINE_S,
    )
    assert sync_status(application(argocd, TUNINGS)) == "Synced"
    assert tuning_of(argocd, "one", UNLABELLED)["status"]["phase"] == "Succeeded"


def refresh_once_delivered(synced: Synced, name: str, delivered: Callable[[dict], Any]) -> None:
    """Refresh Application `name` once the root has applied the sync policy `delivered` accepts.

    Argo CD compares an Application again on a spec change only when that change turns automated
    sync or self-heal on (`automatedSyncEnabled` in its app controller); a new `allowEmpty` or
    namespace label would otherwise wait for the next periodic reconciliation, minutes away.
    """

    def arrived() -> bool:
        spec = (synced.gitops.application(name) or {}).get("spec") or {}
        return bool(delivered(spec.get("syncPolicy") or {}))

    wait_until(f"the root Application to deliver {name}'s new sync policy", arrived, timeout=300)
    synced.gitops.refresh(name)


def deleting(synced: Synced, namespace: str) -> str:
    """Every object a tuning's deletion waits on in `namespace`: its deletion time, finalizers
    and owners, one line each."""
    kinds = "mnisttunings,experiments,trials,suggestions,jobs,deployments,replicasets,pods"
    listing = kubectl_json(synced, "get", kinds, "-n", namespace)["items"]
    return "\n".join(
        json.dumps(
            {
                "object": f"{item['kind']}/{item['metadata']['name']}",
                "deletionTimestamp": item["metadata"].get("deletionTimestamp"),
                "finalizers": item["metadata"].get("finalizers"),
                "owners": [
                    f"{o['kind']}/{o['name']}" for o in item["metadata"].get("ownerReferences", [])
                ],
            }
        )
        for item in listing
    )


def conditions(app: dict[str, Any]) -> list[dict[str, Any]]:
    return list((app.get("status") or {}).get("conditions") or [])


def test_a_tuning_removed_from_git_is_pruned_with_everything_it_ran(
    argocd: Synced, first_sync: dict[str, dict[str, Any]]
) -> None:
    node = argocd.gitops.node
    experiment = tuning_of(argocd, "one", UNLABELLED)["status"]["experiment"]
    assert kubectl_json(argocd, "get", "trials", "-n", UNLABELLED)["items"]
    (argocd.gitops.clone / "cases/tuning.yaml").unlink()
    argocd.gitops.push("the one-trial tuning is done with")
    argocd.gitops.refresh(UNLABELLED)

    # The tuning was the folder's last resource: an automated sync refuses to empty an
    # Application (Argo CD's `allowEmpty` guard) and says so; nothing is deleted.
    def refuses_to_empty() -> bool:
        app = argocd.gitops.application(UNLABELLED) or {}
        return any("wipe out all resources" in c.get("message", "") for c in conditions(app))

    wait_until("Argo CD to refuse emptying the Application", refuses_to_empty, timeout=300)
    assert sync_status(application(argocd, UNLABELLED)) == "OutOfSync"
    assert tuning_of(argocd, "one", UNLABELLED)["metadata"]["name"] == "one"

    app_file = f"deploy/argocd/apps/{UNLABELLED}.yaml"
    edit(
        argocd,
        app_file,
        lambda _: yaml.safe_dump(
            unlabelled_application(argocd.gitops.url, labelled=True, allow_empty=True)
        ),
    )
    argocd.gitops.push("the unlabelled Application may be empty: prune its last tuning")
    argocd.gitops.refresh(ROOT)
    refresh_once_delivered(argocd, UNLABELLED, lambda policy: policy["automated"].get("allowEmpty"))

    def gone(kind: str) -> bool:
        listing = node.kubectl("get", kind, "-n", UNLABELLED, "-o", "name").stdout
        return not listing.strip()

    try:
        for kind in ("mnisttunings", "experiments", "trials", "suggestions", "pods"):
            wait_until(f"every {kind} in {UNLABELLED} gone", partial(gone, kind), timeout=300)
    except AssertionError as error:
        raise AssertionError(
            f"{error}\n{deleting(argocd, UNLABELLED)}\n{argocd.gitops.diagnose(UNLABELLED)}"
        ) from None
    missing = node.kubectl("get", "experiment", experiment, "-n", UNLABELLED, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr
    wait_until(
        "the emptied Application Synced", lambda: argocd.gitops.settled(UNLABELLED), timeout=300
    )
