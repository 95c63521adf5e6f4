"""The operator's ten behaviours against a real kube-apiserver, under its own ServiceAccount.

Each test runs `mnist-tuning operator` as a subprocess with a token of the ServiceAccount
from deploy/operator (RBAC applied from that kustomize base), watching only the test's
namespace. Katib's controller is played by the stand-in, which writes Experiment status in
Katib's shapes; everything else (API server, garbage collector, kubectl) is real.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import katib_standin
import pytest
import yaml
from katib_standin import KATIB_INJECTION_LABEL, KatibStandIn
from kubernetes import client, config, watch
from launcher import REPO_ROOT, ControlPlane, free_port
from mnist_tuning.api.expand import TRIAL_SECURITY_CONTEXT, expand
from mnist_tuning.api.spec import GROUP, PLURAL, VERSION, parse_tuning
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.kube import EXPERIMENTS, KATIB_GROUP, KATIB_VERSION, RBAC_DENIAL
from urllib3.exceptions import HTTPError

OPERATOR_NS = "mnist-tuning-system"
OPERATOR_SA = "mnist-tuning-operator"
KOPF_MARKS = ("kopf.zalando.org", "operator.tuning.mnist.dev/")
T = TypeVar("T")
QUIET_S = 3.0  # longer than the status interval and the test's retry backoff


# ---------------------------------------------------------------------------------------------
# helpers


def wait_for(check: Callable[[], T | None], what: str, timeout: float = 45.0) -> T:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def tuning_manifest(name: str, max_trials: int = 6, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "objective": {"metric": "accuracy"},
        "algorithm": {"seed": 7},
        "budget": {"maxTrials": max_trials, "parallelTrials": 2, "maxFailedTrials": 1},
        "search": {"learningRate": {"min": 0.001, "max": 0.1, "scale": "log"}},
        "fixed": {"epochs": 1},
    }
    body.update(spec)
    return {
        "apiVersion": "tuning.mnist.dev/v1alpha1",
        "kind": "MnistTuning",
        "metadata": {"name": name},
        "spec": body,
    }


class Cluster:
    """kubectl as admin, scoped to one test namespace."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.plane = plane
        self.ns = namespace

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        return self.plane.run_kubectl(*args, input_text=input_text, check=check).stdout

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", self.ns, "-f", "-", input_text=json.dumps(manifest))

    def start(self, name: str, max_trials: int = 6, what: str = "the Experiment") -> str:
        """Apply a tuning and return the Experiment the operator names in its status."""
        self.apply(tuning_manifest(name, max_trials=max_trials))
        return str(wait_for(lambda: self.status(name).get("experiment"), what))

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.kubectl(
            "patch",
            "mnisttuning",
            name,
            "-n",
            self.ns,
            "--type=merge",
            "-p",
            json.dumps({"spec": spec}),
        )

    def tuning(self, name: str) -> dict[str, Any]:
        return dict(
            json.loads(self.kubectl("get", "mnisttuning", name, "-n", self.ns, "-o", "json"))
        )

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.tuning(name).get("status") or {})

    def experiments(self) -> list[dict[str, Any]]:
        out = self.kubectl("get", "experiments.kubeflow.org", "-n", self.ns, "-o", "json")
        return list(json.loads(out)["items"])

    def experiment_names(self) -> list[str]:
        return sorted(e["metadata"]["name"] for e in self.experiments())

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.kubectl(
            "get",
            "events",
            "-n",
            self.ns,
            f"--field-selector=involvedObject.kind=MnistTuning,involvedObject.name={name}",
            "-o",
            "json",
        )
        return list(json.loads(out)["items"])

    def event(self, name: str, reason: str, contains: str = "") -> dict[str, Any] | None:
        for event in self.events(name):
            if event.get("reason") == reason and contains in event.get("message", ""):
                return event
        return None

    def condition(self, name: str, type_: str) -> dict[str, Any] | None:
        for cond in self.status(name).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return None

    def experiment_of(self, name: str) -> dict[str, Any] | None:
        """The Experiment that status.experiment names, once it exists."""
        wanted = self.status(name).get("experiment")
        return next((e for e in self.experiments() if e["metadata"]["name"] == wanted), None)


class Operator:
    """`mnist-tuning operator -n NS` as a subprocess with the ServiceAccount's kubeconfig."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        port = free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "MNIST_TUNING_RETRY_BASE_SECONDS": "0.5",
            "MNIST_TUNING_RETRY_MAX_SECONDS": "2",
            "MNIST_TUNING_LIVENESS_PORT": str(port),
        }
        command = [
            str(Path(sys.executable).parent / "mnist-tuning"),
            "operator",
            "-n",
            self.namespace,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

        def alive() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"operator exited {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(alive, "the operator's liveness endpoint", timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the operator did not stop on signal {sig}:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane: ControlPlane) -> Path:
    """Install deploy/operator (RBAC, ServiceAccount, Deployment) and log in as its SA."""
    rendered = control_plane.run_kubectl("kustomize", str(REPO_ROOT / "deploy" / "operator")).stdout
    control_plane.apply(rendered)
    return control_plane.kubeconfig_for_service_account(OPERATOR_NS, OPERATOR_SA)


@pytest.fixture
def cluster(control_plane: ControlPlane, namespace: str) -> Cluster:
    return Cluster(control_plane, namespace)


@pytest.fixture
def operator(operator_kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[Operator]:
    """A running operator for the test's namespace; its log must hold no traceback."""
    running = Operator(operator_kubeconfig, namespace, tmp_path / "operator.log")
    running.start()
    yield running
    running.stop()
    print(running.tail(200))  # shown by pytest when the test fails
    log = running.log.read_text(errors="replace")
    assert "Traceback" not in log, running.tail(120)
    # Every flow runs under the trimmed ServiceAccount: any verb it lacked shows here.
    assert not RBAC_DENIAL.search(log), running.tail(120)


def assert_untouched_by_kopf(experiment: dict[str, Any]) -> None:
    meta = experiment["metadata"]
    marks = [k for k in meta.get("annotations") or {} if k.startswith(KOPF_MARKS)]
    assert marks == [], f"kopf wrote onto a Katib object: {marks}"
    assert not meta.get("finalizers"), meta.get("finalizers")


# ---------------------------------------------------------------------------------------------
# 1. create


def test_create_makes_owned_experiment_and_pending_then_running_status(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    cluster.apply(tuning_manifest("lr"))
    status = wait_for(
        lambda: cluster.status("lr").get("experiment") and cluster.status("lr"), "status.experiment"
    )
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 1
    tuning = cluster.tuning("lr")
    (experiment,) = cluster.experiments()
    assert experiment["metadata"]["name"] == status["experiment"]
    assert experiment["metadata"]["labels"]["tuning.mnist.dev/name"] == "lr"
    (owner,) = experiment["metadata"]["ownerReferences"]
    assert owner["uid"] == tuning["metadata"]["uid"]
    assert owner["controller"] is True
    assert owner["kind"] == "MnistTuning"
    assert cluster.event("lr", c.EXPERIMENT_CREATED, status["experiment"])
    assert {cond["type"]: cond["status"] for cond in status["conditions"]}.items() >= {
        c.KATIB_AVAILABLE: "True",
        c.NAMESPACE_ENABLED: "True",
        c.EXPERIMENT_ACCEPTED: "True",
    }.items()

    katib.create(cluster.ns, status["experiment"])
    katib.run(cluster.ns, status["experiment"], running=["lr-t1", "lr-t2"])
    running = wait_for(
        lambda: (s := cluster.status("lr"))["phase"] == "Running" and s, "phase Running"
    )
    assert running["trials"]["running"] == 2

    # kopf keeps its bookkeeping on our object only, and blocks no deletion anywhere.
    assert_untouched_by_kopf(cluster.experiments()[0])
    assert "kopf" not in cluster.status("lr")
    assert not cluster.tuning("lr")["metadata"].get("finalizers")


# ---------------------------------------------------------------------------------------------
# 2. progress


def test_progress_mirrors_counters_and_best_trial_with_an_event_per_improvement(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    name = cluster.start("prog", max_trials=6)
    katib.create(cluster.ns, name)
    katib.run(cluster.ns, name, succeeded=["prog-a"], running=["prog-b", "prog-c"])
    katib.report_best(
        cluster.ns,
        name,
        "prog-a",
        {"learningRate": "0.0123"},
        {"accuracy": ("0.9", "0.9512", "0.9512"), "loss": ("0.2", "0.5", "0.2")},
    )
    first = wait_for(lambda: (s := cluster.status("prog")).get("best") and s, "a best trial")
    assert first["best"] == {
        "trial": "prog-a",
        "objectiveValue": 0.9512,
        "accuracy": 0.9512,
        "loss": 0.2,
        "hyperparameters": {"learningRate": 0.0123},
    }
    assert first["progress"] == "1/6"
    assert first["trials"]["succeeded"] == 1
    assert first["trials"]["running"] == 2

    katib.run(cluster.ns, name, succeeded=["prog-a", "prog-b", "prog-c"], failed=["prog-d"])
    katib.report_best(
        cluster.ns,
        name,
        "prog-c",
        {"learningRate": "0.05"},
        {"accuracy": ("0.9", "0.9871", "0.9871"), "loss": ("0.1", "0.4", "0.1")},
    )
    better = wait_for(
        lambda: (s := cluster.status("prog"))["best"]["trial"] == "prog-c" and s, "the new best"
    )
    assert better["best"]["accuracy"] == 0.9871
    assert better["progress"] == "4/6"
    assert better["trials"]["failed"] == 1
    wait_for(
        lambda: cluster.event("prog", c.BEST_TRIAL_IMPROVED, "accuracy 0.9871"),
        "the second improvement event",
    )
    failing = cluster.condition("prog", c.TRIALS_HEALTHY)
    assert failing is not None
    assert failing["reason"] == c.TRIALS_FAILING
    assert f"katib.kubeflow.org/experiment={name}" in failing["message"]
    first_event = cluster.event("prog", c.BEST_TRIAL_IMPROVED, "accuracy 0.9512")
    assert first_event is not None
    assert "learningRate=0.0123" in first_event["message"]


# ---------------------------------------------------------------------------------------------
# 3. success and failure


@pytest.mark.parametrize(
    ("outcome", "phase", "reason", "event"),
    [
        ("goal", "Succeeded", "ExperimentGoalReached", c.TUNING_SUCCEEDED),
        ("max-failed", "Failed", "ExperimentFailed", c.TUNING_FAILED),
    ],
)
def test_katib_outcome_sets_phase_completion_time_and_katib_reason(
    cluster: Cluster,
    katib: KatibStandIn,
    operator: Operator,
    outcome: str,
    phase: str,
    reason: str,
    event: str,
) -> None:
    name = cluster.start("end")
    katib.create(cluster.ns, name)
    katib.run(cluster.ns, name, running=["end-a"])
    final = katib.finish(cluster.ns, name, outcome, succeeded=["end-a"], failed=["end-b"])
    status = wait_for(lambda: (s := cluster.status("end"))["phase"] == phase and s, phase)
    assert status["completionTime"] == final["completionTime"]
    terminal = cluster.condition("end", phase)
    assert terminal is not None
    assert terminal["status"] == "True"
    assert terminal["reason"] == reason
    assert terminal["message"] == final["conditions"][-1]["message"]
    wait_for(lambda: cluster.event("end", event, reason), f"the {event} event")


# ---------------------------------------------------------------------------------------------
# 4. restart


def test_restart_at_any_point_duplicates_nothing_and_loses_nothing(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    name = cluster.start("rs")
    katib.create(cluster.ns, name)
    katib.run(cluster.ns, name, succeeded=["rs-a"], running=["rs-b"])
    katib.report_best(
        cluster.ns, name, "rs-a", {"learningRate": "0.01"}, {"accuracy": ("0.8", "0.93", "0.93")}
    )
    wait_for(lambda: cluster.status("rs").get("best"), "the best trial")
    before = cluster.status("rs")

    # Killed without warning; the cluster moves on while it is down.
    operator.stop(signal.SIGKILL)
    katib.run(cluster.ns, name, succeeded=["rs-a", "rs-b"], running=["rs-c"])
    katib.report_best(
        cluster.ns, name, "rs-b", {"learningRate": "0.02"}, {"accuracy": ("0.8", "0.97", "0.97")}
    )
    for extra in ("rs-x", "rs-y", "rs-z"):
        cluster.apply(tuning_manifest(extra))
    # Killed again right after it starts on the new tunings (mid-reconcile).
    operator.start()
    time.sleep(0.5)
    operator.stop(signal.SIGKILL)
    operator.start()

    after = wait_for(
        lambda: (s := cluster.status("rs"))["best"]["trial"] == "rs-b" and s, "the caught-up best"
    )
    assert after["trials"]["succeeded"] == 2
    assert after["progress"] == "2/6"
    assert after["experiment"] == before["experiment"]
    assert after["observedGeneration"] == before["observedGeneration"]
    for extra in ("rs-x", "rs-y", "rs-z"):
        wait_for(lambda extra=extra: cluster.status(extra).get("experiment"), f"{extra} status")
    owners = [e["metadata"]["labels"]["tuning.mnist.dev/name"] for e in cluster.experiments()]
    assert sorted(owners) == ["rs", "rs-x", "rs-y", "rs-z"]
    created = [e for e in cluster.events("rs") if e["reason"] == c.EXPERIMENT_CREATED]
    assert sum(e.get("count", 1) for e in created) == 1


# ---------------------------------------------------------------------------------------------
# 5. deleted behind our back


def test_experiment_deleted_behind_our_back_is_recreated_with_an_event(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    name = cluster.start("gone")
    katib.create(cluster.ns, name)
    old_uid = cluster.experiments()[0]["metadata"]["uid"]
    cluster.kubectl("delete", "experiments.kubeflow.org", name, "-n", cluster.ns)

    def recreated() -> bool:
        return any(e["metadata"]["uid"] != old_uid for e in cluster.experiments())

    wait_for(recreated, "the recreated Experiment")
    assert cluster.experiment_names() == [name]
    wait_for(lambda: cluster.event("gone", c.EXPERIMENT_RECREATED, name), "the recreation event")
    assert cluster.status("gone")["experiment"] == name


# ---------------------------------------------------------------------------------------------
# 6. edits


def test_budget_edit_patches_the_running_experiment_in_place(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    name = cluster.start("bud", max_trials=6)
    uid = cluster.experiments()[0]["metadata"]["uid"]
    cluster.patch_spec("bud", {"budget": {"maxTrials": 10, "parallelTrials": 4}})

    def patched() -> dict[str, Any] | None:
        (exp,) = cluster.experiments()
        return exp if exp["spec"]["maxTrialCount"] == 10 else None

    experiment = patched() or wait_for(patched, "maxTrialCount 10 on the Experiment")
    assert experiment["metadata"]["uid"] == uid
    assert experiment["metadata"]["name"] == name
    assert experiment["spec"]["parallelTrialCount"] == 4
    status = wait_for(
        lambda: (s := cluster.status("bud"))["observedGeneration"] == 2 and s,
        "observedGeneration 2",
    )
    assert status["experiment"] == name
    assert status["progress"] == "0/10"
    wait_for(lambda: cluster.event("bud", c.BUDGET_UPDATED, "maxTrialCount 6→10"), "the event")


def test_search_edit_replaces_the_experiment_and_status_follows_the_new_one(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    old = cluster.start("srch", what="the first Experiment")
    katib.create(cluster.ns, old)
    katib.run(cluster.ns, old, succeeded=["old-a"])
    katib.report_best(
        cluster.ns, old, "old-a", {"learningRate": "0.01"}, {"accuracy": ("0.8", "0.9", "0.9")}
    )
    wait_for(lambda: cluster.status("srch").get("best"), "the old best")

    cluster.patch_spec("srch", {"search": {"momentum": {"min": 0.5, "max": 0.9}}})
    new = wait_for(
        lambda: (n := cluster.status("srch")["experiment"]) != old and n, "the new Experiment"
    )
    wait_for(lambda: cluster.experiment_names() == [new], "the old Experiment deleted")
    status = cluster.status("srch")
    assert status["observedGeneration"] == 2
    assert status["phase"] == "Pending"
    assert "best" not in status, "the old Experiment's best trial must not carry over"
    wait_for(lambda: cluster.event("srch", c.EXPERIMENT_REPLACED, new), "the replacement event")

    katib.create(cluster.ns, new)
    katib.run(cluster.ns, new, running=["new-a"])
    wait_for(lambda: cluster.status("srch")["phase"] == "Running", "status from the new one")


# ---------------------------------------------------------------------------------------------
# write economy, counted from a watch


class TuningWrites:
    """Every write to one tuning from now on, as a watch on its namespace sees them."""

    def __init__(self, plane: ControlPlane, namespace: str, name: str) -> None:
        self.api = client.CustomObjectsApi(config.new_client_from_config(str(plane.kubeconfig)))
        self.name = name
        self.changes: list[dict[str, Any]] = []
        since = self.api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        self._watch = watch.Watch()
        stream = self._watch.stream(
            self.api.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            resource_version=since["metadata"]["resourceVersion"],
        )
        threading.Thread(target=self._follow, args=(stream,), daemon=True).start()

    def stop(self) -> None:
        self._watch.stop()

    def _follow(self, stream: Iterator[dict[str, Any]]) -> None:
        with contextlib.suppress(HTTPError, OSError):  # the control plane stops under it
            for change in stream:
                if change["object"]["metadata"]["name"] == self.name:
                    self.changes.append(change)

    def writes(self) -> int:
        return sum(change["type"] == "MODIFIED" for change in self.changes)


@pytest.fixture
def watch_writes(
    control_plane: ControlPlane, namespace: str
) -> Iterator[Callable[[str], TuningWrites]]:
    """Start counting a tuning's writes; every watch stops with the test (no reconnects)."""
    started: list[TuningWrites] = []

    def start(name: str) -> TuningWrites:
        started.append(TuningWrites(control_plane, namespace, name))
        return started[-1]

    yield start
    for writes in started:
        writes.stop()


def test_a_new_tuning_costs_one_status_write_and_one_event(
    cluster: Cluster, watch_writes: Callable[[str], TuningWrites], operator: Operator
) -> None:
    writes = watch_writes("one")
    name = cluster.start("one")
    time.sleep(QUIET_S)  # whatever would still follow the first write has had its time
    assert writes.writes() == 1, [c["object"].get("status") for c in writes.changes]
    (written,) = [c["object"] for c in writes.changes if c["type"] == "MODIFIED"]
    assert written["status"]["experiment"] == name
    assert not [k for k in written["metadata"].get("annotations") or {} if k.startswith(KOPF_MARKS)]
    events = cluster.events("one")
    assert [(e["reason"], e.get("count", 1)) for e in events] == [(c.EXPERIMENT_CREATED, 1)]


def test_a_burst_of_experiment_updates_costs_at_most_two_status_writes(
    cluster: Cluster, watch_writes: Callable[[str], TuningWrites], operator: Operator
) -> None:
    name = cluster.start("burst")
    writes = watch_writes("burst")
    at = katib_standin.now()
    for running in range(1, 11):
        trials = [f"burst-t{i}" for i in range(running)]
        status = katib_standin.with_trials(
            katib_standin.running(katib_standin.created(at), at), running=trials
        )
        writes.api.patch_namespaced_custom_object_status(
            KATIB_GROUP, KATIB_VERSION, cluster.ns, EXPERIMENTS, name, {"status": status}
        )
    wait_for(lambda: cluster.status("burst")["trials"]["running"] == 10, "the last update mirrored")
    time.sleep(QUIET_S)
    trials_written = [c["object"]["status"]["trials"] for c in writes.changes]
    assert writes.writes() <= 2, trials_written
    assert writes.writes() >= 1, "the burst changed the status, so it was written"
    assert cluster.status("burst")["phase"] == "Running"


# ---------------------------------------------------------------------------------------------
# 8. namespace not enabled


def test_namespace_without_katib_label_gets_the_exact_label_command_and_no_experiment(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.kubectl("label", "namespace", cluster.ns, f"{KATIB_INJECTION_LABEL}-")
    cluster.apply(tuning_manifest("nolabel"))
    cond = wait_for(lambda: cluster.condition("nolabel", c.NAMESPACE_ENABLED), "NamespaceEnabled")
    assert cond["status"] == "False"
    assert cond["reason"] == c.NAMESPACE_NOT_ENABLED
    command = f"kubectl label namespace {cluster.ns} {KATIB_INJECTION_LABEL}=enabled"
    assert command in cond["message"]
    time.sleep(3)  # longer than the test's retry backoff: still nothing half-made
    assert cluster.experiments() == []
    assert cluster.status("nolabel")["phase"] == "Pending"

    cluster.kubectl("label", "namespace", cluster.ns, f"{KATIB_INJECTION_LABEL}=enabled")
    wait_for(lambda: cluster.status("nolabel").get("experiment"), "the Experiment after labelling")
    assert len(cluster.experiments()) == 1


# ---------------------------------------------------------------------------------------------
# 9. refused by admission


@pytest.fixture
def admission_refuses_big_experiments(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """A real admission refusal: a ValidatingAdmissionPolicy on Experiments here, in force."""
    message = f"this cluster runs at most 50 trials per Experiment in {namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": namespace},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["kubeflow.org"],
                        "apiVersions": ["v1beta1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["experiments"],
                    }
                ]
            },
            "validations": [{"expression": "object.spec.maxTrialCount <= 50", "message": message}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": namespace},
        "spec": {
            "policyName": namespace,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    control_plane.apply(yaml.safe_dump_all([policy, binding]))
    try:
        # The policy takes effect asynchronously; prove it refuses before relying on it.
        probe = expand(
            parse_tuning(
                {
                    **tuning_manifest("probe", max_trials=60),
                    "metadata": {"name": "probe", "namespace": namespace},
                }
            )
        )

        def refuses() -> bool:
            result = control_plane.run_kubectl(
                "create", "--dry-run=server", "-f", "-", input_text=json.dumps(probe), check=False
            )
            return message in result.stderr

        wait_for(refuses, "the admission policy to take effect", timeout=120)
        yield message
    finally:
        for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
            control_plane.run_kubectl("delete", kind, namespace, "--ignore-not-found")


def test_refused_experiment_shows_the_server_message_and_stays_failed_until_the_spec_changes(
    cluster: Cluster, admission_refuses_big_experiments: str, operator: Operator
) -> None:
    message = admission_refuses_big_experiments
    cluster.apply(tuning_manifest("big", max_trials=60))
    cond = wait_for(lambda: cluster.condition("big", c.EXPERIMENT_ACCEPTED), "the refusal")
    assert cond["status"] == "False"
    assert cond["reason"] == c.EXPERIMENT_REFUSED
    assert message in cond["message"]
    assert "ValidatingAdmissionPolicy" in cond["message"]  # the server's own words, verbatim
    assert cluster.status("big")["phase"] == "Failed"
    wait_for(lambda: cluster.event("big", c.EXPERIMENT_REFUSED, message), "the Warning event")
    time.sleep(3)  # longer than the retry backoff: a refusal is not retried
    assert cluster.status("big")["phase"] == "Failed"
    assert cluster.experiments() == []

    cluster.patch_spec("big", {"budget": {"maxTrials": 40}})
    status = wait_for(
        lambda: (s := cluster.status("big")).get("experiment") and s,
        "the Experiment for the fixed spec",
    )
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 2
    accepted = cluster.condition("big", c.EXPERIMENT_ACCEPTED)
    assert accepted is not None
    assert accepted["status"] == "True"


def test_refused_budget_edit_leaves_the_running_experiment_as_it_was(
    cluster: Cluster, admission_refuses_big_experiments: str, operator: Operator
) -> None:
    message = admission_refuses_big_experiments
    name = cluster.start("grow", max_trials=40)
    cluster.patch_spec("grow", {"budget": {"maxTrials": 60}})
    cond = wait_for(
        lambda: (x := cluster.condition("grow", c.EXPERIMENT_ACCEPTED))["status"] == "False" and x,
        "the refused budget edit",
    )
    assert cond["reason"] == c.EXPERIMENT_REFUSED
    assert message in cond["message"]
    (experiment,) = cluster.experiments()
    assert experiment["metadata"]["name"] == name
    assert experiment["spec"]["maxTrialCount"] == 40
    status = cluster.status("grow")
    assert status["phase"] == "Pending"
    assert status["observedGeneration"] == 1, "generation 2 is not what runs"


# ---------------------------------------------------------------------------------------------
# 10. deletion


def test_deleting_a_tuning_deletes_its_experiment_through_the_garbage_collector(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.apply(tuning_manifest("del"))
    wait_for(lambda: cluster.experiments(), "the Experiment")
    cluster.kubectl("delete", "mnisttuning", "del", "-n", cluster.ns, "--timeout=30s")
    wait_for(lambda: cluster.experiments() == [], "the garbage collector", timeout=90)


def test_deletion_never_hangs_while_the_operator_is_down(
    cluster: Cluster, operator: Operator
) -> None:
    cluster.apply(tuning_manifest("down"))
    wait_for(lambda: cluster.experiments(), "the Experiment")
    operator.stop()
    assert not cluster.tuning("down")["metadata"].get("finalizers")
    cluster.kubectl("delete", "mnisttuning", "down", "-n", cluster.ns, "--timeout=20s")
    wait_for(lambda: cluster.experiments() == [], "the garbage collector", timeout=90)


# ---------------------------------------------------------------------------------------------
# trial pods that cannot start


def set_training_container_state(cluster: Cluster, pod: str, state: dict[str, Any]) -> None:
    """Write the pod's status as the kubelet would (no kubelet runs in this tier)."""
    running = "running" in state
    status = {
        "phase": "Running" if running else "Pending",
        "containerStatuses": [
            {
                "name": "training-container",
                "image": STUCK_IMAGE,
                "imageID": "",
                "ready": running,
                "restartCount": 0,
                "state": state,
            }
        ],
    }
    cluster.kubectl("patch", "pod", pod, "-n", cluster.ns, "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": status}))  # fmt: skip


STUCK_IMAGE = "127.0.0.1:5999/mnist-trainer:missing"


def test_a_trial_pod_that_cannot_pull_its_image_is_named_with_the_fix_until_it_runs(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    name = cluster.start("pull", max_trials=2)
    katib.create(cluster.ns, name)
    trial = f"{name}-t1"
    katib.run(cluster.ns, name, running=[trial])
    pod = f"{trial}-x7k2p"
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod,
                "labels": {"tuning.mnist.dev/name": "pull", "katib.kubeflow.org/trial": trial},
            },
            "spec": {
                "nodeName": "no-kubelet-here",  # nothing schedules or runs it
                "containers": [{"name": "training-container", "image": STUCK_IMAGE}],
            },
        }
    )
    waiting = {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{STUCK_IMAGE}"'}
    set_training_container_state(cluster, pod, {"waiting": waiting})
    cond = wait_for(lambda: cluster.condition("pull", c.PODS_HEALTHY), "PodsHealthy")
    assert (cond["status"], cond["reason"]) == ("False", c.IMAGE_PULL_FAILED)
    for words in (trial, pod, STUCK_IMAGE, "spec.trial.image", "spec.trial.imagePullSecrets"):
        assert words in cond["message"]
    assert cluster.event("pull", c.IMAGE_PULL_FAILED, STUCK_IMAGE)
    assert cluster.status("pull")["phase"] == "Running"

    set_training_container_state(cluster, pod, {"running": {"startedAt": "2026-12-07T00:00:00Z"}})
    wait_for(
        lambda: (
            cluster.condition("pull", c.PODS_HEALTHY) is None
            and cluster.event("pull", c.PODS_RECOVERED)
        ),
        "the condition gone and the Normal Event",
    )


def test_a_trial_job_whose_pod_the_namespace_refuses_is_named_with_katibs_option(
    cluster: Cluster, katib: KatibStandIn, operator: Operator
) -> None:
    """The real Job controller and the API server's PodSecurity admission: the refusal is
    only in the Job's FailedCreate Event, and the condition goes with the Job."""
    cluster.kubectl(
        "label", "namespace", cluster.ns, "pod-security.kubernetes.io/enforce=restricted"
    )
    name = cluster.start("refused", max_trials=2)
    katib.create(cluster.ns, name)
    trial = f"{name}-t1"
    katib.run(cluster.ns, name, running=[trial])
    labels = {"tuning.mnist.dev/name": "refused"}
    containers = [  # the trainer restricted, Katib's collector as Katib injects it by default
        {
            "name": "training-container",
            "image": STUCK_IMAGE,
            "securityContext": TRIAL_SECURITY_CONTEXT,
        },
        {"name": "metrics-logger-and-collector", "image": STUCK_IMAGE},
    ]
    cluster.apply(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": trial, "labels": labels},
            "spec": {
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"restartPolicy": "Never", "containers": containers},
                }
            },
        }
    )
    cond = wait_for(lambda: cluster.condition("refused", c.PODS_HEALTHY), "PodsHealthy")
    assert (cond["status"], cond["reason"]) == ("False", c.POD_REFUSED)
    for words in (f"trial {trial}", "violates PodSecurity", "injectSecurityContext: true"):
        assert words in cond["message"], cond["message"]
    assert cluster.event("refused", c.POD_REFUSED, trial)

    cluster.kubectl("delete", "job", trial, "-n", cluster.ns, "--cascade=foreground")
    wait_for(
        lambda: (
            cluster.condition("refused", c.PODS_HEALTHY) is None
            and cluster.event("refused", c.PODS_RECOVERED)
        ),
        "the condition gone with the Job, and the Normal Event",
    )


# ---------------------------------------------------------------------------------------------
# RBAC: what the ServiceAccount may and may not do


TUNINGS = "mnisttunings.tuning.mnist.dev"


@pytest.mark.parametrize(
    ("verb", "resource", "allowed"),
    [
        ("create", "experiments.kubeflow.org", True),
        ("delete", "experiments.kubeflow.org", True),
        ("patch", f"{TUNINGS} --subresource=status", True),
        ("watch", TUNINGS, True),
        ("create", "events", True),
        ("watch", "events", True),  # the Job controller's FailedCreate: a refused trial pod
        # Trimmed: kopf keeps no bookkeeping on tunings, and nothing reads or updates them
        # beyond the watch, the status patch and one Event per post.
        ("patch", TUNINGS, False),
        ("get", TUNINGS, False),
        ("get", f"{TUNINGS} --subresource=status", False),
        ("patch", "events", False),
        ("get", "secrets", False),
        ("list", "secrets", False),
        # Trial pods are read (why one cannot start), never touched.
        ("list", "pods", True),
        ("watch", "pods", True),
        ("get", "pods", False),
        ("patch", "pods", False),
        ("create", "pods", False),
        ("watch", "jobs.batch", True),
        ("get", "jobs.batch", False),
        ("create", "jobs.batch", False),
        ("get", "trials.kubeflow.org", False),
        ("delete", "mnisttunings.tuning.mnist.dev", False),
        ("create", "mnisttunings.tuning.mnist.dev", False),
        ("update", "mnisttunings.tuning.mnist.dev", False),
        ("patch", "namespaces", False),
        ("create", "customresourcedefinitions.apiextensions.k8s.io", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
    ],
)
def test_service_account_can_do_only_what_the_operator_needs(
    control_plane: ControlPlane, operator_kubeconfig: Path, verb: str, resource: str, allowed: bool
) -> None:
    result = control_plane.run_kubectl(
        "auth",
        "can-i",
        verb,
        *resource.split(),
        "-n",
        "default",
        kubeconfig=operator_kubeconfig,
        check=False,
    )
    assert result.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, result.stderr)


# ---------------------------------------------------------------------------------------------
# 11. invalid spec (near the end: it loosens the CRD for a while)


INVALID_SEARCH = {"learningRate": {"min": 0.1, "max": 0.001}}


@pytest.fixture
def crd_checks_no_spec(control_plane: ControlPlane, namespace: str) -> Iterator[None]:
    """Our CRD without its spec schema for one test: specs only the operator refuses.

    Stands for objects stored under an older, looser CRD. Put back whatever happens.
    """
    crd_file = REPO_ROOT / "crds" / "mnisttuning.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    probe = {**tuning_manifest("probe"), "metadata": {"name": "probe", "namespace": namespace}}
    probe["spec"]["search"] = INVALID_SEARCH

    def accepted() -> bool:
        result = control_plane.run_kubectl(
            "create", "--dry-run=server", "-f", "-", input_text=json.dumps(probe), check=False
        )
        return result.returncode == 0

    loosened = json.dumps(crd)
    control_plane.run_kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input_text=loosened
    )
    try:
        wait_for(accepted, "the loosened CRD to take effect", timeout=60)
        yield
    finally:
        control_plane.run_kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(crd_file)
        )
        wait_for(lambda: not accepted(), "the CRD's own schema back in force", timeout=60)


def test_an_invalid_spec_deletes_the_experiment_it_leaves_and_the_fixed_spec_gets_one(
    cluster: Cluster, crd_checks_no_spec: None, operator: Operator
) -> None:
    old = cluster.start("inv", what="the first Experiment")
    cluster.patch_spec("inv", {"search": INVALID_SEARCH})
    cond = wait_for(
        lambda: (x := cluster.condition("inv", c.SPEC_VALID)) and x["status"] == "False" and x,
        "SpecValid False",
    )
    assert cond["reason"] == c.SPEC_INVALID
    assert "learningRate" in cond["message"]
    wait_for(lambda: cluster.experiments() == [], "the stale Experiment deleted")
    status = cluster.status("inv")
    assert status["phase"] == "Failed"
    assert "experiment" not in status
    wait_for(lambda: cluster.event("inv", c.SPEC_INVALID), "the SpecInvalid event")

    fixed = {"learningRate": {"min": 0.001, "max": 0.05, "scale": "log"}}
    cluster.patch_spec("inv", {"search": fixed})
    new = wait_for(lambda: cluster.status("inv").get("experiment"), "the fixed spec's Experiment")
    assert new != old
    assert cluster.experiment_names() == [new]
    assert cluster.status("inv")["observedGeneration"] == 3


# ---------------------------------------------------------------------------------------------
# 7. Katib missing (last: it takes Katib's CRD away, and the garbage collector and admission
#    policies need a while to learn the re-created one)


@pytest.fixture
def katib_crd_removed(control_plane: ControlPlane) -> Iterator[Path]:
    """Take Katib's Experiment CRD away for one test; put it back whatever happens."""
    crd = REPO_ROOT / ".cluster" / "crds" / "katib" / "experiment.yaml"
    name = yaml.safe_load(crd.read_text())["metadata"]["name"]
    control_plane.run_kubectl("delete", "crd", name, "--wait=true", "--timeout=60s")
    try:
        yield crd
    finally:
        control_plane.run_kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
        control_plane.run_kubectl(
            "wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s"
        )


def test_katib_missing_is_a_condition_with_the_install_command_and_heals_itself(
    cluster: Cluster, katib_crd_removed: Path, operator: Operator
) -> None:
    cluster.apply(tuning_manifest("nokatib"))
    cond = wait_for(lambda: cluster.condition("nokatib", c.KATIB_AVAILABLE), "KatibAvailable")
    assert cond["status"] == "False"
    assert cond["reason"] == c.KATIB_NOT_INSTALLED
    assert c.KATIB_INSTALL_COMMAND in cond["message"]
    assert cluster.status("nokatib")["phase"] == "Pending"

    cluster.kubectl("apply", "--server-side", "-f", str(katib_crd_removed))
    status = wait_for(
        lambda: (s := cluster.status("nokatib")).get("experiment") and s,
        "the Experiment once Katib is there",
        timeout=60,
    )
    assert cluster.experiment_names() == [status["experiment"]]
    healed = cluster.condition("nokatib", c.KATIB_AVAILABLE)
    assert healed is not None
    assert healed["status"] == "True"
