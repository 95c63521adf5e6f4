"""The MnistTuning CustomResourceDefinition, generated from the spec and status models.

The models are the single source: their constraints become minimum/maximum/enum, their
docstrings and field descriptions become `kubectl explain` text, and their rules become CEL
`x-kubernetes-validations`. This module only translates pydantic's JSON Schema into the
structural OpenAPI v3 subset the API server accepts.
"""

from __future__ import annotations

from typing import Any

from mnist_tuning.api.spec import (
    API_VERSION,
    CATEGORY,
    GROUP,
    KIND,
    MAX_TUNING_NAME,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    MnistTuningSpec,
    MnistTuningStatus,
)

JsonSchema = dict[str, Any]

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "Phase",
        "type": "string",
        "jsonPath": ".status.phase",
        "description": "Pending, Running, Succeeded or Failed.",
    },
    {
        "name": "Metric",
        "type": "string",
        "jsonPath": ".spec.objective.metric",
        "description": "The objective metric.",
    },
    {
        "name": "Best",
        "type": "string",
        "jsonPath": ".status.shown.best",
        "description": "The best trial's objective value, 4 significant digits.",
    },
    {
        "name": "Learning-Rate",
        "type": "string",
        "jsonPath": ".status.shown.learningRate",
        "description": "The best trial's learning rate (when searched), 4 significant digits.",
    },
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress",
        "description": "Finished trials / maxTrials.",
    },
    {
        "name": "Experiment",
        "type": "string",
        "jsonPath": ".status.experiment",
        "description": "The Katib Experiment serving the spec.",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# The order keys are written in, so the YAML reads top-down: what, constraints, children, rules.
_ORDER = (
    "description",
    "type",
    "required",
    "default",
    "enum",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-int-or-string",
    "anyOf",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-validations",
)
# Keys to_openapi() builds itself; every other key of _ORDER carries over from JSON Schema
# to OpenAPI v3 unchanged.
_COMPUTED = frozenset(
    {
        "default",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "anyOf",
        "properties",
        "additionalProperties",
        "items",
        "x-kubernetes-validations",
    }
)
_PASSTHROUGH = frozenset(_ORDER) - _COMPUTED


def _inline(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """Replace a $ref by its definition; the referring field's own keys win (its description)."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[-1]]
    return {**_inline(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}


def _drop_null(node: JsonSchema, defs: dict[str, JsonSchema]) -> JsonSchema:
    """`X | None` is an optional field in Kubernetes, not a nullable one."""
    branches = node.get("anyOf")
    if branches is None or node.get("x-kubernetes-int-or-string"):
        return node
    kept = [b for b in branches if b.get("type") != "null"]
    if len(kept) != 1:
        raise ValueError(f"a union the CRD cannot express: {branches}")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    return {**_inline(kept[0], defs), **rest}


def to_openapi(node: JsonSchema, defs: dict[str, JsonSchema], *, defaults: bool) -> JsonSchema:
    """Translate one pydantic JSON Schema node to a structural OpenAPI v3 schema."""
    node = _drop_null(_inline(node, defs), defs)
    out: JsonSchema = {k: v for k, v in node.items() if k in _PASSTHROUGH}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "exclusiveMinimum" in node:
        out.update(minimum=node["exclusiveMinimum"], exclusiveMinimum=True)
    if "exclusiveMaximum" in node:
        out.update(maximum=node["exclusiveMaximum"], exclusiveMaximum=True)
    if out.get("type") == "string" and "enum" in out and "maxLength" not in out:
        # Bounds the CEL cost estimate of rules that compare the string.
        out["maxLength"] = max(len(str(value)) for value in out["enum"])
    if defaults and node.get("default") is not None:
        out["default"] = node["default"]
    if "properties" in node:
        out["type"] = "object"
        out["properties"] = {
            name: to_openapi(child, defs, defaults=defaults)
            for name, child in node["properties"].items()
        }
    elif isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_openapi(
            node["additionalProperties"], defs, defaults=defaults
        )
    if "items" in node:
        out["items"] = to_openapi(node["items"], defs, defaults=defaults)
    if out.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": b["type"]} for b in node["anyOf"]]
        out.update({k: v for b in node["anyOf"] for k, v in b.items() if k == "pattern"})
    if "x-kubernetes-validations" in node:
        out["x-kubernetes-validations"] = [
            {k: rule[k] for k in ("rule", "message", "fieldPath") if k in rule}
            for rule in node["x-kubernetes-validations"]
        ]
    return {k: out[k] for k in _ORDER if k in out}


def _schema(
    model: type[MnistTuningSpec] | type[MnistTuningStatus], *, defaults: bool
) -> JsonSchema:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return to_openapi(schema, schema.get("$defs", {}), defaults=defaults)


def openapi_schema() -> JsonSchema:
    """Return the object schema: spec with defaults, status without (the operator writes it)."""
    spec = _schema(MnistTuningSpec, defaults=True)
    spec["description"] = (
        "What to tune: the objective, the search space over the trainer's hyperparameters, "
        "the trial budget, and how each trial pod runs."
    )
    status = _schema(MnistTuningStatus, defaults=False)
    status["description"] = "What the tuning found, written by the operator."
    return {
        "type": "object",
        "description": "Tunes the hyperparameters of a PyTorch MNIST model with a Katib "
        "Experiment, or on this machine with `mnist-tuning run`.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": API_VERSION},
            "kind": {"type": "string", "description": KIND},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {MAX_TUNING_NAME}",
                "message": f"metadata.name must be at most {MAX_TUNING_NAME} characters (it "
                "labels the Experiment and its pods); choose a shorter name",
            }
        ],
    }


def crd() -> dict[str, Any]:
    """Build the CustomResourceDefinition manifest."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }
