"""The stand-in suggestion service speaks Katib's gRPC API, generated from Katib's api.proto.

A real gRPC server on loopback and a real client, both on the code `build.sh node` leaves the
proto for; the node tier then runs the same service in its image under Katib's controller.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import grpc
import launcher
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from katib_services import server, stubs
from node.katib import proto_dir


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    proto = proto_dir(launcher.DEFAULT_BIN_DIR)
    if not (proto / stubs.PROTO).is_file():
        pytest.fail(f"no Katib api.proto in {proto}; run `make node-binaries`", pytrace=False)
    return stubs.load(stubs.generate(proto, tmp_path_factory.mktemp("stubs")))


@pytest.fixture(scope="module")
def channel(api: tuple[ModuleType, ModuleType]) -> Iterator[grpc.Channel]:
    serving = server.serve(*api, port=0)
    with grpc.insecure_channel(f"127.0.0.1:{serving.bound_port}") as opened:  # type: ignore[attr-defined]
        yield opened
    serving.stop(grace=None)


def experiment(api: ModuleType, name: str, algorithm: str, **settings: str) -> Any:
    space = api.FeasibleSpace(min="0.0001", max="0.1", distribution=api.LOG_UNIFORM)
    return api.Experiment(
        name=name,
        spec=api.ExperimentSpec(
            algorithm=api.AlgorithmSpec(
                algorithm_name=algorithm,
                algorithm_settings=[
                    api.AlgorithmSetting(name=k, value=v) for k, v in settings.items()
                ],
            ),
            objective=api.ObjectiveSpec(type=api.MAXIMIZE, objective_metric_name="accuracy"),
            parameter_specs=api.ExperimentSpec.ParameterSpecs(
                parameters=[
                    api.ParameterSpec(name="lr", parameter_type=api.DOUBLE, feasible_space=space),
                    api.ParameterSpec(
                        name="optimizer",
                        parameter_type=api.CATEGORICAL,
                        feasible_space=api.FeasibleSpace(list=["sgd", "adam"]),
                    ),
                ]
            ),
        ),
    )


def trial(api: ModuleType, lr: str, accuracy: str, condition: int) -> Any:
    assignments = [
        api.ParameterAssignment(name="lr", value=lr),
        api.ParameterAssignment(name="optimizer", value="sgd"),
    ]
    return api.Trial(
        spec=api.TrialSpec(
            parameter_assignments=api.TrialSpec.ParameterAssignments(assignments=assignments)
        ),
        status=api.TrialStatus(
            condition=condition,
            observation=api.Observation(metrics=[api.Metric(name="accuracy", value=accuracy)]),
        ),
    )


def test_its_health_says_serving_for_the_service_katibs_probe_names(
    channel: grpc.Channel,
) -> None:
    check = health_pb2_grpc.HealthStub(channel).Check
    reply = check(health_pb2.HealthCheckRequest(service=server.HEALTH_SERVICE), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        check(health_pb2.HealthCheckRequest(service="manager.v1beta1.DBManager"), timeout=5)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("algorithm", server.SERVED)
def test_every_algorithm_served_answers_with_its_own_library(
    api: tuple[ModuleType, ModuleType], channel: grpc.Channel, algorithm: str
) -> None:
    messages, glue = api
    spec = experiment(messages, f"every-{algorithm}", algorithm)
    spec.spec.parameter_specs.parameters[0].feasible_space.step = "0.01"  # grid needs a step
    spec.spec.max_trial_count = 2
    stub = glue.SuggestionStub(channel)
    stub.ValidateAlgorithmSettings(messages.ValidateAlgorithmSettingsRequest(experiment=spec))
    reply = stub.GetSuggestions(
        messages.GetSuggestionsRequest(experiment=spec, current_request_number=2), timeout=60
    )
    assert len(reply.parameter_assignments) == 2


def test_settings_are_judged_with_invalid_argument_naming_the_setting(
    api: tuple[ModuleType, ModuleType], channel: grpc.Channel
) -> None:
    messages, glue = api
    validate = glue.SuggestionStub(channel).ValidateAlgorithmSettings
    good = experiment(messages, "good", "tpe", gamma="0.3", random_state="1")
    assert validate(messages.ValidateAlgorithmSettingsRequest(experiment=good), timeout=5) == (
        messages.ValidateAlgorithmSettingsReply()
    )
    bad = experiment(messages, "bad", "random", gamma="0.3")
    with pytest.raises(grpc.RpcError) as refused:
        validate(messages.ValidateAlgorithmSettingsRequest(experiment=bad), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "unknown setting gamma for algorithm random"


def test_it_answers_exactly_the_number_asked_inside_the_log_range(
    api: tuple[ModuleType, ModuleType], channel: grpc.Channel
) -> None:
    messages, glue = api
    get = glue.SuggestionStub(channel).GetSuggestions
    spec = experiment(messages, "count", "random", random_state="9")
    reply = get(messages.GetSuggestionsRequest(experiment=spec, current_request_number=200))
    assert len(reply.parameter_assignments) == 200
    drawn = [{a.name: a.value for a in p.assignments} for p in reply.parameter_assignments]
    assert {d["optimizer"] for d in drawn} == {"sgd", "adam"}
    rates = [float(d["lr"]) for d in drawn]
    assert all(1e-4 <= r <= 0.1 for r in rates)
    # LOG_UNIFORM read as log-uniform: half fall under the range's geometric middle (0.00316);
    # uniform draws would put 3% there.
    below = sum(r < math.sqrt(1e-4 * 0.1) for r in rates) / len(rates)
    assert 0.4 < below < 0.6, below


def test_grid_over_grpc_refuses_a_budget_past_its_combinations_and_visits_each_once(
    api: tuple[ModuleType, ModuleType], channel: grpc.Channel
) -> None:
    messages, glue = api
    stub = glue.SuggestionStub(channel)
    spec = experiment(messages, "grid", "grid")
    spec.spec.parameter_specs.parameters[0].feasible_space.CopyFrom(
        messages.FeasibleSpace(min="0.01", max="0.04", step="0.01")
    )
    spec.spec.max_trial_count = 9
    with pytest.raises(grpc.RpcError) as refused:
        stub.ValidateAlgorithmSettings(messages.ValidateAlgorithmSettingsRequest(experiment=spec))
    assert refused.value.details() == (
        "maxTrialCount 9 is more than the 8 combinations grid can visit"
    )
    spec.spec.max_trial_count = 8
    reply = stub.GetSuggestions(
        messages.GetSuggestionsRequest(experiment=spec, current_request_number=8)
    )
    drawn = {tuple((a.name, a.value) for a in p.assignments) for p in reply.parameter_assignments}
    assert len(drawn) == 8


def test_only_succeeded_and_early_stopped_trials_with_an_objective_are_read(
    api: tuple[ModuleType, ModuleType],
) -> None:
    messages, _ = api
    condition = messages.TrialStatus
    trials = [
        trial(messages, "0.01", "0.97", condition.SUCCEEDED),
        trial(messages, "0.02", "0.91", condition.EARLYSTOPPED),
        trial(messages, "0.03", "0.10", condition.FAILED),
        trial(messages, "0.04", "", condition.RUNNING),
    ]
    seen = server.observed(experiment(messages, "seen", "tpe"), trials)
    assert [(o.assignments["lr"], o.value) for o in seen] == [("0.01", 0.97), ("0.02", 0.91)]


def test_early_stopping_judges_its_settings_and_gives_no_rule_before_a_trial_succeeded(
    api: tuple[ModuleType, ModuleType],
) -> None:
    messages, glue = api
    serving = server.serve_early_stopping(messages, glue, port=0)
    try:
        address = f"127.0.0.1:{serving.bound_port}"  # type: ignore[attr-defined]
        with grpc.insecure_channel(address) as opened:
            stub = glue.EarlyStoppingStub(opened)
            bad = messages.EarlyStoppingSpec(
                algorithm_name="medianstop",
                algorithm_settings=[messages.EarlyStoppingSetting(name="start_step", value="0")],
            )
            with pytest.raises(grpc.RpcError) as refused:
                stub.ValidateEarlyStoppingSettings(
                    messages.ValidateEarlyStoppingSettingsRequest(early_stopping=bad), timeout=5
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == "start_step must be one or greater, not 0"

            spec = experiment(messages, "stopping", "random")
            spec.spec.early_stopping.CopyFrom(
                messages.EarlyStoppingSpec(algorithm_name="medianstop")
            )
            running = trial(messages, "0.01", "0.5", messages.TrialStatus.RUNNING)
            reply = stub.GetEarlyStoppingRules(
                messages.GetEarlyStoppingRulesRequest(
                    experiment=spec, trials=[running], db_manager_address="127.0.0.1:1"
                ),
                timeout=5,
            )
            assert list(reply.early_stopping_rules) == []
    finally:
        serving.stop(grace=None)
