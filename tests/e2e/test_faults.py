"""Katib's own parts failing under a running tuning: nothing lost, nothing re-run, the status true.

Each case runs a seeded tuning of three one-epoch trials, one at a time, in a namespace of its
own, and holds its fault (Katib's Deployments scaled to no pod) from before the first trial
starts until that trial's pod has ended, then brings the parts back. The trial's collector
then has nowhere to store its observation: its pod fails, and the Job runs the trial again.
The fault is driven through that seam rather than by timing, so it is certain to meet the
trial it is meant for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import yaml
from kindcluster import KATIB_NAMESPACE, small_tuning
from providers import E2ECluster, watching_pods
from tunings import (
    TRIAL_LABEL,
    best_from_katib,
    counts,
    experiment_of,
    katib_counts,
    new_namespace,
    seconds_between,
    the_experiment,
    trainer_exit,
    wait_for_end,
    wait_until,
)

TRIALS = 3
STEP_DEADLINE_S = 5 * 60
# Katib's parts, by the Deployment each runs in; a case stops one or several. Not here yet:
# Katib's controller. Its pod webhook (failurePolicy Fail) covers Katib's own namespace, so once
# its pod is gone no pod there, its own included, can be created again.
DB_MANAGER, MYSQL = "katib-db-manager", "katib-mysql"
FAULTS = {
    "none": (),  # the same tuning unbroken: the baseline of the times printed
    "db-manager": (DB_MANAGER,),
    "mysql": (MYSQL,),
    "db-manager-and-mysql": (DB_MANAGER, MYSQL),
}
pytestmark = pytest.mark.timeout(60 * 60)


@contextmanager
def scaled_down(cluster: E2ECluster, deployment: str) -> Iterator[None]:
    """Katib's `deployment` with no pod for the duration of the block, then ready again."""
    where = ("-n", KATIB_NAMESPACE)
    cluster.kubectl("scale", f"deployment/{deployment}", "--replicas=0", *where)
    selector = cluster.get("deployment", deployment, KATIB_NAMESPACE)["spec"]["selector"]
    labels = ",".join(f"{k}={v}" for k, v in selector["matchLabels"].items())
    wait_until(
        f"{deployment}'s pods to go",
        lambda: not cluster.items("pods", KATIB_NAMESPACE, "-l", labels),
        STEP_DEADLINE_S,
    )
    try:
        yield
    finally:
        cluster.kubectl("scale", f"deployment/{deployment}", "--replicas=1", *where)
        cluster.kubectl(
            "rollout", "status", f"deployment/{deployment}", *where, f"--timeout={STEP_DEADLINE_S}s"
        )


def ended(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@pytest.mark.parametrize("fault", FAULTS)
def test_a_tuning_survives_katibs_parts_stopped_while_a_trial_runs(
    e2e_cluster: E2ECluster, namespaces: list[str], fault: str
) -> None:
    name = f"fault-{fault}"
    namespace = new_namespace(e2e_cluster, namespaces, name)
    manifest = small_tuning(name, namespace, maxTrials=TRIALS, parallelTrials=1, maxFailedTrials=0)
    manifest["spec"]["fixed"]["batchSize"] = 1024
    with watching_pods(e2e_cluster, namespace, TRIAL_LABEL) as pods, ExitStack() as stopped:
        # Stopped before any trial starts: the first one cannot miss the fault.
        for deployment in FAULTS[fault]:
            stopped.enter_context(scaled_down(e2e_cluster, deployment))
        e2e_cluster.apply(manifest)
        wait_until("the first trial's pod", lambda: bool(pods.latest()), STEP_DEADLINE_S)
        experiment_uid = the_experiment(e2e_cluster, namespace)["metadata"]["uid"]
        wait_until(
            "the first trial's pod to end",
            lambda: any(ended(pod) for pod in pods.latest().values()),
            STEP_DEADLINE_S,
        )
        stopped.close()
        final = wait_for_end(e2e_cluster, name, namespace)

    got = final["status"]
    assert got["phase"] == "Succeeded", yaml.safe_dump(got)
    experiment = experiment_of(e2e_cluster, final)
    assert experiment["metadata"]["uid"] == experiment_uid, "the same Experiment throughout"
    assert katib_counts(experiment) == {"succeeded": TRIALS, "failed": 0, "metricsUnavailable": 0}
    assert counts(final)["succeeded"] == TRIALS
    assert best_from_katib(experiment) == (got["best"]["trial"], got["best"]["hyperparameters"])
    trials = e2e_cluster.items("trials", namespace)
    assert len(trials) == TRIALS
    assignments = [
        tuple(sorted((p["name"], p["value"]) for p in t["spec"]["parameterAssignments"]))
        for t in trials
    ]
    assert len(set(assignments)) == TRIALS, "no trial ran the same values twice"
    for trial in trials:
        names = {m["name"] for m in trial["status"]["observation"]["metrics"]}
        assert names >= {"accuracy", "loss"}, trial["status"]
    # Which pods ran again, and why: a lost report is Katib's fault, never the trial's.
    seen = pods.latest().values()
    per_trial = Counter(pod["metadata"]["labels"][TRIAL_LABEL] for pod in seen)
    failed = [pod for pod in seen if pod["status"].get("phase") == "Failed"]
    wall = seconds_between(
        experiment["metadata"]["creationTimestamp"], experiment["status"]["completionTime"]
    )
    print(f"{fault}: {wall:.0f} s, pods per trial {dict(per_trial)}, failed pods {len(failed)}")
    assert all(trainer_exit(pod) == 0 for pod in failed)
    assert sum(per_trial.values()) == TRIALS + len(failed)
    if FAULTS[fault]:
        assert len(failed) >= 1, "the first trial's collector had nowhere to report"
    else:
        assert not failed, "an unbroken tuning runs each trial once"
