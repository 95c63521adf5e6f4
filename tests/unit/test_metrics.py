"""The metrics-file reader follows Katib's File collector with format JSON (katib.md §3.3)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mnist_tuning.api.metrics import MetricsFileError, parse_metrics, read_metrics_file


def hypertune_line(step: int, **metrics: float) -> str:
    """One line as cloudml-hypertune writes it: values as strings, bookkeeping keys alongside."""
    record = {name: str(float(value)) for name, value in metrics.items()}
    record.update(global_step=str(step), timestamp=1.7e9 + step, trial="0")  # type: ignore[arg-type]
    return json.dumps(record, sort_keys=True)


def test_min_max_latest_per_metric_from_a_hypertune_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    lines = [
        hypertune_line(1, accuracy=0.91, loss=0.30),
        hypertune_line(2, accuracy=0.97, loss=0.12),
        "",
        hypertune_line(3, accuracy=0.95, loss=0.15),
    ]
    path.write_text("\n".join(lines) + "\n")
    summaries = read_metrics_file(path)
    assert set(summaries) == {"accuracy", "loss"}
    accuracy = summaries["accuracy"]
    assert (accuracy.min, accuracy.max, accuracy.latest) == (0.91, 0.97, 0.95)
    assert summaries["loss"].min == 0.12


def test_only_string_values_count_as_katib_ignores_json_numbers() -> None:
    summaries = parse_metrics(['{"accuracy": 0.99, "loss": "0.2"}', '{"accuracy": "0.5"}'])
    assert summaries["accuracy"].max == 0.5
    assert summaries["loss"].latest == 0.2


def test_names_select_metrics_and_unseen_names_are_absent() -> None:
    summaries = parse_metrics([hypertune_line(1, accuracy=0.9, loss=0.3)], names=["accuracy", "f1"])
    assert list(summaries) == ["accuracy"]


def test_non_numbers_and_non_finite_values_are_not_metrics() -> None:
    summaries = parse_metrics(['{"loss": "nan"}', '{"loss": "unavailable"}', '{"loss": "inf"}'])
    assert summaries == {}


@pytest.mark.parametrize("line", ["{not json", "[1, 2]", '"accuracy"'])
def test_a_line_katib_could_not_parse_fails_the_file(line: str) -> None:
    with pytest.raises(MetricsFileError, match="line 2"):
        parse_metrics([hypertune_line(1, accuracy=0.9), line])


def test_a_missing_file_is_an_error_like_a_failed_trial(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_metrics_file(tmp_path / "absent.json")


@settings(deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20))
def test_summaries_agree_with_the_reported_sequence(values: list[float]) -> None:
    lines = [hypertune_line(i, loss=v) for i, v in enumerate(values)]
    summary = parse_metrics(lines)["loss"]
    as_written = [float(str(float(v))) for v in values]
    assert (summary.min, summary.max, summary.latest) == (
        min(as_written),
        max(as_written),
        as_written[-1],
    )
