"""The MnistTuning CRD on a real kube-apiserver, driven with real kubectl.

What these prove: every sample is accepted as written; every invalid spec is refused at
`kubectl apply` with the CRD's own message naming the field; `kubectl get` prints our printer
columns; `kubectl explain` teaches from our descriptions.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))

import launcher
from launcher import ControlPlane

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
    result = control_plane.run_kubectl("apply", "-n", namespace, "-f", str(sample))
    assert "created" in result.stdout
    name = yaml.safe_load(sample.read_text())["metadata"]["name"]
    control_plane.run_kubectl("get", "mnisttuning", name, "-n", namespace)


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
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_specs_are_refused_at_apply_naming_the_field(
    control_plane: ControlPlane, namespace: str, case: str
) -> None:
    path, value, field, is_cel = INVALID[case]
    tuning = copy.deepcopy(sample_tuning("seed-random"))
    tuning["metadata"]["name"] = case
    tuning["spec"].setdefault("search", {}).setdefault("learningRate", {"min": 0.01, "max": 0.05})
    _set(tuning, path, value)
    result = control_plane.apply(yaml.safe_dump(tuning), namespace, check=False)
    assert result.returncode != 0, f"{case} was accepted:\n{yaml.safe_dump(tuning)}"
    assert field in result.stderr
    if is_cel:
        matching = [m for m in cel_messages(load_crd()) if m in result.stderr]
        assert matching, f"no CEL message of the CRD in: {result.stderr}"
    absent = control_plane.run_kubectl("get", "mnt", case, "-n", namespace, check=False)
    assert "NotFound" in absent.stderr


def _status_for_columns(columns: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """A status that gives every .status column a distinct, recognisable value."""
    status: dict[str, Any] = {}
    expected: list[str] = []
    for index, column in enumerate(columns):
        path = column["jsonPath"]
        if not path.startswith(".status."):
            continue
        kind = column["type"]
        value: Any = {
            "string": "Running" if path == ".status.phase" else f"value{index}",
            "number": 0.5 + index / 1000,
            "integer": 100 + index,
        }.get(kind)
        if value is None:
            continue
        node = status
        keys = path.removeprefix(".status.").split(".")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
        expected.append(str(value))
    return status, expected


def test_get_prints_our_columns(control_plane: ControlPlane, namespace: str) -> None:
    columns = served_version(load_crd())["additionalPrinterColumns"]
    shown = [c for c in columns if c.get("priority", 0) == 0]
    headers = {c["name"].upper() for c in shown}
    assert headers >= {"PHASE", "PROGRESS", "AGE"}
    tuning = sample_tuning("seed-random")
    name = tuning["metadata"]["name"]
    control_plane.apply(yaml.safe_dump(tuning), namespace)
    status, expected = _status_for_columns(shown)
    assert "Running" in expected, "the PHASE column reads .status.phase"
    control_plane.run_kubectl(
        "patch", "mnt", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    for resource in ("mnisttunings", "mnt", "tuning"):
        printed = control_plane.run_kubectl("get", resource, "-n", namespace).stdout.splitlines()
        header = printed[0].split()
        assert header == ["NAME", *[c["name"].upper() for c in shown]], resource
        row = next(line for line in printed[1:] if line.split()[0] == name)
        for value in expected:
            assert value in row.split(), f"{value} missing from `kubectl get {resource}`: {row}"


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
