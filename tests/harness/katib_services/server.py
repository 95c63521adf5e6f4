"""Katib's `Suggestion` and `EarlyStopping` gRPC services over the stand-ins.

Katib's controller creates one suggestion Deployment per Experiment and calls it with the whole
Experiment each time: first `ValidateAlgorithmSettings` (INVALID_ARGUMENT fails the Suggestion
with our message), then `GetSuggestions` for exactly `current_request_number` assignments,
passing every trial so far. Its readiness and liveness probes are native gRPC health checks of
the service `manager.v1beta1.Suggestion`. The algorithm picks the search: `random` and `tpe`
are Katib's hyperopt service, `grid` and `multivariate-tpe` its optuna service,
`bayesianoptimization` its skopt service.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from concurrent import futures
from datetime import UTC, datetime
from types import ModuleType
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from katib_services.cluster import InCluster
from katib_services.median_stop import MedianStop
from katib_services.space import Observed, Parameter, SearchSpec, SettingsError

PORT = 6789
EARLY_STOPPING_PORT = 6788
HEALTH_SERVICE = "manager.v1beta1.Suggestion"
KINDS = {1: "double", 2: "int", 3: "discrete", 4: "categorical"}
DISTRIBUTIONS = {0: "uniform", 1: "uniform", 2: "logUniform", 3: "normal", 4: "logNormal"}
MAXIMIZE = 2
# Trial conditions whose objective value the algorithms learn from (Katib's enum values).
SUCCEEDED, EARLY_STOPPED = 2, 6
# Each algorithm's search, imported when an Experiment asks for it: one library is already
# more than Katib's default suggestion memory limit holds (see node.katib.SERVICES_MEMORY).
SEARCHES = {
    "random": "hyperopt_search.HyperoptSearch",
    "tpe": "hyperopt_search.HyperoptSearch",
    "grid": "optuna_search.OptunaSearch",
    "multivariate-tpe": "optuna_search.OptunaSearch",
    "bayesianoptimization": "skopt_search.SkoptSearch",
}
SERVED = tuple(SEARCHES)


class Search(Protocol):
    def suggest(self, observed: list[Observed], count: int) -> list[dict[str, str]]: ...


def parameters(experiment: Any) -> list[Parameter]:
    """Our `Parameter`s from an `api_pb2.Experiment`'s parameter specs."""
    found = []
    for spec in experiment.spec.parameter_specs.parameters:
        space, kind = spec.feasible_space, KINDS[spec.parameter_type]
        numeric = kind in ("double", "int")
        found.append(
            Parameter(
                name=spec.name,
                kind=kind,
                low=float(space.min) if numeric else 0.0,
                high=float(space.max) if numeric else 0.0,
                step=float(space.step) if numeric and space.step else None,
                choices=tuple(space.list),
                distribution=DISTRIBUTIONS[space.distribution],
            )
        )
    return found


def observed(experiment: Any, trials: Any) -> list[Observed]:
    """The succeeded and early-stopped trials with their objective's value; a value that is
    not a number fails the request, as in Katib's services."""
    metric = experiment.spec.objective.objective_metric_name
    seen = []
    for trial in trials:
        if trial.status.condition not in (SUCCEEDED, EARLY_STOPPED):
            continue
        values = {m.name: m.value for m in trial.status.observation.metrics}
        if metric not in values:
            continue  # Katib's services leave out a trial that reported no objective
        assignments = {a.name: a.value for a in trial.spec.parameter_assignments.assignments}
        seen.append(Observed(trial.name, assignments, float(values[metric])))
    return seen


def search_for(experiment: Any) -> Search:
    """The search Katib's service for the Experiment's algorithm would run; SettingsError if
    that service would refuse the Experiment."""
    spec = experiment.spec
    search = SearchSpec(
        algorithm=spec.algorithm.algorithm_name,
        parameters=tuple(parameters(experiment)),
        settings={s.name: s.value for s in spec.algorithm.algorithm_settings},
        maximize=spec.objective.type == MAXIMIZE,
        max_trials=spec.max_trial_count,
    )
    if search.algorithm not in SEARCHES:
        raise SettingsError(
            f"unknown algorithm name {search.algorithm}; this service serves {SERVED}"
        )
    module, _, name = SEARCHES[search.algorithm].partition(".")
    searching: Callable[[SearchSpec], Search] = getattr(
        importlib.import_module(f"katib_services.{module}"), name
    )
    return searching(search)


class SuggestionService:
    """The servicer: one search per Experiment, made on its first request."""

    def __init__(self, api: ModuleType) -> None:
        self.api = api
        self.searches: dict[str, Search] = {}
        self.lock = threading.Lock()

    def ValidateAlgorithmSettings(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        try:
            search_for(request.experiment)
        except (SettingsError, ValueError, KeyError) as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return self.api.ValidateAlgorithmSettingsReply()

    def GetSuggestions(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        experiment = request.experiment
        with self.lock:
            if experiment.name not in self.searches:
                self.searches[experiment.name] = search_for(experiment)
            chosen = self.searches[experiment.name].suggest(
                observed(experiment, request.trials), request.current_request_number
            )
        reply = self.api.GetSuggestionsReply
        return reply(
            parameter_assignments=[
                reply.ParameterAssignments(
                    assignments=[
                        self.api.ParameterAssignment(name=name, value=value)
                        for name, value in assignment.items()
                    ]
                )
                for assignment in chosen
            ]
        )


class EarlyStoppingService:
    """Katib's `EarlyStopping` API for `medianstop`: rules from the DB manager's logs, and the
    Trial status the metrics collector asks for once it stopped a trial."""

    def __init__(self, api: ModuleType, glue: ModuleType, cluster: Callable[[], InCluster]):
        self.api, self.glue, self.cluster = api, glue, cluster
        self.rules: dict[str, MedianStop] = {}
        self.lock = threading.Lock()

    def ValidateEarlyStoppingSettings(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        spec = request.early_stopping
        try:
            MedianStop(spec.algorithm_name, {s.name: s.value for s in spec.algorithm_settings})
        except SettingsError as error:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return self.api.ValidateEarlyStoppingSettingsReply()

    def _logged(self, address: str, trial: str, metric: str) -> list[float]:
        """The objective's values one trial reported, in order, from Katib's DB manager."""
        with grpc.insecure_channel(address) as channel:
            ask = self.glue.DBManagerStub(channel).GetObservationLog
            reply = ask(self.api.GetObservationLogRequest(trial_name=trial, metric_name=metric))
        return [float(log.metric.value) for log in reply.observation_log.metric_logs]

    def GetEarlyStoppingRules(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        spec = request.experiment.spec
        metric = spec.objective.objective_metric_name
        with self.lock:
            if request.experiment.name not in self.rules:
                settings = {s.name: s.value for s in spec.early_stopping.algorithm_settings}
                self.rules[request.experiment.name] = MedianStop(
                    spec.early_stopping.algorithm_name, settings
                )
            rule = self.rules[request.experiment.name]
            for trial in request.trials:
                if trial.status.condition == SUCCEEDED and not rule.knows(trial.name):
                    values = self._logged(request.db_manager_address, trial.name, metric)
                    rule.learn(trial.name, values)
            threshold = rule.threshold()
        rules = []
        if threshold is not None:
            # A maximized objective stops a trial below the value, a minimized one above it.
            comparison = self.api.LESS if spec.objective.type == MAXIMIZE else self.api.GREATER
            rules.append(
                self.api.EarlyStoppingRule(
                    name=metric,
                    value=str(threshold),
                    comparison=comparison,
                    start_step=rule.start_step,
                )
            )
        return self.api.GetEarlyStoppingRulesReply(early_stopping_rules=rules)

    def SetTrialStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.cluster().mark_early_stopped(request.trial_name, now)
        return self.api.SetTrialStatusReply()


def _listening(port: int) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    return server, server.add_insecure_port(f"[::]:{port}")


def serve(api: ModuleType, glue: ModuleType, port: int = PORT) -> grpc.Server:
    """Serve `Suggestion` on `port` (0: any free one, see `server.bound_port`)."""
    server, bound = _listening(port)
    glue.add_SuggestionServicer_to_server(SuggestionService(api), server)
    checks = health.HealthServicer()
    for name in ("", HEALTH_SERVICE):
        checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.bound_port = bound  # type: ignore[attr-defined]
    server.start()
    return server


def serve_early_stopping(
    api: ModuleType, glue: ModuleType, port: int = EARLY_STOPPING_PORT
) -> grpc.Server:
    """Serve `EarlyStopping` on `port` (0: any free one, see `server.bound_port`)."""
    server, bound = _listening(port)
    glue.add_EarlyStoppingServicer_to_server(
        EarlyStoppingService(api, glue, InCluster.from_pod), server
    )
    server.bound_port = bound  # type: ignore[attr-defined]
    server.start()
    return server
