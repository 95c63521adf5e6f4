"""Metrics for Katib's File collector (format JSON), written through cloudml-hypertune.

cloudml-hypertune 0.1.0.dev6 writes one JSON object per report and per line, with the
value as a string (`{"accuracy": "0.98", "global_step": "1", "timestamp": 1.7e9, ...}`),
which is what Katib's JSON parser reads. Two of its habits do not fit Katib, and
`KatibHyperTune` corrects them while keeping its record format:

- It rewrites the whole file from its newest 100 reports at every report. A run with more
  than 49 epochs would lose its first epochs before Katib reads the file; and Katib's
  collector, when early stopping is on, follows the file from the moment it starts, as
  `tail -f` does, so it never sees what a rewrite puts in. Here each report is appended,
  one whole line in one `write` to a file opened for appending: the file only grows, a
  follower sees every line, and a line is never torn.
- Its timestamp is `time.time()`; Katib reads the digits after the decimal point of a
  numeric timestamp as nanoseconds (`.5` is 5 ns, `.123456` is 123456 ns), so two
  epochs within one second can come out in the wrong order and spoil Katib's `latest`.
  Timestamps here are whole seconds, and a later step always gets a later second.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from hypertune import HyperTune

from mnist_trainer.config import METRICS_FILE_ENV


def katib_timestamp(now: float, step: int, previous: tuple[int, int] | None) -> int:
    """Whole seconds, never earlier than the last report and later than any earlier step's.

    `previous` is the (step, timestamp) of the last report, if any.
    """
    seconds = int(now)
    if previous is None:
        return seconds
    last_step, last_seconds = previous
    earliest = last_seconds + 1 if step > last_step else last_seconds
    return max(seconds, earliest)


class KatibHyperTune(HyperTune):  # type: ignore[misc]  # hypertune ships no type hints
    """hypertune's reporter with ordered timestamps, appending each report to the file."""

    def __init__(self, path: Path) -> None:
        # hypertune reads its path from the environment (and makes the directory itself);
        # the variable is set only while it does, so this process's environment stays as it was.
        previous = os.environ.get(METRICS_FILE_ENV)
        os.environ[METRICS_FILE_ENV] = str(path)
        try:
            super().__init__()
        finally:
            if previous is None:
                del os.environ[METRICS_FILE_ENV]
            else:
                os.environ[METRICS_FILE_ENV] = previous
        self._previous: tuple[int, int] | None = None

    def _dump_metrics_to_file(self) -> None:
        """Fix the newest record's timestamp, then append it as one line in one write."""
        newest = self.metrics_queue[-1]
        step = int(newest["global_step"])
        newest["timestamp"] = katib_timestamp(newest["timestamp"], step, self._previous)
        self._previous = (step, newest["timestamp"])
        line = (json.dumps(newest, sort_keys=True) + "\n").encode()
        descriptor = os.open(self.metric_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(descriptor, line) != len(line):
                raise OSError(f"{self.metric_path}: a report was cut short (is the disk full?)")
        finally:
            os.close(descriptor)


class NonFiniteMetricError(ValueError):
    """A metric is NaN or infinite; it must never reach the metrics file."""


class MetricsReporter:
    """Reports validated metrics per step; the only writer of the metrics file."""

    def __init__(self, path: Path) -> None:
        """Start a fresh file, so stale metrics of an earlier run at `path` never count."""
        absolute = path.absolute()
        absolute.parent.mkdir(parents=True, exist_ok=True)
        absolute.write_text("")
        self._hypertune = KatibHyperTune(absolute)

    def report(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write every metric for `step`, refusing the whole set if any value is not finite."""
        bad = {name: value for name, value in metrics.items() if not math.isfinite(value)}
        if bad:
            raise NonFiniteMetricError(
                f"refusing to report non-finite metrics {bad} at step {step}"
            )
        for name, value in metrics.items():
            self._hypertune.report_hyperparameter_tuning_metric(
                hyperparameter_metric_tag=name, metric_value=value, global_step=step
            )
