"""Katib's `medianstop` early stopping, as Katib v0.19.0's Python service computes its rule.

For each trial that succeeded, the service averages the first `start_step` values its
objective reported (read once, from Katib's DB manager); once `min_trials_required` trials
are known, the rule's value is the mean of those averages (Katib calls it the median, and
computes the mean). A running trial whose objective is worse than that value after
`start_step` reports is stopped by Katib's metrics collector, which then asks the service to
mark the Trial `EarlyStopped`: `early_stopped` is that change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from katib_services.space import parse_settings

SETTINGS = {"medianstop": ("min_trials_required", "start_step")}
# Katib's defaults for the settings an Experiment leaves out.
DEFAULTS = {"min_trials_required": 3, "start_step": 4}


class MedianStop:
    """One Experiment's rule: the averages of its succeeded trials' first reports."""

    def __init__(self, algorithm: str, settings: Mapping[str, str]) -> None:
        _, parsed = parse_settings(algorithm, settings, SETTINGS)
        merged = {**DEFAULTS, **parsed}
        self.min_trials: int = merged["min_trials_required"]
        self.start_step: int = merged["start_step"]
        self.averages: dict[str, float] = {}

    def knows(self, trial: str) -> bool:
        return trial in self.averages

    def learn(self, trial: str, values: Sequence[float]) -> None:
        """Keep the average of the first `start_step` values a succeeded trial reported."""
        first = list(values)[: self.start_step]
        if first:
            self.averages[trial] = sum(first) / len(first)

    def threshold(self) -> float | None:
        """The rule's value, once enough trials succeeded; None before."""
        if len(self.averages) < self.min_trials:
            return None
        return sum(self.averages.values()) / len(self.averages)


def early_stopped(trial: Mapping[str, Any], now: str) -> dict[str, Any]:
    """The merge patch of a Trial's status that marks it early stopped, its conditions kept."""
    conditions = list((trial.get("status") or {}).get("conditions") or [])
    conditions.append(
        {
            "type": "EarlyStopped",
            "status": "True",
            "reason": "TrialEarlyStopped",
            "message": "Trial is early stopped",
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        }
    )
    return {"status": {"conditions": conditions}}
