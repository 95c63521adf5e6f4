"""Katib's `grid` and `multivariate-tpe` on optuna, as Katib v0.19.0's optuna service runs them.

The service keeps one optuna study for the Experiment: it asks the study for each assignment,
remembers which optuna trial each assignment string came from, and tells the study a Katib
trial's objective the first time the trial arrives finished, found by its assignments. A
finished trial it never suggested fails the request. Normal distributions are read as uniform
ones, and a log range of ints as one with a step of 1, as there.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from katib_services.space import Observed, Parameter, SearchSpec, SettingsError, parse_settings

SETTINGS = {
    "grid": ("random_state",),
    "multivariate-tpe": ("random_state", "n_startup_trials", "n_ei_candidates"),
}
# The smallest lower end of a log range of doubles (its log must exist).
LOG_FLOOR = 1e-10


def distribution(parameter: Parameter) -> BaseDistribution:
    """optuna's distribution for a parameter: normal distributions are read as uniform ones."""
    if parameter.listed:
        return CategoricalDistribution(list(parameter.choices))
    if parameter.kind == "int":
        if parameter.log:
            return IntDistribution(max(1, int(parameter.low)), int(parameter.high), log=True)
        step = int(parameter.step) if parameter.step else 1
        return IntDistribution(int(parameter.low), int(parameter.high), step=step)
    if parameter.log:
        return FloatDistribution(max(LOG_FLOOR, parameter.low), parameter.high, log=True)
    return FloatDistribution(parameter.low, parameter.high, step=parameter.step)


def grid_values(parameter: Parameter) -> list[Any]:
    """Every value `grid` visits: each step of a range (doubles need one), or the list."""
    if parameter.listed:
        return list(parameter.choices)
    if parameter.kind == "int":
        return list(range(int(parameter.low), int(parameter.high) + 1, int(parameter.step or 1)))
    if not parameter.step:
        raise SettingsError(
            f"{parameter.name} has no step: grid needs a step for every double to list its values"
        )
    values = np.arange(parameter.low, parameter.high + parameter.step, parameter.step)
    return [float(v) for v in values if v <= parameter.high]


def key(assignments: Mapping[str, str]) -> str:
    """An assignment set as one string, independent of the order of its parameters."""
    return ",".join(f"{name}:{assignments[name]}" for name in sorted(assignments))


class OptunaSearch:
    """One Experiment's optuna study, told each finished trial once."""

    def __init__(self, spec: SearchSpec) -> None:
        seed, parsed = parse_settings(spec.algorithm, spec.settings, SETTINGS)
        parameters = spec.parameters
        self.parameters = {p.name: p for p in parameters}
        sampler: optuna.samplers.BaseSampler
        if spec.algorithm == "grid":
            grid = {p.name: grid_values(p) for p in parameters}
            combinations = len(list(itertools.product(*grid.values())))
            if spec.max_trials > combinations:
                raise SettingsError(
                    f"maxTrialCount {spec.max_trials} is more than the {combinations} "
                    "combinations grid can visit"
                )
            sampler = optuna.samplers.GridSampler(grid, seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(
                multivariate=True, constant_liar=True, seed=seed, **parsed
            )
        direction = "maximize" if spec.maximize else "minimize"
        self.study = optuna.create_study(sampler=sampler, direction=direction)
        self.distributions = {p.name: distribution(p) for p in parameters}
        self.asked: dict[str, list[int]] = defaultdict(list)
        self.told: set[str] = set()

    def _tell(self, observed: Sequence[Observed]) -> None:
        for trial in observed:
            if trial.name in self.told:
                continue
            self.told.add(trial.name)
            numbers = self.asked[key(trial.assignments)]
            if not numbers:
                raise ValueError(f"finished trial {trial.name} was never suggested here")
            self.study.tell(numbers.pop(0), trial.value)

    def suggest(self, observed: Sequence[Observed], count: int) -> list[dict[str, str]]:
        """Tell the study what finished, then ask it `count` times."""
        self._tell(observed)
        chosen = []
        for _ in range(count):
            trial = self.study.ask(fixed_distributions=self.distributions)
            assignment = {
                name: parameter.render(trial.params[name])
                for name, parameter in self.parameters.items()
            }
            self.asked[key(assignment)].append(trial.number)
            chosen.append(assignment)
        return chosen
