"""The MnistTuning resource: spec and status models, and the one place its rules live.

Each cross-field rule is written once, as a `Rule` with a Python check and the CEL
expression the CRD carries, so `validate`/`render` and `kubectl apply` refuse the
same manifests with the same message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import (
    Annotated,
    Any,
    ClassVar,
    Generic,
    Literal,
    NamedTuple,
    TypeVar,
    get_args,
)

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

GROUP = "tuning.mnist.dev"
VERSION = "v1alpha1"
KIND = "MnistTuning"
PLURAL = "mnisttunings"
SINGULAR = "mnisttuning"
SHORT_NAME = "mnt"
CATEGORY = "tuning"
API_VERSION = f"{GROUP}/{VERSION}"

Hyperparameter = Literal[
    "learningRate", "momentum", "batchSize", "epochs", "optimizer", "dropout", "weightDecay"
]
HYPERPARAMETERS: tuple[Hyperparameter, ...] = (
    "learningRate",
    "momentum",
    "batchSize",
    "epochs",
    "optimizer",
    "dropout",
    "weightDecay",
)
TRAINER_FLAGS: dict[str, str] = {
    "learningRate": "--learning-rate",
    "momentum": "--momentum",
    "batchSize": "--batch-size",
    "epochs": "--epochs",
    "optimizer": "--optimizer",
    "dropout": "--dropout",
    "weightDecay": "--weight-decay",
}
# What the trainer uses for a hyperparameter nobody searched or fixed.
TRAINER_DEFAULTS: dict[str, float | int | str] = {
    "learningRate": 0.01,
    "momentum": 0.5,
    "batchSize": 64,
    "epochs": 1,
    "optimizer": "sgd",
    "dropout": 0.0,
    "weightDecay": 0.0,
}
OPTIMIZERS = ("sgd", "adam", "adamw")

# The values the trainer accepts, one alias per hyperparameter; the CRD's minimum/maximum come
# from these same constraints.
LearningRate = Annotated[float, Field(gt=0, le=10)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
BatchSize = Annotated[int, Field(ge=1, le=4096)]
Epochs = Annotated[int, Field(ge=1, le=100)]
Optimizer = Literal["sgd", "adam", "adamw"]
Dropout = Annotated[float, Field(ge=0, lt=1)]
WeightDecay = Annotated[float, Field(ge=0, le=1)]

MAX_VALUES = 64
MAX_NAME = 253
# The tuning name is also a label value on the Experiment and its pods.
MAX_TUNING_NAME = 63
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
IMAGE_PATTERN = r"^[^\s]+$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class Problem(NamedTuple):
    """One thing wrong with a manifest: where (a dotted field path) and what to do about it."""

    path: str
    message: str


class SpecError(ValueError):
    """A manifest that is not a valid MnistTuning; lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{p.path}: {p.message}" for p in problems))


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: a Python check on the model and the same rule in CEL for the CRD."""

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def to_cel(self) -> dict[str, str]:
        """Return the rule as one entry of a CRD's x-kubernetes-validations."""
        cel = {"rule": self.cel, "message": self.message}
        if self.field_path:
            cel["fieldPath"] = self.field_path
        return cel


# camelCase on the wire, snake_case in Python, both accepted on input.
_CAMEL_CASE = ConfigDict(
    alias_generator=to_camel,
    validate_by_name=True,
    validate_by_alias=True,
    serialize_by_alias=True,
)


class _Model(BaseModel):
    """Shared settings: camelCase on the wire, unknown keys refused, rules checked after fields."""

    model_config = ConfigDict(**_CAMEL_CASE, extra="forbid", frozen=True)
    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Any:
        broken = [rule.message for rule in self.rules if not rule.check(self)]
        if broken:
            raise ValueError("; ".join(broken))
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Carry the rules into the schema as CEL, so the CRD enforces what Python does."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        if cls.rules:
            schema["x-kubernetes-validations"] = [rule.to_cel() for rule in cls.rules]
        return schema


N = TypeVar("N")


def _range_rules(log_min_positive: bool) -> tuple[Rule, ...]:
    """Rules every numeric search space shares; `0.0`/`0` literals keep CEL types exact."""
    rules = [
        Rule(
            "has(self.values) ? !has(self.min) && !has(self.max) && !has(self.step) "
            "&& !has(self.scale) : has(self.min) && has(self.max)",
            "give either values or min and max (with optional step and scale), not both",
            lambda s: (
                s.min is None and s.max is None and s.step is None and s.scale is None
                if s.values is not None
                else s.min is not None and s.max is not None
            ),
        ),
        Rule(
            "!has(self.min) || !has(self.max) || self.min < self.max",
            "min must be less than max; swap them or widen the range",
            lambda s: s.min is None or s.max is None or s.min < s.max,
        ),
        Rule(
            "!has(self.values) || self.values.all(v, self.values.exists_one(w, w == v))",
            "values must not repeat; remove the duplicates",
            lambda s: s.values is None or len(set(s.values)) == len(s.values),
        ),
    ]
    if log_min_positive:
        rules.append(
            Rule(
                "!has(self.scale) || self.scale != 'log' || !has(self.min) || self.min > 0.0",
                "scale log needs min greater than 0; raise min or use scale linear",
                lambda s: s.scale != "log" or s.min is None or s.min > 0,
            )
        )
    return tuple(rules)


class _Space(_Model, Generic[N]):
    """A numeric search space: a range (min, max, optional step and scale) or a list of values."""

    min: N | None = Field(None, description="Lowest value to try (inclusive).")
    max: N | None = Field(None, description="Highest value to try (inclusive).")
    values: list[N] | None = Field(
        None,
        min_length=1,
        max_length=MAX_VALUES,
        description="Try exactly these values instead of a range; non-empty, no repeats.",
    )
    scale: Literal["linear", "log"] | None = Field(
        None,
        description="How to sample between min and max: linear (uniform) or log (uniform in "
        "the logarithm; needs min > 0). Default linear.",
    )


class FloatSpace(_Space[N], Generic[N]):
    """A search space for a real-valued hyperparameter."""

    step: float | None = Field(
        None, gt=0, description="Only try multiples of this step (greater than 0)."
    )
    rules = _range_rules(log_min_positive=True)


class IntSpace(_Space[N], Generic[N]):
    """A search space for an integer hyperparameter."""

    step: int | None = Field(
        None, ge=1, description="Only try multiples of this step (at least 1). Default 1."
    )
    rules = _range_rules(log_min_positive=False)


class ChoiceSpace(_Model):
    """The optimizers to try."""

    values: list[Optimizer] = Field(
        min_length=1,
        max_length=len(OPTIMIZERS),
        description="Optimizers to try, each at most once: sgd, adam, adamw.",
    )
    rules = (
        Rule(
            "self.values.all(v, self.values.exists_one(w, w == v))",
            "values must not repeat; remove the duplicates",
            lambda s: len(set(s.values)) == len(s.values),
        ),
    )


def _searched_names(search: Search) -> list[str]:
    return [name for name in HYPERPARAMETERS if getattr(search, _attr(name)) is not None]


def _attr(name: str) -> str:
    """Python attribute name for a camelCase hyperparameter."""
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


class Search(_Model):
    """The hyperparameters to tune and where to look; keys are the trainer's hyperparameters."""

    learning_rate: FloatSpace[LearningRate] | None = Field(
        None, description="SGD/Adam step size; the trainer accepts (0, 10]. Try scale log."
    )
    momentum: FloatSpace[Momentum] | None = Field(
        None, description="SGD momentum; the trainer accepts [0, 1)."
    )
    batch_size: IntSpace[BatchSize] | None = Field(
        None, description="Examples per training step; the trainer accepts 1..4096."
    )
    epochs: IntSpace[Epochs] | None = Field(
        None, description="Passes over the training data; the trainer accepts 1..100."
    )
    optimizer: ChoiceSpace | None = Field(None, description="Optimizers to try.")
    dropout: FloatSpace[Dropout] | None = Field(
        None, description="Dropout probability; the trainer accepts [0, 1)."
    )
    weight_decay: FloatSpace[WeightDecay] | None = Field(
        None, description="L2 penalty; the trainer accepts [0, 1]."
    )
    rules = (
        Rule(
            " || ".join(f"has(self.{name})" for name in HYPERPARAMETERS),
            "search must name at least one hyperparameter, e.g. learningRate: {min: 0.001, "
            "max: 0.1, scale: log}",
            lambda s: bool(_searched_names(s)),
        ),
    )

    def names(self) -> list[str]:
        """List the searched hyperparameters, in the trainer's order."""
        return _searched_names(self)

    def space(self, name: str) -> FloatSpace[Any] | IntSpace[Any] | ChoiceSpace:
        """Return the search space of one searched hyperparameter."""
        space: FloatSpace[Any] | IntSpace[Any] | ChoiceSpace = getattr(self, _attr(name))
        return space


class Fixed(_Model):
    """Hyperparameters held constant in every trial; anything unnamed uses the trainer default."""

    learning_rate: LearningRate | None = Field(None, description="Default 0.01.")
    momentum: Momentum | None = Field(None, description="Default 0.5.")
    batch_size: BatchSize | None = Field(None, description="Default 64.")
    epochs: Epochs | None = Field(None, description="Default 1.")
    optimizer: Optimizer | None = Field(None, description="Default sgd.")
    dropout: Dropout | None = Field(None, description="Default 0.0.")
    weight_decay: WeightDecay | None = Field(None, description="Default 0.0.")

    def values(self) -> dict[str, float | int | str]:
        """Return the fixed hyperparameters that were given, by camelCase name."""
        return {
            name: value
            for name in HYPERPARAMETERS
            if (value := getattr(self, _attr(name))) is not None
        }


class Objective(_Model):
    """What a trial is judged by."""

    metric: Literal["accuracy", "loss"] = Field(
        "accuracy",
        description="accuracy (validation accuracy, maximized) or loss (validation loss, "
        "minimized).",
    )
    goal: float | None = Field(
        None,
        ge=0,
        description="Stop early once the best trial reaches this value (accuracy: at most 1).",
    )
    rules = (
        Rule(
            "!has(self.goal) || self.metric != 'accuracy' || self.goal <= 1.0",
            "goal for accuracy must be at most 1; accuracy is a fraction",
            lambda s: s.goal is None or s.metric != "accuracy" or s.goal <= 1,
        ),
    )

    @property
    def maximize(self) -> bool:
        """Accuracy goes up, loss goes down."""
        return self.metric == "accuracy"

    @property
    def other_metric(self) -> str:
        """The metric reported alongside the objective."""
        return "loss" if self.metric == "accuracy" else "accuracy"

    @property
    def strategies(self) -> dict[str, str]:
        """Katib's metricStrategies: each metric's best value, objective first."""
        best, worst = ("max", "min") if self.maximize else ("min", "max")
        return {self.metric: best, self.other_metric: worst}


AlgorithmName = Literal[
    "random", "grid", "tpe", "multivariate-tpe", "cmaes", "sobol", "bayesianoptimization"
]
ALGORITHMS: tuple[AlgorithmName, ...] = get_args(AlgorithmName)


class Algorithm(_Model):
    """How trials are chosen."""

    name: AlgorithmName = Field(
        "random",
        description="Search algorithm, as Katib names it: random, grid (every combination "
        "once), tpe, multivariate-tpe, cmaes, sobol (quasi-random), bayesianoptimization.",
    )
    seed: int | None = Field(
        None,
        ge=0,
        le=2**31 - 1,
        description="Random seed (Katib random_state); drawn and recorded in status.seed when "
        "absent.",
    )


# Katib's medianstop service defaults (pkg/earlystopping/v1beta1/medianstop/service.py).
DEFAULT_MIN_TRIALS = 3
DEFAULT_START_STEP = 4


class EarlyStopping(_Model):
    """Stop hopeless trials early, by Katib's median stopping rule (medianstop).

    A trial is stopped when, at its startStep-th report of the objective, its best value so
    far is worse than the mean over succeeded trials of their first startStep reports.
    """

    rule: Literal["median"] = Field("median", description="median: Katib's medianstop.")
    min_trials: int = Field(
        DEFAULT_MIN_TRIALS,
        ge=1,
        le=1000,
        description="Succeeded trials needed before any trial is stopped (Katib "
        "min_trials_required). Default 3.",
    )
    start_step: int = Field(
        DEFAULT_START_STEP,
        ge=1,
        le=100,
        description="The report (epoch) at which a trial is judged (Katib start_step). Default 4.",
    )


DEFAULT_MAX_TRIALS = 12
DEFAULT_PARALLEL_TRIALS = 3
DEFAULT_MAX_FAILED_TRIALS = 3


def _capped_defaults_in_code(schema: dict[str, Any]) -> None:
    """Leave capped defaults to code: they depend on maxTrials, which a CRD default cannot."""
    for name in ("parallelTrials", "maxFailedTrials"):
        schema["properties"][name].pop("default", None)


class Budget(_Model):
    """How many trials to run; the only part of a running tuning that changes in place."""

    model_config = ConfigDict(json_schema_extra=_capped_defaults_in_code)

    max_trials: int = Field(
        DEFAULT_MAX_TRIALS, ge=1, le=1000, description="Trials to run in total."
    )
    parallel_trials: int = Field(
        DEFAULT_PARALLEL_TRIALS,
        ge=1,
        le=100,
        description="Trials running at once; at most maxTrials. Default min(3, maxTrials).",
    )
    max_failed_trials: int = Field(
        DEFAULT_MAX_FAILED_TRIALS,
        ge=0,
        le=1000,
        description="Give up after this many failed trials; at most maxTrials. Default "
        "min(3, maxTrials).",
    )
    rules = (
        Rule(
            "!has(self.parallelTrials) || self.parallelTrials <= self.maxTrials",
            "parallelTrials must not exceed maxTrials; lower parallelTrials or raise maxTrials",
            lambda s: s.parallel_trials <= s.max_trials,
        ),
        Rule(
            "!has(self.maxFailedTrials) || self.maxFailedTrials <= self.maxTrials",
            "maxFailedTrials must not exceed maxTrials; lower maxFailedTrials or raise maxTrials",
            lambda s: s.max_failed_trials <= s.max_trials,
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _cap_defaults(cls, data: Any) -> Any:
        """Unset parallel/failed counts default to 3, capped at maxTrials (Katib needs ≤)."""
        if isinstance(data, Mapping):
            data = dict(data)
            max_trials = data.get("maxTrials", data.get("max_trials", DEFAULT_MAX_TRIALS))
            if isinstance(max_trials, int) and max_trials >= 1:
                for alias, name, default in (
                    ("parallelTrials", "parallel_trials", DEFAULT_PARALLEL_TRIALS),
                    ("maxFailedTrials", "max_failed_trials", DEFAULT_MAX_FAILED_TRIALS),
                ):
                    if alias not in data and name not in data:
                        data[alias] = min(default, max_trials)
        return data


class SecretRef(_Model):
    """A Secret in the tuning's namespace."""

    name: str = Field(
        min_length=1, max_length=MAX_NAME, description="Name of a docker-registry Secret."
    )


def _quantity(value: Any) -> int | str:
    """Accept a quantity as the API server does in a CRD: a whole number or a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(QUANTITY_PATTERN, value):
        return value
    raise ValueError(f'{value!r} is not a Kubernetes quantity; write e.g. "500m", "2", "1Gi"')


Quantity = Annotated[
    int | str,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY_PATTERN}],
            "x-kubernetes-int-or-string": True,
        }
    ),
]


class Resources(_Model):
    """Compute resources of each trial's container (Kubernetes quantities)."""

    requests: dict[str, Quantity] | None = Field(
        None,
        max_length=16,
        description='Guaranteed resources, e.g. {cpu: "1", memory: 1Gi}.',
    )
    limits: dict[str, Quantity] | None = Field(
        None, max_length=16, description="Resource caps, e.g. {memory: 2Gi}."
    )


DEFAULT_TIMEOUT_SECONDS = 1800


class Trial(_Model):
    """How each trial pod runs."""

    image: str | None = Field(
        None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Trainer image; default from the operator's settings.",
    )
    image_pull_secrets: list[SecretRef] | None = Field(
        None, max_length=16, description="Secrets for pulling a private trainer image."
    )
    resources: Resources | None = Field(
        None,
        description="Requests and limits of the trainer. Its CPU limit, else its CPU request, "
        "rounded up, is its number of threads; one without either, so that trials sharing a "
        'node do not fight over its cores. Ask for e.g. {requests: {cpu: "2"}} to give each '
        "trial two cores and let the scheduler place trials by them.",
    )
    timeout_seconds: int = Field(
        DEFAULT_TIMEOUT_SECONDS,
        ge=1,
        le=7 * 24 * 3600,
        description="A trial running longer than this fails (Job activeDeadlineSeconds).",
    )


def _overlap_rule(name: str) -> Rule:
    attr = _attr(name)
    return Rule(
        f"!has(self.search) || !has(self.fixed) || !has(self.search.{name}) "
        f"|| !has(self.fixed.{name})",
        f"{name} is in both search and fixed; remove it from one of them",
        lambda s: getattr(s.search, attr) is None or getattr(s.fixed, attr) is None,
        field_path=f".fixed.{name}",
    )


FLOAT_HYPERPARAMETERS = ("learningRate", "momentum", "dropout", "weightDecay")
INT_HYPERPARAMETERS = ("batchSize", "epochs")
# Grid sizes past this need not be exact: no maxTrials reaches it, and CEL ints cannot overflow.
GRID_COUNT_CAP = 2000.0


def _ranged(search: Search, name: str) -> bool:
    space = getattr(search, _attr(name))
    return isinstance(space, _Space) and space.min is not None


def real_grid(low: float, high: float, step: float) -> list[float]:
    """List the values Katib's grid (optuna service) tries for a real range, in order.

    `numpy.arange(min, max + step, step)` less a last value above max; numpy fills it as
    min + i * ((min + step) - min), and so does this (and the CEL twin, `_grid_count_cel`).
    """
    delta = (low + step) - low
    values = [low + i * delta for i in range(math.ceil((high + step - low) / step))]
    return values[:-1] if values[-1] > high else values


def grid_count(space: FloatSpace[Any] | IntSpace[Any] | ChoiceSpace) -> float:
    """Count the values Katib's grid tries for one parameter (past the cap: roughly).

    Integer ranges step by 1 unless told; a real range without step counts as the cap (its
    own rule reports it).
    """
    if space.values is not None:
        return float(len(space.values))
    if space.min is None or space.max is None:
        return GRID_COUNT_CAP
    if isinstance(space, IntSpace):
        return float((space.max - space.min) // (space.step or 1) + 1)
    if space.step is None:
        return GRID_COUNT_CAP
    low, high, step = float(space.min), float(space.max), float(space.step)
    quotient = (high + step - low) / step
    return quotient if quotient >= GRID_COUNT_CAP else float(len(real_grid(low, high, step)))


def grid_size(search: Search) -> float:
    """Count the combinations Katib's grid enumerates: the product of every count."""
    return math.prod(grid_count(search.space(name)) for name in search.names())


def _grid_count_cel(name: str) -> str:
    x = f"self.search.{name}"
    if name == "optimizer":
        return f"(!has({x}) ? 1.0 : double(size({x}.values)))"
    if name in INT_HYPERPARAMETERS:
        ranged = f"double(({x}.max - {x}.min) / (has({x}.step) ? {x}.step : 1) + 1)"
    else:
        q = f"(({x}.max + {x}.step - {x}.min) / {x}.step)"
        n = f"(double(int({q})) + (double(int({q})) < {q} ? 1.0 : 0.0))"
        last = f"({x}.min + ({n} - 1.0) * (({x}.min + {x}.step) - {x}.min))"
        exact = f"({last} > {x}.max ? {n} - 1.0 : {n})"
        ranged = f"(!has({x}.step) ? {GRID_COUNT_CAP} : {q} >= {GRID_COUNT_CAP} ? {q} : {exact})"
    return (
        f"(!has({x}) ? 1.0 : has({x}.values) ? double(size({x}.values)) : "
        f"!has({x}.min) || !has({x}.max) ? {GRID_COUNT_CAP} : {ranged})"
    )


def _grid_step_rule(name: str) -> Rule:
    return Rule(
        f"self.algorithm.name != 'grid' || !has(self.search.{name}) "
        f"|| !has(self.search.{name}.min) || has(self.search.{name}.step)",
        f"algorithm grid needs a step for search.{name} (Katib's grid tries min, min + step, "
        "... up to max); add step or give values",
        lambda s: (
            s.algorithm.name != "grid"
            or not _ranged(s.search, name)
            or s.search.space(name).step is not None
        ),
        field_path=f".search.{name}",
    )


def _log_uniform_rule(name: str) -> Rule:
    return Rule(
        f"self.algorithm.name != 'bayesianoptimization' || !has(self.search.{name}) "
        f"|| !has(self.search.{name}.min) || self.search.{name}.min > 0.0",
        f"algorithm bayesianoptimization samples search.{name} on a log scale (Katib's skopt "
        "service does so for every real range), so its min must be greater than 0; raise "
        "min, give values, or choose another algorithm",
        lambda s: (
            s.algorithm.name != "bayesianoptimization"
            or not _ranged(s.search, name)
            or s.search.space(name).min > 0
        ),
        field_path=f".search.{name}",
    )


# Katib v0.19.0 serves these with goptuna, whose converter draws every range uniformly whatever
# its distribution: a log range would be searched differently on a cluster and here.
UNIFORM_ONLY_ALGORITHMS = ("cmaes", "sobol")


def _uniform_only_rule(name: str) -> Rule:
    return Rule(
        f"!(self.algorithm.name in {list(UNIFORM_ONLY_ALGORITHMS)}) || !has(self.search.{name}) "
        f"|| !has(self.search.{name}.scale) || self.search.{name}.scale != 'log'",
        f"algorithms cmaes and sobol cannot search search.{name} on a log scale: Katib "
        "v0.19.0's goptuna service draws every range uniformly (it ignores scale log), so "
        "the cluster would run another search than the local engine; use scale linear with "
        "a narrower range, or an algorithm that honours log (random, tpe, multivariate-tpe, "
        "bayesianoptimization)",
        lambda s: (
            s.algorithm.name not in UNIFORM_ONLY_ALGORITHMS
            or not _ranged(s.search, name)
            or s.search.space(name).scale != "log"
        ),
        field_path=f".search.{name}",
    )


ALGORITHM_RULES: tuple[Rule, ...] = (
    *(_grid_step_rule(name) for name in FLOAT_HYPERPARAMETERS),
    Rule(
        "self.algorithm.name != 'grid' || double(self.budget.maxTrials) <= "
        + " * ".join(_grid_count_cel(name) for name in HYPERPARAMETERS),
        "algorithm grid runs each combination at most once, so budget.maxTrials must not "
        "exceed the number of combinations (the product of each parameter's number of "
        "values); lower maxTrials or widen the grid",
        lambda s: s.algorithm.name != "grid" or s.budget.max_trials <= grid_size(s.search),
        field_path=".budget.maxTrials",
    ),
    Rule(
        "self.algorithm.name != 'cmaes' || "
        + " + ".join(
            f"(has(self.search.{name}) && has(self.search.{name}.min) ? 1 : 0)"
            for name in (*FLOAT_HYPERPARAMETERS, *INT_HYPERPARAMETERS)
        )
        + " >= 2",
        "algorithm cmaes needs at least two hyperparameters in search with a range (min and "
        "max), as Katib's CMA-ES service refuses fewer; search another range or choose tpe",
        lambda s: (
            s.algorithm.name != "cmaes"
            or sum(_ranged(s.search, name) for name in s.search.names()) >= 2
        ),
        field_path=".search",
    ),
    *(_log_uniform_rule(name) for name in FLOAT_HYPERPARAMETERS),
    *(_uniform_only_rule(name) for name in (*FLOAT_HYPERPARAMETERS, *INT_HYPERPARAMETERS)),
)

# The API server applies nested defaults only inside objects that exist.
EMPTY_DEFAULT: dict[str, Any] = {"default": {}}


class MnistTuningSpec(_Model):
    """What to tune, how long, and how each trial runs."""

    objective: Objective = Field(
        default_factory=Objective, json_schema_extra=EMPTY_DEFAULT, description="What to optimize."
    )
    algorithm: Algorithm = Field(
        default_factory=Algorithm,
        json_schema_extra=EMPTY_DEFAULT,
        description="How to pick trials.",
    )
    budget: Budget = Field(
        default_factory=Budget, json_schema_extra=EMPTY_DEFAULT, description="How many trials."
    )
    search: Search = Field(description="The hyperparameters to tune; at least one.")
    fixed: Fixed = Field(
        default_factory=Fixed,
        json_schema_extra=EMPTY_DEFAULT,
        description="Hyperparameters held constant.",
    )
    trial: Trial = Field(
        default_factory=Trial,
        json_schema_extra=EMPTY_DEFAULT,
        description="How each trial pod runs.",
    )
    early_stopping: EarlyStopping | None = Field(
        None, description="Stop hopeless trials early (Katib medianstop); off when absent."
    )
    rules = (
        *(_overlap_rule(name) for name in HYPERPARAMETERS),
        *ALGORITHM_RULES,
    )


class ObjectMeta(_Model):
    """The parts of Kubernetes metadata the tuning uses; the rest is ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=MAX_TUNING_NAME, pattern=DNS_SUBDOMAIN_PATTERN)
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class MnistTuning(_Model):
    """A MnistTuning resource as read from a manifest or the API server (status not included)."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["tuning.mnist.dev/v1alpha1"]
    kind: Literal["MnistTuning"]
    metadata: ObjectMeta
    spec: MnistTuningSpec


def _path(loc: tuple[int | str, ...]) -> str:
    """Dotted field path from a pydantic location: spec.search.batchSize.values[2]."""
    path = ""
    for item in loc:
        path += f"[{item}]" if isinstance(item, int) else f"{'.' if path else ''}{item}"
    return path or "(top level)"


REQUIRED_HINTS: dict[tuple[str, ...], str] = {
    ("apiVersion",): f"required; add `apiVersion: {API_VERSION}`",
    ("kind",): f"required; add `kind: {KIND}`",
    ("metadata",): "required; add `metadata: {name: my-tuning}`",
    ("spec", "search"): "required; name at least one hyperparameter to tune, e.g. "
    "`learningRate: {min: 0.001, max: 0.1, scale: log}`",
}


def _message(error: Mapping[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field; remove it (check the spelling against `kubectl explain mnisttuning`)"
    if error["type"] == "missing":
        return REQUIRED_HINTS.get(tuple(error["loc"]), "required; add it")
    if error["type"] == "string_pattern_mismatch":
        pattern = error.get("ctx", {}).get("pattern")
        if pattern == DNS_SUBDOMAIN_PATTERN:
            return "a Kubernetes name: lower-case letters, digits, '-' and '.', e.g. lr-momentum"
        if pattern == IMAGE_PATTERN:
            return (
                "an image reference has no spaces; write e.g. registry.example/mnist-trainer:0.1.0"
            )
    message = str(error["msg"]).removeprefix("Value error, ")
    return message.replace("Input should be", "must be")


def parse_tuning(manifest: Mapping[str, Any]) -> MnistTuning:
    """Validate a MnistTuning manifest, raising SpecError with every problem and its field path."""
    if not isinstance(manifest, Mapping):
        raise SpecError([Problem("(top level)", "expected a MnistTuning object (a YAML mapping)")])
    try:
        return MnistTuning.model_validate(manifest)
    except ValidationError as exc:
        problems = [
            Problem(_path(tuple(e["loc"])), _message(e)) for e in exc.errors(include_url=False)
        ]
        raise SpecError(problems) from None


Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
MAX_CONDITIONS = 16
MAX_STRING = 32768


class _StatusModel(BaseModel):
    """Status models: camelCase on the wire, None left out, lenient about extra keys."""

    model_config = _CAMEL_CASE


class Condition(_StatusModel):
    """A Kubernetes-style condition: Katib's own (Created, Running, Succeeded, Failed) or ours."""

    type: str = Field(max_length=316, description="What the condition is about.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", max_length=1024, description="Machine-readable cause, CamelCase.")
    message: str = Field("", max_length=MAX_STRING, description="What happened, what to do.")
    last_transition_time: str | None = Field(
        None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, description="The spec generation the condition was computed from."
    )


class TrialCounts(_StatusModel):
    """Trials by state, as Katib counts them (absent counters are 0)."""

    succeeded: int = Field(0, description="Trials that finished and reported metrics.")
    failed: int = Field(0, description="Trials whose pod failed.")
    running: int = Field(0, description="Trials running now.")
    pending: int = Field(0, description="Trials waiting to start.")
    killed: int = Field(0, description="Trials stopped by Katib.")
    early_stopped: int = Field(0, description="Trials stopped early by Katib.")
    metrics_unavailable: int = Field(
        0, description="Trials that finished without reporting the objective (count as failed)."
    )

    @property
    def done(self) -> int:
        """Count the trials that have finished one way or another."""
        return (
            self.succeeded
            + self.failed
            + self.killed
            + self.early_stopped
            + self.metrics_unavailable
        )


class BestTrial(_StatusModel):
    """The best trial so far; metrics are written flat next to `trial` (accuracy: 0.99)."""

    trial: str
    metrics: dict[str, float] = Field(default_factory=dict)
    hyperparameters: dict[str, float | int | str] = Field(default_factory=dict)
    objective_value: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _gather_metrics(cls, data: Any) -> Any:
        """Read the flat form back: keys that are not fields are metrics."""
        if isinstance(data, Mapping):
            known = {"trial", "metrics", "hyperparameters", "objectiveValue", "objective_value"}
            flat = {k: v for k, v in data.items() if k not in known}
            if flat:
                data = {k: v for k, v in data.items() if k in known}
                data["metrics"] = {**dict(data.get("metrics") or {}), **flat}
        return data

    @model_serializer(mode="wrap")
    def _flatten(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        out = handler(self)
        metrics = out.pop("metrics", {})
        return {**out, **metrics}

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """Describe the flat wire form, with hyperparameters typed as the spec types them."""
        hyperparameters = {
            name: {
                "type": HYPERPARAMETER_TYPES[name],
                "description": f"{name} of the best trial.",
            }
            for name in HYPERPARAMETERS
        }
        return {
            "type": "object",
            "description": cls.__doc__,
            "properties": {
                "trial": {"type": "string", "description": "Name of the best Katib trial."},
                "objectiveValue": {
                    "type": "number",
                    "description": "The best trial's value of the objective metric.",
                },
                "accuracy": {"type": "number", "description": "Best validation accuracy."},
                "loss": {"type": "number", "description": "Best validation loss."},
                "hyperparameters": {
                    "type": "object",
                    "description": "The searched hyperparameters of the best trial.",
                    "properties": hyperparameters,
                },
            },
            "required": ["trial"],
        }


# The JSON type of each hyperparameter in the status (and in Katib's string assignments).
HYPERPARAMETER_TYPES: dict[str, str] = {
    name: "string"
    if name == "optimizer"
    else "integer"
    if name in ("batchSize", "epochs")
    else "number"
    for name in HYPERPARAMETERS
}


SHOWN_DIGITS = 4


def significant(value: float) -> str:
    """`value` at `SHOWN_DIGITS` significant digits: 0.060805291304305564 → 0.06081."""
    return f"{value:.{SHOWN_DIGITS}g}"


class ShownBest(_StatusModel):
    """The best trial as `kubectl get` prints it: a float's every digit would fill the row."""

    best: str | None = Field(
        None, max_length=32, description="The best objective value, 4 significant digits."
    )
    learning_rate: str | None = Field(
        None, max_length=32, description="The best learning rate, 4 significant digits."
    )

    @classmethod
    def of(cls, best: BestTrial) -> ShownBest:
        """Round what the printer columns show; `best` itself keeps the exact values."""
        rate = best.hyperparameters.get("learningRate")
        return cls(
            best=None if best.objective_value is None else significant(best.objective_value),
            learning_rate=significant(rate) if isinstance(rate, float | int) else None,
        )


class MnistTuningStatus(_StatusModel):
    """What the tuning found: the shape of `.status` and of the local engine's status.yaml."""

    phase: Phase = Field("Pending", description="Pending, Running, Succeeded or Failed.")
    observed_generation: int | None = Field(
        None, description="The spec generation this status reflects."
    )
    experiment: str | None = Field(
        None, max_length=63, description="The Katib Experiment now serving this spec."
    )
    seed: int | None = Field(None, description="The random seed in use (Katib random_state).")
    trials: TrialCounts = Field(default_factory=TrialCounts, description="Trials by state.")
    progress: str = Field("0/0", max_length=32, description="Finished trials / maxTrials.")
    best: BestTrial | None = Field(None, description="The best trial so far.")
    shown: ShownBest | None = Field(
        None, description="The best trial rounded for the printer columns; `best` is exact."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=MAX_CONDITIONS,
        description="Latest observations of the tuning's state.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )
    start_time: str | None = Field(None, description="When the Experiment started (RFC 3339).")
    completion_time: str | None = Field(
        None, description="When the Experiment finished (RFC 3339)."
    )

    def to_manifest(self) -> dict[str, Any]:
        """Return the JSON-ready dict for `.status`: camelCase keys, unset values left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
