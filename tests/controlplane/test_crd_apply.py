"""The MnistTuning CRD on a real kube-apiserver, driven with real kubectl.

What these prove: every sample is accepted as written; every invalid spec is refused at
`kubectl apply` with the CRD's own message naming the field; `kubectl get` prints our printer
columns; `kubectl explain` teaches from our descriptions.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import katib_standin
import launcher
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from launcher import ControlPlane
from mnist_tuning.api.expand import expand
from mnist_tuning.api.spec import parse_tuning
from mnist_tuning.api.summarize import summarize
from strategies import Invalid, Manifest, invalid_manifests, valid_manifests

CRD_PATH = launcher.REPO_ROOT / "crds" / "mnisttuning.yaml"
SAMPLES = sorted((launcher.REPO_ROOT / "deploy" / "samples").glob("*.yaml"))


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return crd


def served_version(crd: dict[str, Any]) -> dict[str, Any]:
    version: dict[str, Any] = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return version


def walk(schema: Any) -> Any:
    """Yield every schema node of an OpenAPI schema."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from walk(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from walk(item)


def cel_messages(crd: dict[str, Any]) -> list[str]:
    schema = served_version(crd)["schema"]["openAPIV3Schema"]
    return [
        rule["message"]
        for node in walk(schema)
        for rule in node.get("x-kubernetes-validations", [])
        if isinstance(rule, dict) and "message" in rule
    ]


def sample_tuning(name: str) -> dict[str, Any]:
    tuning: dict[str, Any] = yaml.safe_load(
        (launcher.REPO_ROOT / "deploy" / "samples" / f"{name}.yaml").read_text()
    )
    return tuning


def test_crd_is_established_with_our_names(control_plane: ControlPlane) -> None:
    crd = load_crd()
    assert crd["metadata"]["name"] == "mnisttunings.tuning.mnist.dev"
    names = crd["spec"]["names"]
    assert (names["plural"], names["singular"], names["kind"]) == (
        "mnisttunings",
        "mnisttuning",
        "MnistTuning",
    )
    assert names["shortNames"] == ["mnt"]
    assert "tuning" in names["categories"]
    established = control_plane.run_kubectl(
        "get", "crd", crd["metadata"]["name"],
        "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}",
    )  # fmt: skip
    assert established.stdout == "True"


@pytest.mark.parametrize("sample", SAMPLES, ids=[path.stem for path in SAMPLES])
def test_every_sample_applies(control_plane: ControlPlane, namespace: str, sample: Path) -> None:
    tuning = in_namespace(yaml.safe_load(sample.read_text()), namespace)
    result = control_plane.apply(yaml.safe_dump(tuning))
    assert "created" in result.stdout
    stored = json.loads(
        control_plane.run_kubectl(
            "get", "mnisttuning", tuning["metadata"]["name"], "-n", namespace, "-o", "json"
        ).stdout
    )
    # Everything the sample says is stored as written (the schema may add defaults).
    assert contains(stored["spec"], tuning["spec"])


def in_namespace(tuning: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The manifest with its namespace replaced by the test's."""
    moved = copy.deepcopy(tuning)
    moved["metadata"]["namespace"] = namespace
    return moved


def contains(stored: Any, written: Any) -> bool:
    if isinstance(written, dict):
        return isinstance(stored, dict) and all(
            key in stored and contains(stored[key], value) for key, value in written.items()
        )
    return bool(stored == written)


def _set(tuning: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = tuning
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


# case -> (field path to set in a valid spec, value, text the refusal must contain, CEL rule?)
INVALID: dict[str, tuple[str, Any, str, bool]] = {
    "min-not-below-max": (
        "spec.search.learningRate", {"min": 0.1, "max": 0.01}, "learningRate", True,
    ),
    "log-scale-needs-positive-min": (
        "spec.search.momentum", {"min": 0.0, "max": 0.9, "scale": "log"}, "momentum", True,
    ),
    "step-not-positive": (
        "spec.search.batchSize", {"min": 32, "max": 128, "step": 0}, "batchSize", False,
    ),
    "empty-values": ("spec.search.optimizer", {"values": []}, "optimizer", False),
    "duplicate-values": ("spec.search.batchSize", {"values": [32, 32]}, "batchSize", False),
    "both-searched-and-fixed": ("spec.fixed.learningRate", 0.01, "learningRate", True),
    "parallel-above-max": (
        "spec.budget", {"maxTrials": 4, "parallelTrials": 5, "maxFailedTrials": 1},
        "parallelTrials", True,
    ),
    "failed-above-max": (
        "spec.budget", {"maxTrials": 4, "parallelTrials": 2, "maxFailedTrials": 5},
        "maxFailedTrials", True,
    ),
    "batch-size-below-one": ("spec.search.batchSize", {"values": [0, 32]}, "batchSize", False),
    "dropout-of-one": ("spec.search.dropout", {"min": 0.1, "max": 1.0}, "dropout", False),
    "unknown-hyperparameter": (
        "spec.search.learningrate", {"min": 0.01, "max": 0.1}, "learningrate", False,
    ),
    "unknown-optimizer": (
        "spec.search.optimizer", {"values": ["sgd", "rmsprop"]}, "optimizer", False,
    ),
    "unknown-algorithm": ("spec.algorithm", {"name": "hyperband"}, "algorithm", False),
    "early-stopping-start-step-0": ("spec.earlyStopping", {"startStep": 0}, "startStep", False),
}  # fmt: skip

# case -> (spec keys over the seed-random sample's, field the refusal names); each one breaks
# one rule of what an algorithm's Katib service refuses, and the refusal is that rule's CEL.
ALGORITHM_INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "grid-range-without-step": (
        {
            "algorithm": {"name": "grid"},
            "search": {
                "learningRate": {"min": 0.01, "max": 0.05},
                "momentum": {"values": [0.5, 0.9]},
            },
            "budget": {"maxTrials": 2, "parallelTrials": 1},
        },
        "search.learningRate",
    ),
    "grid-smaller-than-max-trials": (
        {
            "algorithm": {"name": "grid"},
            "search": {
                "learningRate": {"min": 0.01, "max": 0.05, "step": 0.01},
                "momentum": {"values": [0.5, 0.9]},
            },
            "budget": {"maxTrials": 11, "parallelTrials": 1},
        },
        "budget.maxTrials",
    ),
    "cmaes-with-one-range": (
        {"algorithm": {"name": "cmaes"}, "search": {"learningRate": {"min": 0.01, "max": 0.05}}},
        "algorithm cmaes",
    ),
    "sobol-with-a-log-range": (
        {
            "algorithm": {"name": "sobol"},
            "search": {"learningRate": {"min": 0.001, "max": 0.1, "scale": "log"}},
        },
        "search.learningRate on a log scale",
    ),
    "bayesian-range-from-0": (
        {
            "algorithm": {"name": "bayesianoptimization"},
            "search": {"momentum": {"min": 0.0, "max": 0.9}},
        },
        "search.momentum",
    ),
}


@pytest.mark.parametrize("case", sorted(ALGORITHM_INVALID))
def test_what_an_algorithms_service_would_refuse_is_refused_at_apply_by_its_cel_rule(
    control_plane: ControlPlane, namespace: str, case: str
) -> None:
    spec, field = ALGORITHM_INVALID[case]
    tuning = in_namespace(sample_tuning("seed-random"), namespace)
    tuning["metadata"]["name"] = case
    tuning["spec"].update(spec)
    result = control_plane.apply(yaml.safe_dump(tuning), check=False)
    assert result.returncode != 0, f"{case} was accepted:\n{yaml.safe_dump(tuning)}"
    [message] = [m for m in cel_messages(load_crd()) if m in result.stderr]
    assert field in message
    absent = control_plane.run_kubectl("get", "mnt", case, "-n", namespace, check=False)
    assert "NotFound" in absent.stderr

    # With the one thing fixed, the same tuning applies (the rule, not something else, refused).
    fixed = {
        "grid-range-without-step": {"learningRate": {"min": 0.01, "max": 0.05, "step": 0.01}},
        "grid-smaller-than-max-trials": None,
        "cmaes-with-one-range": {"momentum": {"min": 0.5, "max": 0.9}},
        "bayesian-range-from-0": {"momentum": {"min": 0.1, "max": 0.9}},
        "sobol-with-a-log-range": {"learningRate": {"min": 0.001, "max": 0.1}},
    }[case]
    if fixed is None:
        tuning["spec"]["budget"]["maxTrials"] = 10
    else:
        tuning["spec"]["search"] = {**tuning["spec"]["search"], **fixed}
    assert control_plane.apply(yaml.safe_dump(tuning)).returncode == 0


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_specs_are_refused_at_apply_naming_the_field(
    control_plane: ControlPlane, namespace: str, case: str
) -> None:
    path, value, field, is_cel = INVALID[case]
    tuning = in_namespace(sample_tuning("seed-random"), namespace)
    tuning["metadata"]["name"] = case
    tuning["spec"].setdefault("search", {}).setdefault("learningRate", {"min": 0.01, "max": 0.05})
    _set(tuning, path, value)
    result = control_plane.apply(yaml.safe_dump(tuning), check=False)
    assert result.returncode != 0, f"{case} was accepted:\n{yaml.safe_dump(tuning)}"
    assert field in result.stderr
    if is_cel:
        matching = [m for m in cel_messages(load_crd()) if m in result.stderr]
        assert matching, f"no CEL message of the CRD in: {result.stderr}"
    absent = control_plane.run_kubectl("get", "mnt", case, "-n", namespace, check=False)
    assert "NotFound" in absent.stderr


def test_get_prints_our_columns(control_plane: ControlPlane, namespace: str) -> None:
    columns = served_version(load_crd())["additionalPrinterColumns"]
    shown = [c["name"].upper() for c in columns if c.get("priority", 0) == 0]
    assert {"PHASE", "BEST", "LEARNING-RATE", "PROGRESS", "AGE"} <= set(shown)
    manifest = in_namespace(sample_tuning("seed-random"), namespace)
    name = manifest["metadata"]["name"]
    control_plane.apply(yaml.safe_dump(manifest))

    # The status the operator would write once Katib reports a finished run: its search space
    # exhausted after 3 of 12 trials (an Experiment that says max trials reached at 3 of 12
    # is one whose budget was just raised, and runs again).
    tuning = parse_tuning(manifest)
    experiment = expand(tuning)
    trials = [f"{experiment['metadata']['name']}-{suffix}" for suffix in ("a1", "b2", "c3")]
    katib_status = katib_standin.completed(
        katib_standin.with_optimal_trial(
            katib_standin.with_trials(
                katib_standin.running(
                    katib_standin.created("2026-01-01T00:00:00Z"), "2026-01-01T00:00:01Z"
                ),
                succeeded=trials[:2],
                failed=trials[2:],
            ),
            trials[1],
            # Every digit a float carries, as Katib reports them.
            {"learningRate": "0.060805291304305564", "momentum": "0.83"},
            {
                "accuracy": ("0.91", "0.9712345678", "0.9712345678"),
                "loss": ("0.08123456", "0.31", "0.08123456"),
            },
        ),
        "suggestion-end",
        "2026-01-01T00:10:00Z",
    )
    status = summarize({**experiment, "status": katib_status}, tuning).to_manifest()
    control_plane.run_kubectl(
        "patch", "mnt", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip

    for resource in ("mnisttunings", "mnt", "tuning"):
        printed = control_plane.run_kubectl("get", resource, "-n", namespace).stdout.splitlines()
        assert printed[0].split() == ["NAME", *shown], resource
        row = dict(zip(shown, printed[1].split()[1:], strict=False))
        assert printed[1].split()[0] == name
        assert row["PHASE"] == "Succeeded"
        # Best of the objective: max accuracy when maximizing, min loss when minimizing.
        # Four significant digits in the table; the status keeps the exact values.
        assert (
            row["BEST"] == {"accuracy": "0.9712", "loss": "0.08123"}[tuning.spec.objective.metric]
        )
        assert row["LEARNING-RATE"] == "0.06081"
        assert row["PROGRESS"] == "3/12"
    stored = control_plane.run_kubectl("get", "mnt", name, "-n", namespace, "-o", "json").stdout
    assert json.loads(stored)["status"]["best"]["hyperparameters"]["learningRate"] == (
        0.060805291304305564
    )


def _words(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def test_explain_shows_our_descriptions(control_plane: ControlPlane) -> None:
    schema = served_version(load_crd())["schema"]["openAPIV3Schema"]
    search = schema["properties"]["spec"]["properties"]["search"]
    explained = control_plane.run_kubectl("explain", "mnisttuning.spec.search").stdout
    assert _words(search["description"]) in _words(explained)
    for name, prop in search["properties"].items():
        assert name in explained
        first_sentence = _words(prop["description"]).split(". ")[0]
        assert first_sentence in _words(explained), name


HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def dry_run_apply(
    control_plane: ControlPlane, manifest: Manifest, namespace: str
) -> subprocess.CompletedProcess[str]:
    """Server-side dry run: the API server validates fully but stores nothing."""
    placed = in_namespace(manifest, namespace)
    placed["metadata"].pop("uid", None)
    return control_plane.run_kubectl(
        "apply", "--dry-run=server", "-f", "-", input_text=json.dumps(placed), check=False
    )


@HYPOTHESIS
@given(manifest=valid_manifests())
def test_the_api_server_accepts_every_spec_our_models_accept(
    control_plane: ControlPlane, namespace: str, manifest: Manifest
) -> None:
    parse_tuning(manifest)
    result = dry_run_apply(control_plane, manifest, namespace)
    assert result.returncode == 0, result.stderr + yaml.safe_dump(manifest)


@HYPOTHESIS
@given(broken=invalid_manifests())
def test_the_api_server_refuses_every_broken_spec_naming_the_field(
    control_plane: ControlPlane, namespace: str, broken: Invalid
) -> None:
    result = dry_run_apply(control_plane, broken.manifest, namespace)
    assert result.returncode != 0, f"{broken.what} accepted:\n{yaml.safe_dump(broken.manifest)}"
    assert broken.field in result.stderr, broken.what
