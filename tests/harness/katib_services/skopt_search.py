"""Katib's `bayesianoptimization` on scikit-optimize, as Katib v0.19.0's skopt service runs it.

One `skopt.Optimizer` per Experiment, told each finished trial once (by name) and asked for a
request's batch at once. Every range of doubles is searched log-uniformly whatever its
distribution, as there (our CRD asks such a range for a min above 0 for that reason); ints are
uniform and lists categorical. Objectives become a loss, negated when maximized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import skopt

from katib_services.space import Observed, Parameter, SearchSpec, parse_settings

SETTINGS = {
    "bayesianoptimization": (
        "base_estimator",
        "n_initial_points",
        "acq_func",
        "acq_optimizer",
        "random_state",
    )
}
# Katib's skopt service's defaults for the settings an Experiment leaves out.
DEFAULTS = {"base_estimator": "GP", "n_initial_points": 10, "acq_func": "gp_hedge"}


def dimension(parameter: Parameter) -> Any:
    """skopt's dimension for a parameter."""
    if parameter.listed:
        return skopt.space.Categorical(list(parameter.choices), name=parameter.name)
    if parameter.kind == "int":
        return skopt.space.Integer(int(parameter.low), int(parameter.high), name=parameter.name)
    return skopt.space.Real(parameter.low, parameter.high, "log-uniform", name=parameter.name)


class SkoptSearch:
    """One Experiment's skopt optimizer."""

    def __init__(self, spec: SearchSpec) -> None:
        seed, settings = parse_settings(spec.algorithm, spec.settings, SETTINGS)
        self.parameters = list(spec.parameters)
        self.optimizer = skopt.Optimizer(
            [dimension(p) for p in self.parameters],
            random_state=seed,
            **{**DEFAULTS, **settings},
        )
        self.sign = -1.0 if spec.maximize else 1.0
        self.told: set[str] = set()

    def suggest(self, observed: Sequence[Observed], count: int) -> list[dict[str, str]]:
        """Tell the optimizer what finished since the last request, then ask for `count`."""
        new = [trial for trial in observed if trial.name not in self.told]
        if new:
            self.told.update(trial.name for trial in new)
            points = [
                [self._stored(p, t.assignments[p.name]) for p in self.parameters] for t in new
            ]
            self.optimizer.tell(points, [self.sign * trial.value for trial in new])
        asked = self.optimizer.ask(n_points=count)
        return [
            {p.name: p.render(value) for p, value in zip(self.parameters, point, strict=True)}
            for point in asked
        ]

    @staticmethod
    def _stored(parameter: Parameter, assignment: str) -> Any:
        if parameter.listed:
            return assignment
        return int(assignment) if parameter.kind == "int" else float(assignment)
