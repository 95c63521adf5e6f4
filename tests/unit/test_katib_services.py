"""The stand-ins for Katib's Python suggestion services read an Experiment as Katib's do."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import pytest
from katib_services.hyperopt_search import HyperoptSearch
from katib_services.median_stop import MedianStop, early_stopped
from katib_services.optuna_search import OptunaSearch
from katib_services.skopt_search import SkoptSearch
from katib_services.space import Observed, Parameter, SearchSpec, SettingsError

LEARNING_RATE = Parameter("lr", "double", 1e-4, 1e-1, distribution="logUniform")


def hyperopt(
    algorithm: str, settings: dict[str, str], parameters: Sequence[Parameter]
) -> HyperoptSearch:
    return HyperoptSearch(SearchSpec(algorithm, tuple(parameters), settings))


def optuna(
    algorithm: str,
    settings: dict[str, str],
    parameters: Sequence[Parameter],
    max_trials: int = 0,
    maximize: bool = False,
) -> OptunaSearch:
    return OptunaSearch(SearchSpec(algorithm, tuple(parameters), settings, maximize, max_trials))


def largest_gap(samples: Sequence[float], cdf: object) -> float:
    """Kolmogorov-Smirnov statistic of `samples` against the distribution function `cdf`."""
    ordered = sorted(samples)
    n = len(ordered)
    return max(
        max(abs((i + 1) / n - cdf(x)), abs(i / n - cdf(x)))  # type: ignore[operator]
        for i, x in enumerate(ordered)
    )


@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_a_log_range_is_drawn_log_uniformly_not_uniformly(algorithm: str) -> None:
    drawn = hyperopt(algorithm, {"random_state": "11"}, [LEARNING_RATE]).suggest([], 400)
    values = [float(d["lr"]) for d in drawn]
    assert all(1e-4 <= v <= 1e-1 for v in values)

    low, high = math.log(1e-4), math.log(1e-1)
    log_uniform = largest_gap([math.log(v) for v in values], lambda x: (x - low) / (high - low))
    uniform = largest_gap(values, lambda x: (x - 1e-4) / (1e-1 - 1e-4))
    # 400 draws: 0.098 is the 0.1% critical value; a uniform draw would sit near zero instead.
    assert log_uniform < 0.098 < uniform, (log_uniform, uniform)


def test_ints_are_whole_and_choices_verbatim_and_steps_are_kept() -> None:
    parameters = [
        Parameter("batch", "int", 16, 256),
        Parameter("optimizer", "categorical", choices=("sgd", "adam", "adamw")),
        Parameter("dropout", "double", 0.0, 0.5, step=0.1),
        Parameter("epochs", "discrete", choices=("1", "2", "4")),
    ]
    drawn = hyperopt("random", {"random_state": "3"}, parameters).suggest([], 50)
    assert len(drawn) == 50
    for assignment in drawn:
        assert assignment["batch"].isdigit()
        assert 16 <= int(assignment["batch"]) <= 256
        assert assignment["optimizer"] in ("sgd", "adam", "adamw")
        assert assignment["epochs"] in ("1", "2", "4")
        tenths = float(assignment["dropout"]) * 10
        assert abs(tenths - round(tenths)) < 1e-9
        assert 0 <= round(tenths) <= 5
    assert {a["optimizer"] for a in drawn} == {"sgd", "adam", "adamw"}


def test_the_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    def stream(seed: str) -> list[dict[str, str]]:
        search = hyperopt("random", {"random_state": seed}, [LEARNING_RATE])
        return search.suggest([], 2) + search.suggest([], 3)

    assert stream("5") == stream("5")
    assert stream("5") != stream("6")


def loss(lr: float) -> float:
    """Best at 0.01, worse by the decade."""
    return abs(math.log(lr) - math.log(0.01))


def history(count: int) -> list[Observed]:
    drawn = hyperopt("random", {"random_state": "1"}, [LEARNING_RATE]).suggest([], count)
    return [Observed(f"t{i}", a, loss(float(a["lr"]))) for i, a in enumerate(drawn)]


def test_tpe_learns_from_the_finished_trials_and_random_does_not() -> None:
    """With 40 trials saying that lr near 0.01 is best, TPE's next draws cluster there."""
    observed = history(40)

    def median_loss(algorithm: str) -> float:
        drawn = [
            hyperopt(algorithm, {"random_state": str(seed)}, [LEARNING_RATE]).suggest(observed, 1)
            for seed in range(20)
        ]
        losses = sorted(loss(float(d["lr"])) for [d] in drawn)
        return (losses[9] + losses[10]) / 2

    assert median_loss("tpe") < median_loss("random") / 2


def test_tpe_draws_its_first_batch_at_random_then_repeats_one_point_per_batch() -> None:
    """Katib v0.19.0's service: the start-up count is the batch size, and every trial of a
    later batch is asked for on the same history with the same seed."""
    search = hyperopt("tpe", {"random_state": "8"}, [LEARNING_RATE])
    first = search.suggest([], 3)
    assert len({d["lr"] for d in first}) == 3
    later = search.suggest(history(3), 3)
    assert len(later) == 3
    assert len({d["lr"] for d in later}) == 1
    random_batch = hyperopt("random", {"random_state": "8"}, [LEARNING_RATE])
    random_batch.suggest([], 3)
    assert len({d["lr"] for d in random_batch.suggest(history(3), 3)}) == 3


@pytest.mark.parametrize(
    ("algorithm", "settings", "refusal"),
    [
        ("random", {"gamma": "0.2"}, "unknown setting gamma for algorithm random"),
        ("random", {"random_state": "-1"}, r"random_state must be zero or greater, not -1"),
        ("tpe", {"gamma": "1.5"}, r"gamma must be in \(0, 1\), not 1.5"),
        ("tpe", {"n_EI_candidates": "many"}, r"failed to validate n_EI_candidates\(many\)"),
        ("tpe", {"n_startup_trials": "5"}, "unknown setting n_startup_trials"),
        ("cmaes", {}, "unknown algorithm name cmaes"),
    ],
)
def test_settings_katibs_service_refuses_are_refused_by_name(
    algorithm: str, settings: dict[str, str], refusal: str
) -> None:
    with pytest.raises(SettingsError, match=refusal):
        hyperopt(algorithm, settings, [LEARNING_RATE])


def test_tpe_takes_its_settings() -> None:
    settings = {"gamma": "0.3", "prior_weight": "2", "n_EI_candidates": "12", "random_state": "4"}
    [drawn] = hyperopt("tpe", settings, [LEARNING_RATE]).suggest([], 1)
    assert 1e-4 <= float(drawn["lr"]) <= 1e-1


def test_grid_visits_every_combination_once_telling_each_result_by_its_assignments() -> None:
    parameters = [
        Parameter("lr", "double", 0.01, 0.05, step=0.01),
        Parameter("optimizer", "categorical", choices=("sgd", "adam")),
        Parameter("epochs", "int", 1, 3, step=2),
    ]
    search = optuna("grid", {"random_state": "3"}, parameters, max_trials=20, maximize=True)
    seen: list[dict[str, str]] = []
    finished: list[Observed] = []
    while len(seen) < 20:
        batch = search.suggest(finished, 3 if len(seen) < 18 else 2)
        seen += batch
        finished += [Observed(f"t{len(finished) + i}", a, 0.5) for i, a in enumerate(batch)]
    rates = ("0.01", "0.02", "0.03", "0.04", "0.05")
    every = {(r, o, e) for r, o, e in itertools.product(rates, ("sgd", "adam"), ("1", "3"))}
    assert {(a["lr"], a["optimizer"], a["epochs"]) for a in seen} == every
    # Every trial told once, by its assignments, but the last batch (never asked beyond it).
    states = [t.state.name for t in search.study.trials]
    assert states == ["COMPLETE"] * 18 + ["RUNNING"] * 2


@pytest.mark.parametrize(
    ("parameters", "max_trials", "refusal"),
    [
        ([Parameter("lr", "double", 0.01, 0.05, step=0.01)], 6, "maxTrialCount 6 is more than"),
        ([Parameter("lr", "double", 0.01, 0.05)], 2, "lr has no step"),
    ],
)
def test_grid_refuses_more_trials_than_combinations_and_a_double_without_step(
    parameters: list[Parameter], max_trials: int, refusal: str
) -> None:
    with pytest.raises(SettingsError, match=refusal):
        optuna("grid", {}, parameters, max_trials=max_trials)


def test_multivariate_tpe_draws_a_log_range_log_uniformly_while_it_starts_up() -> None:
    settings = {"random_state": "5", "n_startup_trials": "500"}
    drawn = optuna("multivariate-tpe", settings, [LEARNING_RATE]).suggest([], 400)
    values = [float(d["lr"]) for d in drawn]
    assert all(1e-4 <= v <= 1e-1 for v in values)
    low, high = math.log(1e-4), math.log(1e-1)
    assert largest_gap([math.log(v) for v in values], lambda x: (x - low) / (high - low)) < 0.098


def test_multivariate_tpe_learns_and_a_trial_it_never_suggested_fails_the_request() -> None:
    search = optuna(
        "multivariate-tpe", {"random_state": "2", "n_startup_trials": "10"}, [LEARNING_RATE]
    )
    finished: list[Observed] = []
    late = []
    for round_ in range(30):
        [assignment] = search.suggest(finished, 1)
        finished = [Observed(f"r{round_}", assignment, loss(float(assignment["lr"])))]
        late.append(finished[0].value)
    # Drawn at random, the median distance from 0.01 is 1.73 (in e); TPE's last ten come closer.
    ordered = sorted(late[20:])
    assert (ordered[4] + ordered[5]) / 2 < 1.2, late[20:]

    stranger = Observed("stranger", {"lr": "0.5"}, 0.1)
    with pytest.raises(ValueError, match="stranger was never suggested here"):
        search.suggest([stranger], 1)


@pytest.mark.parametrize(
    ("algorithm", "settings", "refusal"),
    [
        ("multivariate-tpe", {"gamma": "0.2"}, "unknown setting gamma"),
        ("multivariate-tpe", {"n_startup_trials": "-1"}, "n_startup_trials must be zero"),
        ("grid", {"n_startup_trials": "3"}, "unknown setting n_startup_trials for algorithm grid"),
    ],
)
def test_settings_katibs_optuna_service_refuses_are_refused_by_name(
    algorithm: str, settings: dict[str, str], refusal: str
) -> None:
    with pytest.raises(SettingsError, match=refusal):
        optuna(algorithm, settings, [Parameter("n", "int", 1, 9)], max_trials=3)


def skopt(settings: dict[str, str], parameters: Sequence[Parameter]) -> SkoptSearch:
    return SkoptSearch(SearchSpec("bayesianoptimization", tuple(parameters), settings))


def test_bayesianoptimization_draws_every_double_log_uniformly_even_a_linear_range() -> None:
    linear = Parameter("lr", "double", 1e-4, 1e-1)  # no logUniform: skopt logs it anyway
    settings = {"random_state": "6", "n_initial_points": "400"}
    drawn = skopt(settings, [linear]).suggest([], 400)
    values = [float(d["lr"]) for d in drawn]
    low, high = math.log(1e-4), math.log(1e-1)
    assert largest_gap([math.log(v) for v in values], lambda x: (x - low) / (high - low)) < 0.098


def test_bayesianoptimization_learns_from_each_finished_trial_once() -> None:
    search = skopt({"random_state": "3", "n_initial_points": "5"}, [LEARNING_RATE])
    finished: list[Observed] = []
    late = []
    for round_ in range(15):
        [assignment] = search.suggest(finished, 1)
        finished = [*finished, Observed(f"r{round_}", assignment, loss(float(assignment["lr"])))]
        late.append(finished[-1].value)
    assert len(search.optimizer.Xi) == 14  # every finished trial told once, the last not yet
    # Two of the last five within 0.2 (in e) of the best: 3% of the time for random draws.
    assert sorted(late[10:])[1] < 0.2, late[10:]


@pytest.mark.parametrize(
    ("settings", "refusal"),
    [
        ({"base_estimator": "SVM"}, "base_estimator must be GP, RF, ET or GBRT, not SVM"),
        ({"acq_func": "UCB"}, "acq_func must be gp_hedge"),
        ({"n_initial_points": "-2"}, "n_initial_points must be zero or greater"),
        ({"gamma": "0.5"}, "unknown setting gamma for algorithm bayesianoptimization"),
    ],
)
def test_settings_katibs_skopt_service_refuses_are_refused_by_name(
    settings: dict[str, str], refusal: str
) -> None:
    with pytest.raises(SettingsError, match=refusal):
        skopt(settings, [LEARNING_RATE])


def test_median_stop_is_the_mean_of_the_succeeded_trials_first_reports_once_enough() -> None:
    rule = MedianStop("medianstop", {"min_trials_required": "2", "start_step": "2"})
    rule.learn("a", [0.5, 0.7, 0.99])  # only the first two reports count: 0.6
    assert rule.threshold() is None
    assert rule.knows("a")
    assert not rule.knows("b")
    rule.learn("b", [0.8, 0.9])  # 0.85
    assert rule.threshold() == pytest.approx((0.6 + 0.85) / 2)
    defaults = MedianStop("medianstop", {})
    assert (defaults.min_trials, defaults.start_step) == (3, 4)


@pytest.mark.parametrize(
    ("algorithm", "settings", "refusal"),
    [
        ("medianstop", {"min_trials_required": "0"}, "min_trials_required must be greater"),
        ("medianstop", {"start_step": "0"}, "start_step must be one or greater, not 0"),
        ("medianstop", {"patience": "3"}, "unknown setting patience for algorithm medianstop"),
        ("truncation", {}, "unknown algorithm name truncation"),
    ],
)
def test_median_stop_settings_katib_refuses_are_refused_by_name(
    algorithm: str, settings: dict[str, str], refusal: str
) -> None:
    with pytest.raises(SettingsError, match=refusal):
        MedianStop(algorithm, settings)


def test_an_early_stopped_trial_keeps_its_conditions_and_gains_one() -> None:
    running = {"type": "Running", "status": "True", "reason": "TrialRunning"}
    patch = early_stopped({"status": {"conditions": [running]}}, "2026-12-06T10:00:00Z")
    assert patch["status"]["conditions"][0] == running
    added = patch["status"]["conditions"][1]
    assert (added["type"], added["status"], added["lastTransitionTime"]) == (
        "EarlyStopped",
        "True",
        "2026-12-06T10:00:00Z",
    )
