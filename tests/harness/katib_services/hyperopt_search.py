"""Katib's `random` and `tpe` on hyperopt, as Katib v0.19.0's hyperopt service runs them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from hyperopt import STATUS_OK, Domain, Trials, hp, rand, space_eval, tpe

from katib_services.space import Observed, Parameter, SearchSpec, parse_settings

# The settings Katib's hyperopt service accepts, per algorithm; anything else is refused.
SETTINGS = {
    "random": ("random_state",),
    "tpe": ("random_state", "gamma", "prior_weight", "n_EI_candidates"),
}
# hyperopt's trial state for a finished trial (JOB_STATE_DONE).
DONE = 2
SEED_BOUND = 2**31 - 1


def expression(parameter: Parameter) -> Any:
    """hyperopt's expression for a parameter: choices, or a (quantized) distribution."""
    name = parameter.name
    if parameter.listed:
        return hp.choice(name, list(parameter.choices))
    step = (
        parameter.step if parameter.step is not None else (1.0 if parameter.kind == "int" else None)
    )
    low, high = parameter.low, parameter.high
    if parameter.log:
        low, high = math.log(low), math.log(high)
    if parameter.distribution in ("normal", "logNormal"):
        # The range holds three standard deviations either side of its middle.
        centre, spread = (low + high) / 2, (high - low) / 6
        if step is None:
            return (hp.lognormal if parameter.log else hp.normal)(name, centre, spread)
        return (hp.qlognormal if parameter.log else hp.qnormal)(name, centre, spread, step)
    if step is None:
        return (hp.loguniform if parameter.log else hp.uniform)(name, low, high)
    return (hp.qloguniform if parameter.log else hp.quniform)(name, low, high, step)


def stored(parameter: Parameter, assignment: str) -> float | int:
    """What hyperopt keeps for a trial's assignment: the index of a choice, else the value."""
    if parameter.listed:
        return parameter.choices.index(assignment)
    return float(assignment)


class HyperoptSearch:
    """One Experiment's search: its space, its algorithm and a seeded stream of call seeds.

    As Katib's service does: one random state seeded with `random_state` gives each request a
    seed of its own, so the values depend on the seed and on the batches asked before. `tpe`
    draws its first batch at random (its start-up count is the batch's size) and then suggests
    each trial of a batch from the same history and seed: a later batch of several trials
    repeats one point, in Katib v0.19.0's service and here. Objectives become hyperopt's loss,
    negated when maximized.
    """

    def __init__(self, spec: SearchSpec) -> None:
        seed, self.settings = parse_settings(spec.algorithm, spec.settings, SETTINGS)
        self.parameters = {p.name: p for p in spec.parameters}
        self.space = {p.name: expression(p) for p in spec.parameters}
        self.domain = Domain(lambda _: 0.0, self.space)
        self.random = spec.algorithm == "random"
        self.sign = -1.0 if spec.maximize else 1.0
        self.first = True
        self.seeds = np.random.RandomState(seed)

    def _history(self, observed: Sequence[Observed]) -> Trials:
        trials = Trials()
        ids = trials.new_trial_ids(len(observed))
        miscs = [
            {
                "tid": tid,
                "cmd": self.domain.cmd,
                "workdir": None,
                "idxs": {name: [tid] for name in self.parameters},
                "vals": {
                    name: [stored(parameter, trial.assignments[name])]
                    for name, parameter in self.parameters.items()
                },
            }
            for tid, trial in zip(ids, observed, strict=True)
        ]
        results = [{"loss": self.sign * trial.value, "status": STATUS_OK} for trial in observed]
        docs = trials.new_trial_docs(ids, [None] * len(ids), results, miscs)
        for doc in docs:
            doc["state"] = DONE
        trials.insert_trial_docs(docs)
        trials.refresh()
        return trials

    def _draw(self, trials: Trials, count: int) -> list[dict[str, Any]]:
        ids = trials.new_trial_ids(count)
        seed = int(self.seeds.randint(SEED_BOUND))
        if self.random:
            return list(rand.suggest(ids, self.domain, trials, seed))
        learn = partial(tpe.suggest, domain=self.domain, trials=trials, seed=seed,
                        n_startup_jobs=count, **self.settings)  # fmt: skip
        if self.first:
            self.first = False
            return list(learn(ids))
        return [learn([one])[0] for one in ids]

    def suggest(self, observed: Sequence[Observed], count: int) -> list[dict[str, str]]:
        """New assignments for a request of `count`, knowing every finished trial in `observed`.

        hyperopt's TPE answers one trial per call once it learns: a first batch drawn on a
        history it already learns from (a restarted service) comes back with one trial, as
        Katib's does.
        """
        chosen = []
        for doc in self._draw(self._history(observed), count):
            values = space_eval(self.space, {k: v[0] for k, v in doc["misc"]["vals"].items()})
            chosen.append({name: p.render(values[name]) for name, p in self.parameters.items()})
        return chosen
