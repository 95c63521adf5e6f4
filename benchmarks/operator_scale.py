"""How the operator keeps up with many tunings, against the API server's own rate in the same run.

On a fresh local control plane (tests/harness/launcher.py):
1. raw: one client creates N Experiments directly (the API server's create rate);
2. bare: the same client makes, one tuning at a time, the minimal writes of the operator's
   path (create the tuning; create its Experiment, patch its status, post one Event);
3. the same client creates N MnistTunings while the operator runs (under its ServiceAccount),
   timed until a watch has seen every tuning get its Experiment and a Pending status;
4. the Katib stand-in writes a finished status into all N Experiments, timed until the watch
   has seen every tuning Succeeded;
writes per tuning are counted from watches on tunings and Events (never from our own logs),
and the operator's RSS is read at the end.

    .venv/bin/python benchmarks/operator_scale.py [--count 1000]

Targets: throughput >= 0.9x the bare client's; RSS <= 150 MiB; one status write and one
Event per new tuning.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

import katib_standin  # noqa: E402
import launcher  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402
from mnist_tuning.api.expand import expand  # noqa: E402
from mnist_tuning.api.spec import (  # noqa: E402
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    parse_tuning,
)
from mnist_tuning.controller.kube import EXPERIMENTS, KATIB_GROUP, KATIB_VERSION  # noqa: E402
from urllib3.exceptions import HTTPError  # noqa: E402

KATIB = (KATIB_GROUP, KATIB_VERSION, EXPERIMENTS)
TARGET_RATIO, TARGET_RSS_MIB = 0.9, 150


def tuning(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "budget": {"maxTrials": 4, "parallelTrials": 2, "maxFailedTrials": 1},
            "search": {"learningRate": {"min": 0.001, "max": 0.1, "scale": "log"}},
        },
    }


def finished_status(trial: str) -> dict[str, Any]:
    at = katib_standin.now()
    status = katib_standin.running(katib_standin.created(at), at)
    status = katib_standin.with_trials(status, succeeded=[trial])
    status = katib_standin.with_optimal_trial(
        status, trial, {"learningRate": "0.01"}, {"accuracy": ("0.9", "0.98", "0.98")}
    )
    # One trial of four: Katib ends such a run when its search space is exhausted (at "max
    # trials reached" the operator would take the budget for raised and wait for a restart).
    return katib_standin.completed(status, "suggestion-end", at)


def wait(check: Callable[[], bool], what: str, timeout: float = 900) -> float:
    """Poll until `check` holds; return the moment it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field} in /proc: cannot measure RSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Watched:
    """What watches on one namespace saw: writes to tunings, Events, tunings' phases."""

    def __init__(self, api: client.CustomObjectsApi, core: client.CoreV1Api, ns: str) -> None:
        self.lock = threading.Lock()
        self.tuning_writes: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.phases: dict[str, str] = {}
        self.expanded: set[str] = set()
        self.experiments: dict[str, str] = {}
        listed = api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        events = core.list_namespaced_event(ns)
        self._threads = [
            threading.Thread(
                target=self._follow,
                args=(
                    api.list_namespaced_custom_object,
                    (GROUP, VERSION, ns, PLURAL),
                    listed["metadata"]["resourceVersion"],
                ),
                daemon=True,
            ),
            threading.Thread(
                target=self._follow,
                args=(core.list_namespaced_event, (ns,), events.metadata.resource_version),
                daemon=True,
            ),
        ]
        for thread in self._threads:
            thread.start()

    def _follow(self, lister: Any, args: tuple[Any, ...], version: str) -> None:
        with contextlib.suppress(HTTPError, OSError):  # the control plane stops under it
            self._stream(lister, args, version)

    def _stream(self, lister: Any, args: tuple[Any, ...], version: str) -> None:
        for change in watch.Watch().stream(lister, *args, resource_version=version):
            obj = change["object"]
            with self.lock:
                if isinstance(obj, dict):
                    self._tuning(change["type"], obj)
                elif obj.involved_object.kind == KIND and change["type"] == "ADDED":
                    self.events[obj.involved_object.name] += 1

    def _tuning(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        status = obj.get("status") or {}
        if kind == "MODIFIED":
            self.tuning_writes[name] += 1
        self.phases[name] = str(status.get("phase"))
        if status.get("experiment") and status.get("phase") in ("Pending", "Running"):
            self.expanded.add(name)
            self.experiments[name] = status["experiment"]

    def count(self, what: str, phase: str | None = None) -> int:
        with self.lock:
            if what == "expanded":
                return len(self.expanded)
            return sum(p == phase for p in self.phases.values())

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return sum(self.tuning_writes.values()), sum(self.events.values())


def run(plane: launcher.ControlPlane, count: int, workdir: Path) -> int:
    config.load_kube_config(str(plane.kubeconfig))
    api = client.CustomObjectsApi()
    core = client.CoreV1Api()
    direct_ns, bare_ns, operator_ns = "bench-direct", "bench-bare", "bench-operator"
    for ns in (direct_ns, bare_ns, operator_ns):
        core.create_namespace(
            {"metadata": {"name": ns, "labels": {katib_standin.KATIB_INJECTION_LABEL: "enabled"}}}
        )
    plane.apply(plane.run_kubectl("kustomize", str(REPO / "deploy" / "operator")).stdout)
    sa_kubeconfig = plane.kubeconfig_for_service_account(
        "mnist-tuning-system", "mnist-tuning-operator"
    )
    names = [f"bench-{i:04d}" for i in range(count)]

    # 1. raw: the same client creates Experiments directly.
    experiments = [
        expand(parse_tuning({**tuning(n), "metadata": {"name": n, "namespace": direct_ns}}))
        for n in names
    ]
    start = time.monotonic()
    for experiment in experiments:
        api.create_namespaced_custom_object(*KATIB[:2], direct_ns, KATIB[2], experiment)
    direct_s = time.monotonic() - start

    # 2. bare: the minimal writes of the operator's path, one tuning at a time.
    start = time.monotonic()
    for name in names:
        made = api.create_namespaced_custom_object(GROUP, VERSION, bare_ns, PLURAL, tuning(name))
        owned = expand(parse_tuning({**made, "status": {}}))
        api.create_namespaced_custom_object(*KATIB[:2], bare_ns, KATIB[2], owned)
        status = {"status": {"phase": "Pending", "experiment": owned["metadata"]["name"]}}
        api.patch_namespaced_custom_object_status(GROUP, VERSION, bare_ns, PLURAL, name, status)
        core.create_namespaced_event(
            bare_ns,
            {
                "metadata": {"generateName": f"{name}."},
                "involvedObject": {"kind": KIND, "name": name, "namespace": bare_ns},
                "reason": "ExperimentCreated",
                "message": "created",
                "type": "Normal",
            },
        )
    bare_s = time.monotonic() - start

    # 3. the same client creates tunings; the operator expands them.
    watched = Watched(api, core, operator_ns)
    port = launcher.free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(sa_kubeconfig),
        "MNIST_TUNING_LIVENESS_PORT": str(port),
        "MNIST_TUNING_LOG_LEVEL": "WARNING",
    }
    log = (workdir / "operator.log").open("wb")
    command = [str(Path(sys.executable).parent / "mnist-tuning"), "operator", "-n", operator_ns]
    operator = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return True
            except OSError:
                return operator.poll() is not None and _fail(workdir)

        wait(healthy, "the operator to start", timeout=60)
        start = time.monotonic()
        for name in names:
            api.create_namespaced_custom_object(GROUP, VERSION, operator_ns, PLURAL, tuning(name))
        created_s = time.monotonic() - start
        operator_s = wait(lambda: watched.count("expanded") == count, "every tuning expanded")
        operator_s -= start
        time.sleep(2)  # a quiet spell: writes that would still follow are counted too
        create_writes, create_events = watched.snapshot()
        listed = api.list_namespaced_custom_object(*KATIB[:2], operator_ns, KATIB[2])["items"]
        if len(listed) != count:
            raise SystemExit(f"{len(listed)} Experiments for {count} tunings")

        # 4. the stand-in finishes every Experiment; the operator mirrors Succeeded.
        start = time.monotonic()
        for name, experiment_name in sorted(watched.experiments.items()):
            api.patch_namespaced_custom_object_status(
                *KATIB[:2],
                operator_ns,
                KATIB[2],
                experiment_name,
                {"status": finished_status(f"{name}-t1")},
            )
        standin_s = time.monotonic() - start
        succeeded_s = (
            wait(lambda: watched.count("phase", "Succeeded") == count, "every tuning Succeeded")
            - start
        )
        time.sleep(2)
        all_writes, all_events = watched.snapshot()
        rss, peak = rss_mib(operator.pid, "VmRSS"), rss_mib(operator.pid, "VmHWM")
        cpu = cpu_seconds(operator.pid)
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        log.close()

    ratio = bare_s / operator_s
    print(f"tunings: {count}; operator watching one namespace; {os.cpu_count()} CPUs shared")
    print(f"raw Experiment creates:              {direct_s:7.2f} s  ({count / direct_s:6.1f}/s)")
    print(f"bare client, the path's min writes:  {bare_s:7.2f} s  ({count / bare_s:6.1f}/s)")
    print(f"MnistTuning creates (client only):   {created_s:7.2f} s")
    print(
        f"tunings -> Experiment + status:      {operator_s:7.2f} s  ({count / operator_s:6.1f}/s)"
    )
    print(f"throughput against the bare client:  {ratio:7.2f}x  (target >= {TARGET_RATIO})")
    print(f"raw create ratio:                    {direct_s / operator_s:7.2f}x")
    print(f"writes to a new tuning (watched):    {create_writes / count:7.2f}  (target <= 1)")
    print(f"Events per new tuning (watched):     {create_events / count:7.2f}  (target <= 1)")
    print(f"stand-in status writes:              {standin_s:7.2f} s  ({count / standin_s:6.1f}/s)")
    print(
        f"all tunings Succeeded after:         {succeeded_s:7.2f} s  ({count / succeeded_s:6.1f}/s)"
    )
    print(f"writes per finish (watched):         {(all_writes - create_writes) / count:7.2f}")
    print(f"Events per finish (watched):         {(all_events - create_events) / count:7.2f}")
    print(f"operator CPU time (user+system):     {cpu:7.2f} s")
    print(
        f"operator RSS now / peak:             {rss:5.1f} / {peak:5.1f} MiB "
        f"(target <= {TARGET_RSS_MIB})"
    )
    ok = ratio >= TARGET_RATIO and peak <= TARGET_RSS_MIB and create_writes <= count
    return 0 if ok and create_events <= count else 1


def _fail(workdir: Path) -> bool:
    raise SystemExit(f"the operator exited:\n{launcher.log_tail(workdir / 'operator.log', 40)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    crds = sorted((REPO / "crds").glob("*.yaml"))
    crds += sorted((REPO / ".cluster" / "crds" / "katib").glob("*.yaml"))
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        workdir = Path(tmp)
        with launcher.running_control_plane(
            workdir / "plane", launcher.binaries_dir(), crds
        ) as plane:
            return run(plane, args.count, workdir)


if __name__ == "__main__":
    sys.exit(main())
