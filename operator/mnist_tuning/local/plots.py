"""Pictures of a finished tuning, saved as PNG next to the study.

Two figures: parallel coordinates (each searched parameter on its own axis, one line per
trial, coloured by the objective) shows which region of the space is good; the objective
per trial, with the best-so-far line, shows whether more trials would help.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mnist_tuning.api.summarize import is_better
from mnist_tuning.local.katib import TrialRecord, best_trial, objective_of, scored_value

PARALLEL_FILE = "parallel-coordinates.png"
OBJECTIVE_FILE = "objective-per-trial.png"
TICKS = 5


@dataclass(frozen=True)
class Axis:
    """One vertical axis: maps a parameter's values to [0, 1] and labels its ticks."""

    name: str
    log: bool
    low: float
    high: float
    choices: tuple[str, ...] = ()

    def position(self, value: str) -> float:
        """Where a value sits on the axis, 0 at the bottom, 1 at the top."""
        if self.choices:
            return self.choices.index(value) / max(len(self.choices) - 1, 1)
        x = self._scale(float(value))
        low, high = self._scale(self.low), self._scale(self.high)
        return 0.5 if high == low else (x - low) / (high - low)

    def ticks(self) -> list[tuple[float, str]]:
        """Tick positions and labels in the parameter's own units."""
        if self.choices:
            return [(self.position(c), c) for c in self.choices]
        low, high = self._scale(self.low), self._scale(self.high)
        marks = []
        for i in range(TICKS):
            x = low + (high - low) * i / (TICKS - 1)
            marks.append((i / (TICKS - 1), f"{10**x if self.log else x:.3g}"))
        return marks

    def _scale(self, value: float) -> float:
        return math.log10(value) if self.log else value


def axes_of(experiment: Mapping[str, Any]) -> list[Axis]:
    """One axis per searched parameter, from the Experiment's feasible spaces."""
    axes = []
    for parameter in experiment["spec"]["parameters"]:
        space = parameter["feasibleSpace"]
        if "list" in space:
            axes.append(Axis(parameter["name"], False, 0, 1, tuple(map(str, space["list"]))))
        else:
            log = space.get("distribution") == "logUniform"
            axes.append(Axis(parameter["name"], log, float(space["min"]), float(space["max"])))
    return axes


def plot_parallel(
    records: Sequence[TrialRecord], experiment: Mapping[str, Any], path: Path
) -> None:
    """Draw parameters → objective as parallel coordinates; failed trials in grey."""
    objective = objective_of(experiment)
    metric, maximize = objective.metric, objective.maximize
    axes = axes_of(experiment)
    scored = [(r, scored_value(r, experiment)) for r in records]
    values = [v for _, v in scored if v is not None]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    objective_axis = Axis(metric, False, low, high if high > low else low + 1e-9)
    colour = colormaps["viridis" if maximize else "viridis_r"]
    norm = Normalize(low, high)
    best = best_trial(records, experiment)

    figure = Figure(figsize=(2.2 * (len(axes) + 1) + 1.5, 5.2), layout="constrained")
    ax = figure.add_subplot()
    xs = list(range(len(axes) + 1))
    # Worst trials first so the best lines are drawn on top.
    for record, value in sorted(scored, key=lambda rv: _rank(rv[1], maximize)):
        ys = [axis.position(record.assignments[axis.name]) for axis in axes]
        if value is None:
            stopped = record.state == "EarlyStopped"
            style = ("tab:orange", ":") if stopped else ("0.6", "--")
            ax.plot(xs[:-1], ys, color=style[0], linestyle=style[1], linewidth=1, alpha=0.8)
            continue
        is_best = best is not None and record.number == best.number
        ax.plot(
            xs,
            [*ys, objective_axis.position(repr(value))],
            color="crimson" if is_best else colour(norm(value)),
            linewidth=3 if is_best else 1.6,
            alpha=1.0 if is_best else 0.85,
            zorder=3 if is_best else 2,
        )
    for x, axis in zip(xs, [*axes, objective_axis], strict=True):
        ax.axvline(x, color="black", linewidth=1)
        for y, label in axis.ticks():
            ax.text(
                x - 0.04,
                y,
                label,
                ha="right",
                va="center",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1},
                zorder=4,
            )
    ax.set_xticks(xs, [*(a.name + (" (log)" if a.log else "") for a in axes), metric])
    ax.set_xlim(-0.5, len(axes) + 0.3)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for side in ("left", "right", "top", "bottom"):
        ax.spines[side].set_visible(False)
    figure.colorbar(
        ScalarMappable(norm=norm, cmap=colour),
        ax=ax,
        label=_better(metric, maximize),
    )
    title = f"{experiment['metadata']['name']}: {len(values)} of {len(records)} trials scored"
    early = sum(1 for r in records if r.state == "EarlyStopped")
    if early:
        title += f" ({early} early stopped, dotted)"
    if best is not None:
        title += f", best trial {best.number} in red"
    ax.set_title(title)
    figure.savefig(path, dpi=110)


def _better(metric: str, maximize: bool) -> str:
    return f"{metric} ({'higher' if maximize else 'lower'} is better)"


def _rank(value: float | None, maximize: bool) -> float:
    if value is None:
        return -math.inf
    return value if maximize else -value


def plot_objective(
    records: Sequence[TrialRecord], experiment: Mapping[str, Any], path: Path
) -> None:
    """Draw each trial's objective value in order, the best so far, the goal, and failures."""
    objective = objective_of(experiment)
    metric, maximize, goal = objective.metric, objective.maximize, objective.goal
    figure = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = figure.add_subplot()
    points = [(r.number, scored_value(r, experiment)) for r in records]
    scored = [(n, v) for n, v in points if v is not None]
    if scored:
        ax.scatter(*zip(*scored, strict=True), color="tab:blue", zorder=3, label="trial")
        best_so_far: list[tuple[int, float]] = []
        best: float | None = None
        for number, value in scored:
            if is_better(value, best, objective):
                best = value
            if best is not None:
                best_so_far.append((number, best))
        ax.step(*zip(*best_so_far, strict=True), where="post", color="crimson", label="best so far")
    stopped = [(r.number, r.series[-1]) for r in records if r.state == "EarlyStopped" and r.series]
    if stopped:
        ax.scatter(
            *zip(*stopped, strict=True),
            marker="x",
            color="tab:orange",
            zorder=3,
            label=f"early stopped (last {metric})",
        )
    failed = [r.number for r in records if r.state in ("Failed", "MetricsUnavailable")]
    if failed:
        for number in failed:
            ax.axvline(number, color="0.75", linestyle=":", zorder=1)
        ax.plot([], [], color="0.75", linestyle=":", label="failed trial")
    if goal is not None:
        ax.axhline(goal, color="tab:green", linestyle="--", label=f"goal {goal:g}")
    ax.set_xlabel("trial")
    ax.set_ylabel(_better(metric, maximize))
    ax.set_title(f"{experiment['metadata']['name']}: {metric} per trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    figure.savefig(path, dpi=110)


def save_plots(
    records: Sequence[TrialRecord], experiment: Mapping[str, Any], workdir: Path
) -> list[Path]:
    """Write both figures into the workdir and return their paths."""
    paths = [workdir / PARALLEL_FILE, workdir / OBJECTIVE_FILE]
    plot_parallel(records, experiment, paths[0])
    plot_objective(records, experiment, paths[1])
    return paths
