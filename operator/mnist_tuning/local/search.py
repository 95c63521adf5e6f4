"""Katib's search space and algorithm, expressed in Optuna terms.

The Experiment that `expand()` writes is the single source of truth: the local engine
reads its `parameters` and `algorithmSettings` rather than the MnistTuning spec, so the
cluster and this machine search exactly the same space.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial


class UnsupportedSearchError(ValueError):
    """The Experiment asks for something the local engine cannot do; the message says what."""


def distribution(parameter: Mapping[str, Any]) -> BaseDistribution:
    """Map one Katib `ParameterSpec` to the Optuna distribution that samples the same space."""
    kind = parameter["parameterType"]
    space = parameter["feasibleSpace"]
    log = space.get("distribution") == "logUniform"
    if kind in ("categorical", "discrete"):
        # Katib hands list values to the trial verbatim, as the strings in the spec.
        return CategoricalDistribution([str(value) for value in space["list"]])
    if kind == "int":
        step = int(space.get("step") or 1)
        return IntDistribution(int(space["min"]), int(space["max"]), log=log, step=step)
    if kind == "double":
        float_step = float(space["step"]) if space.get("step") else None
        if log and float_step is not None:
            raise UnsupportedSearchError(
                f"parameter {parameter['name']}: a log scale with a step cannot be sampled "
                "locally; drop the step or use scale linear"
            )
        return FloatDistribution(float(space["min"]), float(space["max"]), log=log, step=float_step)
    raise UnsupportedSearchError(f"parameter {parameter['name']}: type {kind} is not supported")


def distributions(experiment: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """All searched parameters of an Experiment, by Katib parameter name, in spec order."""
    return {p["name"]: distribution(p) for p in experiment["spec"]["parameters"]}


def katib_value(value: Any) -> str:
    """Render a sampled value the way Katib's suggestion service does: `str()` of the value."""
    return str(value)


def make_sampler(experiment: Mapping[str, Any], seed: int) -> RandomSampler:
    """Make the sampler for the Experiment's algorithm (only `random` exists in the API)."""
    name = experiment["spec"]["algorithm"]["algorithmName"]
    if name != "random":
        raise UnsupportedSearchError(f"algorithm {name} is not supported locally; use random")
    return RandomSampler(seed=seed)


def replay(
    sampler: BaseSampler,
    study: Study,
    template: FrozenTrial,
    space: Mapping[str, BaseDistribution],
    draws: int,
) -> None:
    """Advance a fresh sampler past `draws` earlier samples.

    A resumed run then draws the same points an uninterrupted run would have drawn,
    instead of starting the seeded sequence again and repeating finished trials.
    """
    for _ in range(draws):
        for name, dist in space.items():
            if not dist.single():  # Optuna draws nothing for a one-value space
                sampler.sample_independent(study, template, name, dist)


def sampled_count(trials: Iterable[FrozenTrial], retry_key: str) -> int:
    """How many trials took their parameters from the sampler (re-runs reuse earlier ones)."""
    return sum(1 for t in trials if retry_key not in t.user_attrs and t.params)


def params_in_order(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, str]:
    """Katib parameter assignments (name → string) in the Experiment's parameter order."""
    return {name: katib_value(params[name]) for name in names}
