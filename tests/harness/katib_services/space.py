"""What every stand-in search reads from an Experiment: parameters, settings, finished trials.

Plain values: `server` turns Katib's protobuf messages into these, so the searches run (and
are tested) without gRPC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Each setting the services know: its type, the range Katib's services check, how to say so.
SETTING_RULES: dict[str, tuple[Callable[[str], Any], Callable[[Any], bool], str]] = {
    "random_state": (int, lambda v: v >= 0, "must be zero or greater"),
    "gamma": (float, lambda v: 0 < v < 1, "must be in (0, 1)"),
    "prior_weight": (float, lambda v: v > 0, "must be greater than zero"),
    "n_EI_candidates": (int, lambda v: v > 0, "must be greater than zero"),
    "n_startup_trials": (int, lambda v: v >= 0, "must be zero or greater"),
    "n_ei_candidates": (int, lambda v: v >= 0, "must be zero or greater"),
    "n_initial_points": (int, lambda v: v >= 0, "must be zero or greater"),
    "min_trials_required": (int, lambda v: v > 0, "must be greater than zero"),
    "start_step": (int, lambda v: v >= 1, "must be one or greater"),
    "base_estimator": (
        str,
        lambda v: v in ("GP", "RF", "ET", "GBRT"),
        "must be GP, RF, ET or GBRT",
    ),
    "acq_func": (
        str,
        lambda v: v in ("gp_hedge", "LCB", "EI", "PI", "EIps", "PIps"),
        "must be gp_hedge, LCB, EI, PI, EIps or PIps",
    ),
    "acq_optimizer": (
        str,
        lambda v: v in ("auto", "sampling", "lbfgs"),
        "must be auto, sampling or lbfgs",
    ),
}


class SettingsError(ValueError):
    """An Experiment Katib's service refuses; the message names the setting or parameter."""


@dataclass(frozen=True)
class Parameter:
    """One of the Experiment's parameters, as its feasible space describes it."""

    name: str
    kind: str  # double, int, discrete or categorical
    low: float = 0.0
    high: float = 0.0
    step: float | None = None
    choices: tuple[str, ...] = ()
    distribution: str = "uniform"  # uniform, logUniform, normal or logNormal

    @property
    def listed(self) -> bool:
        """Its values are a list (discrete, categorical), not a range."""
        return self.kind in ("discrete", "categorical")

    @property
    def log(self) -> bool:
        return self.distribution in ("logUniform", "logNormal")

    def render(self, value: Any) -> str:
        """The assignment's string, as Katib's services write it: ints whole, floats repr'd."""
        if self.listed:
            return str(value)
        if self.kind == "int":
            return str(int(float(value)))
        return repr(float(value))


@dataclass(frozen=True)
class SearchSpec:
    """What a service reads from an Experiment to set its search up."""

    algorithm: str
    parameters: tuple[Parameter, ...]
    settings: Mapping[str, str] = field(default_factory=dict)
    maximize: bool = False
    max_trials: int = 0


@dataclass(frozen=True)
class Observed:
    """A finished trial: its name, its assignments and its objective's value."""

    name: str
    assignments: Mapping[str, str]
    value: float


def parse_settings(
    algorithm: str, settings: Mapping[str, str], served: Mapping[str, tuple[str, ...]]
) -> tuple[int | None, dict[str, Any]]:
    """The seed (`random_state`, if set) and the other settings, typed; SettingsError naming
    the algorithm or the first setting the service (which serves `served`) refuses."""
    if algorithm not in served:
        raise SettingsError(f"unknown algorithm name {algorithm}")
    known = served[algorithm]
    parsed: dict[str, Any] = {}
    for name, text in settings.items():
        if name not in known:
            raise SettingsError(f"unknown setting {name} for algorithm {algorithm}")
        kind, holds, rule = SETTING_RULES[name]
        try:
            value = kind(text)
        except ValueError as error:
            raise SettingsError(f"failed to validate {name}({text}): {error}") from None
        if not holds(value):
            raise SettingsError(f"{name} {rule}, not {text}")
        parsed[name] = value
    return parsed.pop("random_state", None), parsed
