"""Each algorithm's Optuna sampler, Katib's grid, and Katib's median stopping rule, locally."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import numpy
import optuna
import pytest
from mnist_tuning.api.expand import expand
from mnist_tuning.api.metrics import MetricSummary
from mnist_tuning.api.spec import ALGORITHMS, parse_tuning
from mnist_tuning.api.summarize import summarize
from mnist_tuning.local.katib import (
    MAX_TRIALS_REACHED,
    TrialRecord,
    TrialState,
    experiment_status,
    stop_rule,
    verdict,
)
from mnist_tuning.local.search import (
    assignments,
    distributions,
    grid_points,
    make_sampler,
    search_space,
    suggest,
)

SEARCH = {
    "learningRate": {"min": 0.01, "max": 0.1, "step": 0.03},
    "momentum": {"min": 0.5, "max": 0.9, "step": 0.2},
    "batchSize": {"values": [32, 64]},
}


def experiment(algorithm: str = "random", **spec: Any) -> dict[str, Any]:
    return expand(
        parse_tuning(
            {
                "apiVersion": "tuning.mnist.dev/v1alpha1",
                "kind": "MnistTuning",
                "metadata": {"name": algorithm},
                "spec": {
                    "algorithm": {"name": algorithm, "seed": 5},
                    "budget": {"maxTrials": 6, "parallelTrials": 1},
                    "search": SEARCH,
                    **spec,
                },
            }
        )
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithms_sampler_asks_inside_the_space_and_is_seeded(algorithm: str) -> None:
    def run() -> list[dict[str, str]]:
        rendered = experiment(algorithm)
        space = search_space(rendered)
        study = optuna.create_study(direction="maximize", sampler=make_sampler(rendered, 5))
        out = []
        for number in range(12):
            trial = study.ask()
            for name, dist in distributions(space).items():
                suggest(trial, name, dist)
            out.append(assignments(space, trial.params))
            study.tell(trial, float(trial.params["learningRate"]) - number / 100)
        return out

    first = run()
    for values in first:
        assert 0.01 <= float(values["learningRate"]) <= 0.1
        assert 0.5 <= float(values["momentum"]) <= 0.9
        assert values["batchSize"] in ("32", "64")
    assert run() == first


def test_grid_is_katibs_every_combination_once_in_a_seeded_order() -> None:
    rendered = experiment("grid")
    points = grid_points(rendered, 5)
    combinations = {(p["learningRate"], p["momentum"], p["batchSize"]) for p in points}
    # The optuna service's values: numpy.arange(min, max + step, step), none above max.
    lr = [v for v in numpy.arange(0.01, 0.1 + 0.03, 0.03).tolist() if v <= 0.1]
    momentum = [v for v in numpy.arange(0.5, 0.9 + 0.2, 0.2).tolist() if v <= 0.9]
    assert len(points) == len(combinations) == len(lr) * len(momentum) * 2
    assert combinations == set(itertools.product(lr, momentum, ["32", "64"]))
    assert grid_points(rendered, 5) == points
    assert grid_points(rendered, 6) != points


def record(number: int, state: TrialState, series: tuple[float, ...]) -> TrialRecord:
    summary = MetricSummary(name="accuracy", min=min(series), max=max(series), latest=series[-1])
    return TrialRecord(
        number=number,
        name=f"median-{number:03d}",
        state=state,
        assignments={"learningRate": "0.04", "momentum": "0.7", "batchSize": "32"},
        metrics={"accuracy": summary},
        series=series,
    )


def test_the_median_rule_is_katibs_mean_of_succeeded_trials_first_reports() -> None:
    rendered = experiment(earlyStopping={"minTrials": 2, "startStep": 2})
    one = [record(0, "Succeeded", (0.5, 0.7, 0.9))]
    assert stop_rule(one, rendered) is None  # fewer than minTrials succeeded
    two = [
        *one,
        record(1, "Succeeded", (0.7, 0.9, 0.95)),
        record(2, "EarlyStopped", (0.1, 0.1)),  # not succeeded: not in the median
        record(3, "Failed", (0.0,)),
    ]
    rule = stop_rule(two, rendered)
    assert rule is not None
    assert rule.median == pytest.approx(((0.5 + 0.7) / 2 + (0.7 + 0.9) / 2) / 2)  # 0.7
    assert rule.start_step == 2
    # Judged once, at report 2, on the best so far; never before.
    assert not rule.stops((0.1,))
    assert rule.stops((0.1, 0.6))
    assert not rule.stops((0.1, 0.75))
    assert not rule.stops((0.75, 0.1, 0.1))
    assert stop_rule(two, experiment()) is None  # no earlyStopping: no rule


def test_the_median_rule_minimizing_loss_stops_trials_above_it() -> None:
    rendered = experiment(objective={"metric": "loss"}, earlyStopping={"minTrials": 1})
    rule = stop_rule([record(0, "Succeeded", (1.0, 0.8, 0.6, 0.4, 0.2))], rendered)
    assert rule is not None
    assert rule.median == pytest.approx(0.7)  # the mean of the first four (start_step 4)
    assert rule.stops((2.0, 1.5, 1.2, 0.9))
    assert not rule.stops((2.0, 1.5, 1.2, 0.5))


def test_early_stopped_trials_are_done_and_counted_as_katib_counts_them() -> None:
    rendered = experiment(earlyStopping={})
    tuning = parse_tuning(
        {
            "apiVersion": "tuning.mnist.dev/v1alpha1",
            "kind": "MnistTuning",
            "metadata": {"name": "random"},
            "spec": {"budget": {"maxTrials": 3}, "search": SEARCH, "earlyStopping": {}},
        }
    )
    records = [
        record(0, "Succeeded", (0.9,)),
        record(1, "EarlyStopped", (0.2,)),
        record(2, "EarlyStopped", (0.3,)),
    ]
    rendered["spec"]["maxTrialCount"] = 3
    assert verdict(records, rendered) == MAX_TRIALS_REACHED
    at = datetime(2026, 1, 1, tzinfo=UTC)
    katib = experiment_status(rendered, records, started=at, now=at, over=MAX_TRIALS_REACHED)
    assert katib["status"]["trialsEarlyStopped"] == 2
    assert katib["status"]["earlyStoppedTrialList"] == ["median-001", "median-002"]
    status = summarize(katib, tuning)
    assert (status.trials.succeeded, status.trials.early_stopped) == (1, 2)
    assert status.progress == "3/3"
    assert status.best is not None
    assert status.best.trial == "median-000"
