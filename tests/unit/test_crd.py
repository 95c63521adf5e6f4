"""The CRD: generated from the models (no drift), structural, and refusing what the models refuse.

`crds/mnisttuning.yaml` is regenerated with `make crds`. The schema checks below play the API
server's part offline: apply defaults, check types/bounds/unknown fields (kubectl's strict
field validation), then evaluate every CEL rule with a CEL interpreter, with values typed as
the API server types them (`number` fields are doubles). The control-plane tier repeats the
important cases against a real kube-apiserver.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mnist_tuning.api import spec as spec_module
from mnist_tuning.api.crd import crd
from mnist_tuning.api.spec import parse_tuning
from mnist_tuning.api.yamlio import to_yaml
from strategies import BREAKAGES, Invalid, invalid_manifests, valid_manifests

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = REPO_ROOT / "crds" / "mnisttuning.yaml"
SAMPLES = sorted((REPO_ROOT / "deploy" / "samples").glob("*.yaml"))
SCHEMA: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
Schema = dict[str, Any]
Error = tuple[str, str]

CEL = celpy.Environment()
PROGRAMS: dict[str, Any] = {}


def program(rule: str) -> Any:
    if rule not in PROGRAMS:
        PROGRAMS[rule] = CEL.program(CEL.compile(rule))
    return PROGRAMS[rule]


def nodes(schema: Schema, path: str = "") -> list[tuple[str, Schema]]:
    found = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        found += nodes(child, f"{path}.{name}" if path else name)
    if isinstance(schema.get("additionalProperties"), dict):
        found += nodes(schema["additionalProperties"], f"{path}.*")
    if "items" in schema:
        found += nodes(schema["items"], f"{path}[]")
    return found


def apply_defaults(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                apply_defaults(child, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            apply_defaults(schema["items"], item)


TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
}


def typed(schema: Schema, value: Any) -> Any:
    """The value as the API server hands it to CEL: `number` fields are doubles."""
    if schema.get("type") == "number":
        return float(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", {})
        return {k: typed(properties.get(k, extra), v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(schema.get("items", {}), v) for v in value]
    return value


def check_bounds(schema: Schema, value: Any, path: str) -> list[Error]:
    errors: list[Error] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append((path, f"Unsupported value: {value!r}"))
    if "minimum" in schema:
        low = schema["minimum"]
        if value < low or (schema.get("exclusiveMinimum") and value == low):
            errors.append((path, f"should be greater than {low}"))
    if "maximum" in schema:
        high = schema["maximum"]
        if value > high or (schema.get("exclusiveMaximum") and value == high):
            errors.append((path, f"should be less than {high}"))
    if isinstance(value, str):
        if len(value) > schema.get("maxLength", len(value)):
            errors.append((path, "Too long"))
        if len(value) < schema.get("minLength", 0):
            errors.append((path, "Too short"))
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append((path, f"should match {schema['pattern']}"))
    if isinstance(value, list | dict):
        size = len(value)
        low_key, high_key = (
            ("minItems", "maxItems")
            if isinstance(value, list)
            else (
                "minProperties",
                "maxProperties",
            )
        )
        if size < schema.get(low_key, 0) or size > schema.get(high_key, size):
            errors.append((path, f"has {size} items, outside {low_key}/{high_key}"))
    return errors


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def validate(schema: Schema, value: Any, path: str) -> list[Error]:
    """Errors the API server would report for `value` (schema, strict fields, then CEL)."""
    if schema.get("x-kubernetes-int-or-string"):
        if not (TYPES["integer"](value) or isinstance(value, str)):
            return [(path, "must be an integer or a string")]
        if isinstance(value, str) and not re.search(schema["pattern"], value):
            return [(path, "should match the quantity pattern")]
        return []
    if not TYPES[schema["type"]](value):
        return [(path, f"must be of type {schema['type']}")]
    errors = check_bounds(schema, value, path)
    if isinstance(value, dict) and path != "metadata":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        errors += [
            (join(path, k), "Required value") for k in schema.get("required", []) if k not in value
        ]
        for key, child in value.items():
            if key in properties:
                errors += validate(properties[key], child, join(path, key))
            elif isinstance(extra, dict):
                errors += validate(extra, child, join(path, key))
            else:
                errors.append((join(path, key), "unknown field"))
    if isinstance(value, list):
        for index, item in enumerate(value):
            errors += validate(schema["items"], item, f"{path}[{index}]")
    if not errors:
        activation = {"self": celpy.json_to_cel(typed(schema, value))}
        for rule in schema.get("x-kubernetes-validations", []):
            if not program(rule["rule"]).evaluate(activation):
                errors.append((path + rule.get("fieldPath", ""), rule["message"]))
    return errors


def api_server_errors(manifest: Any) -> list[Error]:
    value = copy.deepcopy(manifest)
    apply_defaults(SCHEMA, value)
    return validate(SCHEMA, value, "")


def test_the_crd_file_is_what_the_models_generate() -> None:
    assert CRD_FILE.read_text() == to_yaml(crd()), "crds/mnisttuning.yaml drifted: run `make crds`"


def test_names_scope_status_and_categories() -> None:
    spec = crd()["spec"]
    assert spec["names"] == {
        "kind": "MnistTuning",
        "plural": "mnisttunings",
        "singular": "mnisttuning",
        "shortNames": ["mnt"],
        "categories": ["tuning"],
    }
    assert spec["scope"] == "Namespaced"
    assert spec["versions"][0]["subresources"] == {"status": {}}


FORBIDDEN = {"$ref", "$defs", "title", "const", "nullable", "uniqueItems", "allOf", "oneOf"}


@pytest.mark.parametrize(
    ("path", "node"), nodes(SCHEMA), ids=lambda x: x if isinstance(x, str) else ""
)
def test_every_node_is_structural_and_explained(path: str, node: Schema) -> None:
    assert not FORBIDDEN & set(node)
    assert "type" in node or node.get("x-kubernetes-int-or-string"), path
    assert "anyOf" not in node or node.get("x-kubernetes-int-or-string"), path
    assert not ("properties" in node and "additionalProperties" in node), path
    if path not in ("", "metadata") and not path.endswith(("[]", ".*")):
        assert node.get("description"), f"{path} has no description for kubectl explain"
    if node.get("type") == "array":
        assert "maxItems" in node, f"{path}: CEL cost needs maxItems"
    if isinstance(node.get("additionalProperties"), dict):
        assert "maxProperties" in node, f"{path}: CEL cost needs maxProperties"


def test_every_rule_in_the_models_is_in_the_crd_and_compiles() -> None:
    in_models = {
        rule.cel
        for model in vars(spec_module).values()
        if isinstance(model, type) and issubclass(model, spec_module._Model)
        for rule in model.rules
    }
    in_crd = {
        rule["rule"]
        for _, node in nodes(SCHEMA)
        for rule in node.get("x-kubernetes-validations", [])
    }
    assert in_models <= in_crd
    for rule in in_crd:
        program(rule)


def test_printer_columns_point_at_fields_of_the_schema() -> None:
    columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    paths = {path for path, _ in nodes(SCHEMA)}
    assert [c["name"] for c in columns] == [
        "Phase",
        "Metric",
        "Best",
        "Learning-Rate",
        "Progress",
        "Experiment",
        "Age",
    ]
    for column in columns:
        if column["jsonPath"] != ".metadata.creationTimestamp":
            assert column["jsonPath"].lstrip(".") in paths


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_pass_the_crd(sample: Path) -> None:
    assert api_server_errors(yaml.safe_load(sample.read_text())) == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_manifests())
def test_valid_manifests_pass_the_crd_and_its_defaults_agree_with_the_models(
    manifest: dict[str, Any],
) -> None:
    assert api_server_errors(manifest) == []
    defaulted = copy.deepcopy(manifest)
    apply_defaults(SCHEMA, defaulted)
    assert parse_tuning(defaulted) == parse_tuning(manifest)


@pytest.mark.parametrize("how", BREAKAGES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_crd_refuses_what_the_models_refuse_naming_the_field(
    how: str, data: st.DataObject
) -> None:
    broken: Invalid = data.draw(invalid_manifests(how))
    errors = api_server_errors(broken.manifest)
    assert any(broken.field in path or broken.field in message for path, message in errors), errors


def test_a_status_written_by_summarize_fits_the_status_schema() -> None:
    from mnist_tuning.api.spec import BestTrial, Condition, MnistTuningStatus, TrialCounts

    status = MnistTuningStatus(
        phase="Running",
        observed_generation=2,
        experiment="lr-momentum-5f2a1c",
        seed=42,
        trials=TrialCounts(succeeded=7, failed=1, running=3),
        progress="8/12",
        best=BestTrial(
            trial="lr-momentum-5f2a1c-x8k2p9qd",
            metrics={"accuracy": 0.9912, "loss": 0.0281},
            hyperparameters={"learningRate": 0.0312, "batchSize": 64, "optimizer": "sgd"},
            objective_value=0.9912,
        ),
        conditions=[Condition(type="Running", status="True", reason="ExperimentRunning")],
        start_time="2025-11-03T10:00:02Z",
    )
    errors = validate(SCHEMA["properties"]["status"], status.to_manifest(), "status")
    assert errors == []
