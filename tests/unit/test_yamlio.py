"""YAML output keeps strings strings for every parser that reads it (kubectl's included)."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mnist_tuning.api.yamlio import to_yaml

# Strings a YAML 1.1 or 1.2 parser (Go's included) reads as a number, a bool or null.
AMBIGUOUS = [
    "1e-05",
    "5E+3",
    "12",
    "0.5",
    ".5",
    "1_000",
    "0x1F",
    "0o17",
    "1:30",
    ".inf",
    "-.Inf",
    ".nan",
    "y",
    "N",
    "yes",
    "No",
    "on",
    "OFF",
    "true",
    "False",
    "null",
    "~",
]


@pytest.mark.parametrize("text", AMBIGUOUS)
def test_strings_that_look_like_other_types_are_quoted(text: str) -> None:
    assert to_yaml({"value": text}) == f"value: '{text}'\n"


def test_plain_words_stay_plain_and_key_order_is_kept() -> None:
    assert to_yaml({"kind": "Job", "apiVersion": "batch/v1"}) == "kind: Job\napiVersion: batch/v1\n"


def test_repeated_objects_are_written_in_full() -> None:
    shared = {"a": 1}
    assert "&" not in to_yaml({"x": shared, "y": shared})


@settings(deadline=None)
@given(
    st.recursive(
        st.text() | st.floats(allow_nan=False) | st.integers() | st.booleans(),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
        max_leaves=10,
    )
)
def test_round_trip(value: object) -> None:
    assert yaml.safe_load(to_yaml({"v": value})) == {"v": value}
