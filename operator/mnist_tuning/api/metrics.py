"""Read a trial's metrics file the way Katib's File collector (format JSON) does.

One JSON object per line; a metric value counts only when it is a JSON string that parses
as a number (cloudml-hypertune writes `"accuracy": "0.91"`); a line that is not a JSON object
aborts collection, as it makes Katib's collector fail the trial.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

# cloudml-hypertune's bookkeeping keys, written next to the metrics on every line.
NOT_METRICS = frozenset({"timestamp", "global_step", "trial"})


class MetricsFileError(ValueError):
    """The metrics file has a line Katib's collector could not parse."""


class MetricSummary(BaseModel):
    """What Katib records per metric: the smallest, largest and last value reported."""

    name: str
    min: float
    max: float
    latest: float


def to_number(value: Any) -> float | None:
    """Parse Katib's string (or number) to a finite float; None for "unavailable", "", "nan"."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def parse_metrics(
    lines: Iterable[str], names: Iterable[str] | None = None
) -> dict[str, MetricSummary]:
    """Summaries of every metric in the lines (or of `names` only); unseen metrics are absent."""
    return {
        name: MetricSummary(name=name, min=min(values), max=max(values), latest=values[-1])
        for name, values in parse_series(lines, names).items()
    }


def parse_series(
    lines: Iterable[str], names: Iterable[str] | None = None
) -> dict[str, list[float]]:
    """Every value of every metric (or of `names` only), in report order (Katib's log)."""
    wanted = None if names is None else frozenset(names)
    seen: dict[str, list[float]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MetricsFileError(f"line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise MetricsFileError(f"line {number}: expected a JSON object")
        for key, raw in record.items():
            if (key in NOT_METRICS and wanted is None) or (
                wanted is not None and key not in wanted
            ):
                continue
            value = to_number(raw) if isinstance(raw, str) else None  # hypertune writes strings
            if value is not None:
                seen.setdefault(key, []).append(value)
    return seen


def read_metrics_file(path: Path, names: Iterable[str] | None = None) -> dict[str, MetricSummary]:
    """Summaries of the metrics a trial wrote to `path` (see parse_metrics)."""
    with path.open(encoding="utf-8") as handle:
        return parse_metrics(handle, names)


def read_metrics_series(path: Path, names: Iterable[str]) -> dict[str, list[float]]:
    """Every value of `names` a trial wrote to `path`, in order (see parse_series)."""
    with path.open(encoding="utf-8") as handle:
        return parse_series(handle, names)
