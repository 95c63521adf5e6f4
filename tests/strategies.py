"""Hypothesis strategies for MnistTuning manifests, valid and invalid.

Importable from any test (pytest puts tests/ on sys.path through tests/conftest.py):
`from strategies import valid_manifests, invalid_manifests`. The unit tier checks them
against parse_tuning/expand; the control-plane and Katib tiers can feed the same manifests
to a real API server or to Katib's validator.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st
from mnist_tuning.api.spec import ALGORITHMS, HYPERPARAMETERS, OPTIMIZERS, grid_size, parse_tuning

Manifest = dict[str, Any]

# name -> (low, high, low inclusive, high inclusive): the values the trainer accepts.
FLOAT_BOUNDS: dict[str, tuple[float, float, bool, bool]] = {
    "learningRate": (0.0, 10.0, False, True),
    "momentum": (0.0, 1.0, True, False),
    "dropout": (0.0, 1.0, True, False),
    "weightDecay": (0.0, 1.0, True, True),
}
INT_BOUNDS: dict[str, tuple[int, int]] = {"batchSize": (1, 4096), "epochs": (1, 100)}

DNS_LABEL = st.from_regex(r"[a-z]([-a-z0-9]{0,30}[a-z0-9])?", fullmatch=True)


def float_values(name: str) -> st.SearchStrategy[float]:
    low, high, low_in, high_in = FLOAT_BOUNDS[name]
    return st.floats(
        min_value=low,
        max_value=high,
        exclude_min=not low_in,
        exclude_max=not high_in,
        allow_nan=False,
        allow_subnormal=False,
    )


@st.composite
def float_space(draw: st.DrawFn, name: str) -> dict[str, Any]:
    values = float_values(name)
    if draw(st.booleans()):
        return {"values": draw(st.lists(values, min_size=1, max_size=6, unique=True))}
    low, high = sorted(draw(st.lists(values, min_size=2, max_size=2, unique=True)))
    space: dict[str, Any] = {"min": low, "max": high}
    scales = ["linear", "log"] if low > 0 else ["linear"]
    scale = draw(st.sampled_from([None, *scales]))
    if scale is not None:
        space["scale"] = scale
    if draw(st.booleans()):
        space["step"] = draw(st.floats(min_value=1e-6, max_value=1.0))
    return space


@st.composite
def int_space(draw: st.DrawFn, name: str) -> dict[str, Any]:
    low_bound, high_bound = INT_BOUNDS[name]
    values = st.integers(low_bound, high_bound)
    if draw(st.booleans()):
        return {"values": draw(st.lists(values, min_size=1, max_size=6, unique=True))}
    low, high = sorted(draw(st.lists(values, min_size=2, max_size=2, unique=True)))
    space: dict[str, Any] = {"min": low, "max": high}
    scale = draw(st.sampled_from([None, "linear", "log"]))
    if scale is not None:
        space["scale"] = scale
    if draw(st.booleans()):
        space["step"] = draw(st.integers(1, max(1, high - low)))
    return space


def space(name: str) -> st.SearchStrategy[dict[str, Any]]:
    if name == "optimizer":
        values = st.lists(st.sampled_from(OPTIMIZERS), min_size=1, max_size=3, unique=True)
        return st.fixed_dictionaries({"values": values})
    if name in INT_BOUNDS:
        return int_space(name)
    return float_space(name)


def fixed_value(name: str) -> st.SearchStrategy[Any]:
    if name == "optimizer":
        return st.sampled_from(OPTIMIZERS)
    if name in INT_BOUNDS:
        return st.integers(*INT_BOUNDS[name])
    return float_values(name)


@st.composite
def budget(draw: st.DrawFn) -> dict[str, int]:
    max_trials = draw(st.integers(1, 1000))
    out = {"maxTrials": max_trials}
    if draw(st.booleans()):
        out["parallelTrials"] = draw(st.integers(1, min(100, max_trials)))
    if draw(st.booleans()):
        out["maxFailedTrials"] = draw(st.integers(0, max_trials))
    return out


@st.composite
def objective(draw: st.DrawFn) -> dict[str, Any]:
    metric = draw(st.sampled_from(["accuracy", "loss"]))
    out: dict[str, Any] = {"metric": metric}
    if draw(st.booleans()):
        out["goal"] = draw(st.floats(0.0, 1.0 if metric == "accuracy" else 10.0))
    return out


QUANTITIES = {"cpu": ["100m", "500m", "1", 2, "1.5"], "memory": ["512Mi", "1Gi", "2G", 1073741824]}


@st.composite
def trial(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        out["image"] = draw(
            st.sampled_from(
                [
                    "registry.example/mnist-trainer:0.1.0",
                    "localhost:5000/trainer@sha256:" + "a" * 64,
                ]
            )
        )
    if draw(st.booleans()):
        out["imagePullSecrets"] = [{"name": n} for n in draw(st.lists(DNS_LABEL, max_size=3))]
    if draw(st.booleans()):
        out["resources"] = {
            kind: {
                resource: draw(st.sampled_from(choices))
                for resource, choices in QUANTITIES.items()
                if draw(st.booleans())
            }
            for kind in draw(st.lists(st.sampled_from(["requests", "limits"]), unique=True))
        }
    if draw(st.booleans()):
        out["timeoutSeconds"] = draw(st.integers(1, 7 * 24 * 3600))
    return out


@st.composite
def valid_manifests(draw: st.DrawFn) -> Manifest:
    """A MnistTuning manifest that satisfies every rule of the CRD."""
    searched = draw(st.lists(st.sampled_from(HYPERPARAMETERS), min_size=1, max_size=7, unique=True))
    others = [n for n in HYPERPARAMETERS if n not in searched]
    fixed_names = draw(st.lists(st.sampled_from(others), unique=True)) if others else []
    spec: dict[str, Any] = {"search": {name: draw(space(name)) for name in searched}}
    if fixed_names:
        spec["fixed"] = {name: draw(fixed_value(name)) for name in fixed_names}
    for key, strategy in (("objective", objective()), ("budget", budget()), ("trial", trial())):
        if draw(st.booleans()):
            spec[key] = draw(strategy)
    if draw(st.booleans()):
        spec["algorithm"] = {"seed": draw(st.integers(0, 2**31 - 1))}
    if draw(st.booleans()):
        spec.setdefault("algorithm", {})["name"] = draw(st.sampled_from(ALGORITHMS))
        _fit_algorithm(spec, draw)
    if draw(st.booleans()):
        spec["earlyStopping"] = {
            key: draw(strategy)
            for key, strategy in (
                ("rule", st.just("median")),
                ("minTrials", st.integers(1, 1000)),
                ("startStep", st.integers(1, 100)),
            )
            if draw(st.booleans())
        }
    metadata: dict[str, Any] = {"name": draw(DNS_LABEL)}
    if draw(st.booleans()):
        metadata["namespace"] = draw(DNS_LABEL)
    if draw(st.booleans()):
        metadata["uid"] = str(draw(st.uuids()))
    return {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": metadata,
        "spec": spec,
    }


def _fit_algorithm(spec: dict[str, Any], draw: st.DrawFn) -> None:
    """Make the search fit what the drawn algorithm's Katib service accepts."""
    name = spec["algorithm"]["name"]
    search = spec["search"]
    if name == "grid":
        for value in search.values():
            if "min" in value and isinstance(value["min"], float) and "step" not in value:
                value["step"] = draw(st.floats(min_value=1e-3, max_value=1.0))
        manifest = {
            "apiVersion": "tuning.mnist.dev/v1alpha1",
            "kind": "MnistTuning",
            "metadata": {"name": "grid"},
            "spec": {"search": search},
        }
        combinations = grid_size(parse_tuning(manifest).spec.search)
        budget = spec.setdefault("budget", {})
        max_trials = min(budget.get("maxTrials", 12), int(combinations))
        budget["maxTrials"] = max_trials
        for key in ("parallelTrials", "maxFailedTrials"):
            if key in budget:
                budget[key] = min(budget[key], max_trials)
    if name == "cmaes":
        for extra in ("learningRate", "momentum"):
            search[extra] = {"min": 0.01, "max": 0.5}
            spec.get("fixed", {}).pop(extra, None)
    if name in ("cmaes", "sobol"):
        for value in search.values():
            if value.get("scale") == "log":
                value["scale"] = "linear"
    if name == "bayesianoptimization":
        for key, value in search.items():
            if "min" in value and key in FLOAT_BOUNDS and value["min"] <= 0:
                value["min"] = value["max"] / 2
                value.pop("step", None)


@dataclass(frozen=True)
class Invalid:
    """A manifest broken in one way, the field a good error names, and what was broken."""

    manifest: Manifest
    field: str
    what: str


def _ranged_name(manifest: Manifest, draw: st.DrawFn) -> str | None:
    """Draw one parameter searched over a range (floats listed first); None when there is none."""
    ranged = sorted(
        (name for name, value in manifest["spec"]["search"].items() if "min" in value),
        key=lambda name: name in INT_BOUNDS,
    )
    return draw(st.sampled_from(ranged)) if ranged else None


def _break(manifest: Manifest, how: str, draw: st.DrawFn) -> Invalid | None:
    """Break the manifest in one way; None when this manifest has nothing to break that way."""
    spec = manifest["spec"]
    search = spec["search"]
    names = list(search)
    if how == "unknown search key":
        search["learningrate"] = {"min": 0.1, "max": 0.2}
        return Invalid(manifest, "learningrate", how)
    if how == "unknown spec key":
        spec["trials"] = 3
        return Invalid(manifest, "trials", how)
    if how == "empty search":
        spec["search"] = {}
        spec.pop("fixed", None)
        return Invalid(manifest, "search", how)
    if how == "min not below max":
        name = _ranged_name(manifest, draw)
        if name is None:
            return None
        search[name]["min"], search[name]["max"] = search[name]["max"], search[name]["min"]
        if draw(st.booleans()):
            search[name]["min"] = search[name]["max"]
        search[name].pop("scale", None)
        return Invalid(manifest, name, how)
    if how == "log scale with min 0":
        name = draw(st.sampled_from(["momentum", "dropout", "weightDecay"]))
        search[name] = {"min": 0.0, "max": 0.5, "scale": "log"}
        spec.get("fixed", {}).pop(name, None)
        return Invalid(manifest, name, how)
    if how == "step not positive":
        name = _ranged_name(manifest, draw)
        if name is None:
            return None
        search[name]["step"] = draw(st.sampled_from([0, -1]))
        return Invalid(manifest, f"{name}.step", how)
    if how == "empty values":
        name = draw(st.sampled_from(names))
        search[name] = {"values": []}
        return Invalid(manifest, f"{name}.values", how)
    if how == "duplicate values":
        name = draw(st.sampled_from(names))
        value = {"optimizer": "adam", "batchSize": 64, "epochs": 2}.get(name, 0.5)
        search[name] = {"values": [value, value]}
        return Invalid(manifest, name, how)
    if how == "values and range together":
        name = _ranged_name(manifest, draw)
        if name is None:
            return None
        search[name]["values"] = [search[name]["min"]]
        return Invalid(manifest, name, how)
    if how == "searched and fixed":
        name = draw(st.sampled_from(names))
        fixed_value_for = {"optimizer": "sgd", "batchSize": 32, "epochs": 1}
        spec.setdefault("fixed", {})[name] = fixed_value_for.get(name, 0.5)
        return Invalid(manifest, name, how)
    if how == "parallel above max":
        max_trials = draw(st.integers(1, 99))
        spec["budget"] = {"maxTrials": max_trials, "parallelTrials": max_trials + 1}
        return Invalid(manifest, "parallelTrials", how)
    if how == "failed above max":
        max_trials = draw(st.integers(1, 999))
        spec["budget"] = {"maxTrials": max_trials, "maxFailedTrials": max_trials + 1}
        return Invalid(manifest, "maxFailedTrials", how)
    if how == "outside the trainer's range":
        name, value = draw(
            st.sampled_from(
                [
                    ("batchSize", 0),
                    ("batchSize", 5000),
                    ("epochs", 0),
                    ("epochs", 101),
                    ("learningRate", 0.0),
                    ("learningRate", 11.0),
                    ("momentum", 1.0),
                    ("dropout", 1.0),
                    ("dropout", -0.1),
                    ("weightDecay", 1.5),
                    ("optimizer", "rmsprop"),
                ]
            )
        )
        search.pop(name, None)
        if not search:
            search["learningRate" if name != "learningRate" else "momentum"] = {
                "min": 0.1,
                "max": 0.2,
            }
        spec.setdefault("fixed", {})[name] = value
        return Invalid(manifest, name, how)
    if how == "accuracy goal above 1":
        spec["objective"] = {"metric": "accuracy", "goal": 1.5}
        return Invalid(manifest, "goal", how)
    if how == "grid range without step":
        spec["algorithm"] = {"name": "grid"}
        search["momentum"] = {"min": 0.5, "max": 0.9}
        spec.get("fixed", {}).pop("momentum", None)
        return Invalid(manifest, "momentum", how)
    if how == "grid smaller than maxTrials":
        spec["algorithm"] = {"name": "grid"}
        spec["search"] = {"optimizer": {"values": ["sgd", "adam"]}}
        spec.pop("fixed", None)
        spec["budget"] = {"maxTrials": draw(st.integers(3, 1000))}
        return Invalid(manifest, "maxTrials", how)
    if how == "cmaes with one range":
        spec["algorithm"] = {"name": "cmaes"}
        spec["search"] = {"learningRate": {"min": 0.01, "max": 0.1}}
        spec.pop("fixed", None)
        return Invalid(manifest, "cmaes", how)
    if how == "log range with a goptuna algorithm":
        spec["algorithm"] = {"name": draw(st.sampled_from(["cmaes", "sobol"]))}
        spec["search"] = {
            "learningRate": {"min": 0.001, "max": 0.1, "scale": "log"},
            "momentum": {"min": 0.5, "max": 0.9},
        }
        spec.pop("fixed", None)
        return Invalid(manifest, "learningRate", how)
    if how == "bayesian range from 0":
        spec["algorithm"] = {"name": "bayesianoptimization"}
        name = draw(st.sampled_from(["momentum", "dropout", "weightDecay"]))
        search[name] = {"min": 0.0, "max": 0.5}
        spec.get("fixed", {}).pop(name, None)
        return Invalid(manifest, name, how)
    if how == "unknown algorithm":
        spec["algorithm"] = {"name": "hyperband"}
        return Invalid(manifest, "algorithm", how)
    if how == "early stopping start step 0":
        spec["earlyStopping"] = {"startStep": 0}
        return Invalid(manifest, "startStep", how)
    if how == "bad quantity":
        spec["trial"] = {"resources": {"limits": {"cpu": "one"}}}
        return Invalid(manifest, "cpu", how)
    raise AssertionError(how)


BREAKAGES = (
    "unknown search key",
    "unknown spec key",
    "empty search",
    "min not below max",
    "log scale with min 0",
    "step not positive",
    "empty values",
    "duplicate values",
    "values and range together",
    "searched and fixed",
    "parallel above max",
    "failed above max",
    "outside the trainer's range",
    "accuracy goal above 1",
    "bad quantity",
    "grid range without step",
    "grid smaller than maxTrials",
    "cmaes with one range",
    "log range with a goptuna algorithm",
    "bayesian range from 0",
    "unknown algorithm",
    "early stopping start step 0",
)


@st.composite
def invalid_manifests(draw: st.DrawFn, how: str | None = None) -> Invalid:
    """A valid manifest broken by exactly one rule of the CRD (`how`, or any)."""
    manifest = copy.deepcopy(draw(valid_manifests()))
    broken = _break(manifest, how or draw(st.sampled_from(BREAKAGES)), draw)
    assume(broken is not None)
    assert broken is not None
    return broken
