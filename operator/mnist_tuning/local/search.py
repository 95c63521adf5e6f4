"""Katib's search space and algorithm, expressed in Optuna terms.

The Experiment that `expand()` writes is the single source of truth: the local engine
reads its `parameters` and `algorithmSettings` rather than the MnistTuning spec, so the
cluster and this machine search exactly the same space.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import (
    BaseSampler,
    CmaEsSampler,
    GPSampler,
    QMCSampler,
    RandomSampler,
    TPESampler,
)
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

from mnist_tuning.api.spec import real_grid

# Algorithms whose k-th point depends on the seed alone (see `replayed`).
REPLAYED = ("random", "grid")
# No budget asks a grid for more points (maxTrials is at most 1000).
MAX_GRID_TRIALS = 1000
# The random sampler reads no trial; sample_independent still takes one.
_TEMPLATE: FrozenTrial = create_trial(state=TrialState.WAITING)


class UnsupportedSearchError(ValueError):
    """The Experiment asks for something the local engine cannot do; the message says what."""


@dataclass(frozen=True)
class Searched:
    """One Katib parameter: the Optuna distribution to sample and how to hand the value over.

    Optuna cannot step a log scale; Katib can (`qloguniform`). Such a parameter is sampled
    on the log scale and rounded to its step when it becomes the trial's argument, like
    Katib's suggestion service does, but kept inside [min, max].
    """

    name: str
    distribution: BaseDistribution
    low: float = 0.0
    high: float = 0.0
    step: float | None = None

    def assignment(self, value: Any) -> str:
        """Render a sampled value as Katib's suggestion would: `str()` of the (stepped) value."""
        if self.step is None:
            return str(value)
        stepped = round(float(value) / self.step) * self.step
        if stepped < self.low:
            stepped = math.ceil(self.low / self.step) * self.step
        if stepped > self.high:
            stepped = math.floor(self.high / self.step) * self.step
        stepped = min(max(stepped, self.low), self.high)
        if isinstance(self.distribution, IntDistribution):
            return str(int(stepped))
        tidy = float(f"{stepped:.12g}")  # drop the float noise of k * step
        return str(tidy if self.low <= tidy <= self.high else stepped)


def searched(parameter: Mapping[str, Any], *, log_reals: bool = False) -> Searched:
    """Map one Katib `ParameterSpec` to the Optuna distribution that samples the same space.

    `log_reals`: sample every real range on a log scale, as Katib's skopt service does.
    """
    name = parameter["name"]
    kind = parameter["parameterType"]
    space = parameter["feasibleSpace"]
    log = space.get("distribution") == "logUniform" or (log_reals and kind == "double")
    if kind in ("categorical", "discrete"):
        # Katib hands list values to the trial verbatim, as the strings in the spec.
        return Searched(name, CategoricalDistribution([str(value) for value in space["list"]]))
    if kind not in ("int", "double"):
        raise UnsupportedSearchError(f"parameter {name}: type {kind} is not supported locally")
    low, high = float(space["min"]), float(space["max"])
    step = float(space["step"]) if space.get("step") else None
    if kind == "int":
        int_step = int(step or 1)
        if log and int_step > 1:
            return Searched(name, IntDistribution(int(low), int(high), log=True), low, high, step)
        return Searched(name, IntDistribution(int(low), int(high), log=log, step=int_step))
    if log and step is not None:
        return Searched(name, FloatDistribution(low, high, log=True), low, high, step)
    return Searched(name, FloatDistribution(low, high, log=log, step=step))


def search_space(experiment: Mapping[str, Any]) -> list[Searched]:
    """All searched parameters of an Experiment, in spec order, as its algorithm samples them."""
    log_reals = algorithm(experiment) == "bayesianoptimization"
    return [searched(p, log_reals=log_reals) for p in experiment["spec"]["parameters"]]


def algorithm(experiment: Mapping[str, Any]) -> str:
    """Return the Experiment's algorithm name."""
    name: str = experiment["spec"]["algorithm"]["algorithmName"]
    return name


def replayed(experiment: Mapping[str, Any]) -> bool:
    """Whether point k of the search depends on the seed alone, so a resumed run redraws it.

    Random and grid do; the others learn from the trials told so far, so a resumed run asks
    its sampler afresh, as Katib's services do after a restart.
    """
    return algorithm(experiment) in REPLAYED


def distributions(space: Sequence[Searched]) -> dict[str, BaseDistribution]:
    """Give the Optuna view of a search space, by Katib parameter name."""
    return {s.name: s.distribution for s in space}


def assignments(space: Sequence[Searched], params: Mapping[str, Any]) -> dict[str, str]:
    """Katib parameter assignments (name → string) for a trial's sampled values."""
    return {s.name: s.assignment(params[s.name]) for s in space}


def make_sampler(experiment: Mapping[str, Any], seed: int) -> BaseSampler:
    """Make the Optuna sampler that matches the Experiment's algorithm, seeded.

    Settings follow the Katib service that runs the algorithm: tpe and multivariate-tpe
    with a constant liar (optuna service), sobol unscrambled (goptuna); grid trials are all
    enqueued from `grid_points`, so its sampler is never asked.
    """
    name = algorithm(experiment)
    samplers: dict[str, Callable[[], BaseSampler]] = {
        "random": lambda: RandomSampler(seed=seed),
        "grid": lambda: RandomSampler(seed=seed),
        "tpe": lambda: TPESampler(seed=seed, constant_liar=True),
        "multivariate-tpe": lambda: TPESampler(seed=seed, multivariate=True, constant_liar=True),
        "cmaes": lambda: CmaEsSampler(seed=seed, warn_independent_sampling=False),
        "sobol": lambda: QMCSampler(
            qmc_type="sobol",
            scramble=False,
            seed=seed,
            warn_asynchronous_seeding=False,
            warn_independent_sampling=False,
        ),
        "bayesianoptimization": lambda: GPSampler(seed=seed, warn_independent_sampling=False),
    }
    if name not in samplers:
        raise UnsupportedSearchError(f"algorithm {name} is not supported locally")
    return samplers[name]()


def grid_points(experiment: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    """Katib's grid, every combination once, in a seeded order (as its GridSampler draws).

    The values per parameter are the optuna service's (`real_grid` for real ranges); the
    order is a seeded sample of combination indices, decoded lazily, so a huge grid costs
    only the trials a budget can ask for.
    """
    axes: list[tuple[str, list[Any]]] = []
    for parameter in experiment["spec"]["parameters"]:
        space = parameter["feasibleSpace"]
        kind = parameter["parameterType"]
        if kind in ("categorical", "discrete"):
            values: list[Any] = [str(v) for v in space["list"]]
        elif kind == "int":
            values = list(
                range(int(space["min"]), int(space["max"]) + 1, int(space.get("step") or 1))
            )
        else:
            values = real_grid(float(space["min"]), float(space["max"]), float(space["step"]))
        if len(values) > 1:  # Optuna asks nothing of a one-value parameter
            axes.append((parameter["name"], values))
    size = math.prod(len(values) for _, values in axes)
    order = random.Random(seed).sample(range(size), min(size, MAX_GRID_TRIALS))
    points = []
    for index in order:
        point = {}
        for name, values in reversed(axes):
            index, at = divmod(index, len(values))
            point[name] = values[at]
        points.append(point)
    return points


def draw(
    sampler: BaseSampler,
    study: Study,
    space: Mapping[str, BaseDistribution],
    between: Callable[[], None],
) -> dict[str, Any]:
    """Draw the sampler's next point as `Study.ask(space)` would, in memory.

    One value per parameter in space order, none for a one-value parameter (Optuna draws
    nothing there either), so a seeded sampler gives the same sequence as asking does.
    `between` runs between two draws (a test seam).
    """
    point: dict[str, Any] = {}
    for name, dist in space.items():
        if dist.single():
            continue
        if point:
            between()
        point[name] = sampler.sample_independent(study, _TEMPLATE, name, dist)
    return point


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    """Write one parameter of a trial; an enqueued trial gets its fixed value, as in `ask`."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    raise UnsupportedSearchError(f"parameter {name}: {type(dist).__name__} is not supported")
