"""Katib's search space and algorithm, expressed in Optuna terms.

The Experiment that `expand()` writes is the single source of truth: the local engine
reads its `parameters` and `algorithmSettings` rather than the MnistTuning spec, so the
cluster and this machine search exactly the same space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

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


def searched(parameter: Mapping[str, Any]) -> Searched:
    """Map one Katib `ParameterSpec` to the Optuna distribution that samples the same space."""
    name = parameter["name"]
    kind = parameter["parameterType"]
    space = parameter["feasibleSpace"]
    log = space.get("distribution") == "logUniform"
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
    """All searched parameters of an Experiment, in spec order."""
    return [searched(p) for p in experiment["spec"]["parameters"]]


def distributions(space: Sequence[Searched]) -> dict[str, BaseDistribution]:
    """Give the Optuna view of a search space, by Katib parameter name."""
    return {s.name: s.distribution for s in space}


def assignments(space: Sequence[Searched], params: Mapping[str, Any]) -> dict[str, str]:
    """Katib parameter assignments (name → string) for a trial's sampled values."""
    return {s.name: s.assignment(params[s.name]) for s in space}


def make_sampler(experiment: Mapping[str, Any], seed: int) -> RandomSampler:
    """Make the sampler for the Experiment's algorithm (only `random` exists in the API)."""
    name = experiment["spec"]["algorithm"]["algorithmName"]
    if name != "random":
        raise UnsupportedSearchError(f"algorithm {name} is not supported locally; use random")
    return RandomSampler(seed=seed)


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
