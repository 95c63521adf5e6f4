"""The operator's pure decisions: settings, status patches, conditions, events, error sorting."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from mnist_tuning.api.spec import parse_tuning
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.kube import refusal
from mnist_tuning.controller.queue import DelayQueue
from mnist_tuning.controller.reconcile import (
    is_settled,
    mirrored_status,
    status_events,
    status_patch,
)
from mnist_tuning.controller.settings import SettingsError, load_settings

BUDGET = {"maxTrialCount": 6, "parallelTrialCount": 2, "maxFailedTrialCount": 1}


def tuning(metric: str = "accuracy", generation: int = 1) -> Any:
    return parse_tuning(
        {
            "apiVersion": "tuning.mnist.dev/v1alpha1",
            "kind": "MnistTuning",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": {
                "objective": {"metric": metric},
                "budget": {"maxTrials": 6, "parallelTrials": 2, "maxFailedTrials": 1},
                "search": {"learningRate": {"min": 0.001, "max": 0.1}},
            },
        }
    )


def experiment(best: str | None = None, **status: Any) -> dict[str, Any]:
    optimal: dict[str, Any] = {"observation": {}}
    if best is not None:
        optimal = {
            "bestTrialName": "t-abc-1",
            "parameterAssignments": [{"name": "learningRate", "value": "0.01"}],
            "observation": {
                "metrics": [{"name": "accuracy", "min": "0.5", "max": best, "latest": best}]
            },
        }
    return {
        "metadata": {"name": "t-abc"},
        "spec": dict(BUDGET),
        "status": {"currentOptimalTrial": optimal, **status},
    }


def test_settings_name_every_bad_variable_and_the_known_ones() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"MNIST_TUNING_NAMESPACE": "a", "MNIST_TUNING_WORKERS": "0", "HOME": "/"})
    text = str(error.value)
    assert "MNIST_TUNING_NAMESPACE: unknown setting" in text
    assert "MNIST_TUNING_NAMESPACES" in text  # the one that was meant
    assert "MNIST_TUNING_WORKERS" in text


def test_settings_split_namespaces_and_back_off_exponentially_to_a_cap() -> None:
    settings = load_settings(
        {
            "MNIST_TUNING_NAMESPACES": "a, b,,c",
            "MNIST_TUNING_RETRY_BASE_SECONDS": "1",
            "MNIST_TUNING_RETRY_MAX_SECONDS": "5",
        }
    )
    assert settings.namespaces == ("a", "b", "c")
    assert [settings.retry_delay(n) for n in range(5)] == [1, 2, 4, 5, 5]


def test_status_patch_deletes_vanished_keys_at_any_depth_and_is_none_when_equal() -> None:
    old = {"phase": "Running", "best": {"trial": "a", "hyperparameters": {"momentum": 0.5}}}
    new = {"phase": "Pending", "best": {"trial": "b", "hyperparameters": {"batchSize": 64}}}
    assert status_patch(old, new) == {
        "phase": "Pending",
        "best": {"trial": "b", "hyperparameters": {"momentum": None, "batchSize": 64}},
    }
    assert status_patch(new, dict(new)) is None
    assert status_patch({"experiment": "x", "best": {}}, {"phase": "Failed"}) == {
        "experiment": None,
        "best": None,
        "phase": "Failed",
    }


def test_settle_keeps_the_transition_time_while_status_holds() -> None:
    old = [{"type": "A", "status": "True", "lastTransitionTime": "t0"}]
    held = c.condition("A", True, "R", "m", 1)
    flipped = c.condition("A", False, "R", "m", 1)
    assert c.settle(old, [held], "t1")[0]["lastTransitionTime"] == "t0"
    assert c.settle(old, [flipped], "t1")[0]["lastTransitionTime"] == "t1"
    assert [d["type"] for d in c.settle(old, [c.condition("B", True, "R", "", 1)], "t1")] == ["B"]


def test_mirrored_status_waits_for_the_budget_before_claiming_the_generation() -> None:
    current = mirrored_status(tuning(generation=3), experiment(), {}, wanted_budget=BUDGET, at="t")
    assert current["observedGeneration"] == 3
    bigger = {**BUDGET, "maxTrialCount": 9}
    behind = mirrored_status(
        tuning(generation=3), experiment(), {"observedGeneration": 2}, wanted_budget=bigger, at="t"
    )
    assert behind["observedGeneration"] == 2


def test_mirrored_status_says_how_to_find_failing_trials() -> None:
    status = mirrored_status(
        tuning(),
        experiment(trialsFailed=1, trialMetricsUnavailable=1),
        {},
        wanted_budget=BUDGET,
        at="t",
    )
    (cond,) = [x for x in status["conditions"] if x["type"] == c.TRIALS_HEALTHY]
    assert cond["status"] == "False"
    assert cond["reason"] == c.TRIALS_FAILING
    assert "2 trial(s)" in cond["message"]
    assert "katib.kubeflow.org/experiment=t-abc" in cond["message"]


def test_events_fire_once_per_improvement_and_once_at_the_end() -> None:
    t = tuning()
    first = mirrored_status(t, experiment("0.9"), {}, wanted_budget=BUDGET, at="t")
    (improved,) = status_events(t, {}, first)
    assert improved.reason == c.BEST_TRIAL_IMPROVED
    assert improved.message.startswith("accuracy 0.9 with learningRate=0.01")
    assert status_events(t, first, first) == []
    worse = mirrored_status(t, experiment("0.8"), first, wanted_budget=BUDGET, at="t")
    assert status_events(t, first, worse) == []
    done_conditions = [
        {"type": "Succeeded", "status": "True", "reason": "ExperimentGoalReached", "message": "m"}
    ]
    done = mirrored_status(
        t, experiment("0.9", conditions=done_conditions), first, wanted_budget=BUDGET, at="t"
    )
    (ended,) = status_events(t, first, done)
    assert ended.reason == c.TUNING_SUCCEEDED
    assert "ExperimentGoalReached: m" in ended.message
    assert status_events(t, done, done) == []


def test_loss_improves_downwards() -> None:
    t = tuning("loss")
    old = {"experiment": "t-abc", "best": {"trial": "a", "loss": 0.3}}
    assert status_events(t, old, {**old, "best": {"trial": "b", "loss": 0.2}})
    assert not status_events(t, old, {**old, "best": {"trial": "b", "loss": 0.4}})


def test_a_settled_generation_is_left_alone_and_a_new_one_is_not() -> None:
    assert is_settled({"phase": "Failed", "observedGeneration": 2}, 2)
    assert is_settled({"phase": "Succeeded", "observedGeneration": 2}, 2)
    assert not is_settled({"phase": "Failed", "observedGeneration": 2}, 3)
    assert not is_settled({"phase": "Running", "observedGeneration": 2}, 2)


def test_a_settled_tuning_whose_experiment_runs_again_is_not_settled() -> None:
    # Katib restarted the finished Experiment after a raised maxTrials: follow it again.
    ended = {"phase": "Succeeded", "observedGeneration": 2}
    assert not is_settled(ended, 2, "Running")
    assert is_settled(ended, 2, "Succeeded")
    assert is_settled({"phase": "Failed", "observedGeneration": 2}, 2, "Failed")


def api_error(code: int, message: str, details: dict[str, Any] | None = None) -> ApiException:
    error = ApiException(status=code, reason="x")
    error.body = json.dumps({"message": message, "details": details or {}})
    return error


def test_refusals_are_sorted_into_what_the_operator_does() -> None:
    missing = refusal(api_error(404, "the server could not find the requested resource"))
    assert missing.katib_missing
    assert not refusal(
        api_error(404, "namespaces x not found", {"kind": "namespaces"})
    ).katib_missing
    rbac = refusal(
        api_error(403, 'experiments.kubeflow.org is forbidden: User "u" cannot create resource "x"')
    )
    assert rbac.forbidden_by_rbac
    assert not rbac.refused
    webhook = refusal(api_error(403, 'admission webhook "v" denied the request: bad'))
    assert webhook.refused
    assert webhook.message == 'admission webhook "v" denied the request: bad'
    assert refusal(api_error(422, "invalid")).refused
    assert not refusal(api_error(500, "etcd timeout")).refused


def test_the_queue_holds_a_key_once_and_brings_one_added_while_held_back_after() -> None:
    queue: DelayQueue[str] = DelayQueue()
    queue.add("a", 60)
    queue.add("a")  # the sooner due time wins
    queue.add("b", 60)
    assert queue.get() == "a"
    queue.add("a")  # held: no second worker gets it
    queue.add("c")
    assert queue.get() == "c"
    queue.done("c")
    queue.done("a")  # added while held: due again
    assert queue.get() == "a"
    queue.close()
    assert queue.get() is None
