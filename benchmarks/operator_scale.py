"""How the operator keeps up with many tunings, against the API server's own rate in the same run.

On a fresh local control plane (tests/harness/launcher.py):
1. baseline: one client creates N Experiments directly (the API server's create rate);
2. the same client creates N MnistTunings while the operator runs (under its ServiceAccount);
   timed until every tuning has its Experiment and a Pending/Running status;
3. the Katib stand-in writes a finished status into all N Experiments (timed as the baseline);
   timed until every tuning says Succeeded;
and the operator's peak RSS (VmHWM) at the end.

    .venv/bin/python benchmarks/operator_scale.py [--count 200]

Targets: create throughput >= 0.8x the direct rate; peak RSS <= 150 MiB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "harness"))

import katib_standin  # noqa: E402
import launcher  # noqa: E402
from kubernetes import client, config  # noqa: E402
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

KATIB = (KATIB_GROUP, KATIB_VERSION, EXPERIMENTS)
TARGET_RATIO, TARGET_RSS_MIB = 0.8, 150


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
    return katib_standin.completed(status, "max-trials", at)


def wait(check: Callable[[], bool], what: str, timeout: float = 600) -> float:
    """Poll until `check` holds; return the moment it did (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc: cannot measure peak RSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(plane: launcher.ControlPlane, count: int, workdir: Path) -> int:
    config.load_kube_config(str(plane.kubeconfig))
    api = client.CustomObjectsApi()
    core = client.CoreV1Api()
    direct_ns, writes_ns, operator_ns = "bench-direct", "bench-writes", "bench-operator"
    for ns in (direct_ns, writes_ns, operator_ns):
        core.create_namespace(
            {"metadata": {"name": ns, "labels": {katib_standin.KATIB_INJECTION_LABEL: "enabled"}}}
        )
    plane.apply(plane.run_kubectl("kustomize", str(REPO / "deploy" / "operator")).stdout)
    sa_kubeconfig = plane.kubeconfig_for_service_account(
        "mnist-tuning-system", "mnist-tuning-operator"
    )
    names = [f"bench-{i:04d}" for i in range(count)]

    # 1. the API server's own rate: the same client creates Experiments directly.
    experiments = [
        expand(parse_tuning({**tuning(n), "metadata": {"name": n, "namespace": direct_ns}}))
        for n in names
    ]
    start = time.monotonic()
    for experiment in experiments:
        api.create_namespaced_custom_object(*KATIB[:2], direct_ns, KATIB[2], experiment)
    direct_s = time.monotonic() - start

    # 1b. the API server's cost of the operator's path: the same client makes, one tuning at a
    # time, every write the path needs (tuning, Experiment, kopf's annotation, status, Event).
    start = time.monotonic()
    for name in names:
        made = api.create_namespaced_custom_object(GROUP, VERSION, writes_ns, PLURAL, tuning(name))
        owned = expand(parse_tuning({**made, "status": {}}))
        api.create_namespaced_custom_object(*KATIB[:2], writes_ns, KATIB[2], owned)
        note = {"metadata": {"annotations": {f"operator.{GROUP}/last": "{}"}}}
        api.patch_namespaced_custom_object(GROUP, VERSION, writes_ns, PLURAL, name, note)
        status = {"status": {"phase": "Pending", "experiment": owned["metadata"]["name"]}}
        api.patch_namespaced_custom_object_status(GROUP, VERSION, writes_ns, PLURAL, name, status)
        core.create_namespaced_event(
            writes_ns,
            {
                "metadata": {"generateName": f"{name}."},
                "involvedObject": {"kind": "MnistTuning", "name": name, "namespace": writes_ns},
                "reason": "ExperimentCreated",
                "message": "created",
                "type": "Normal",
            },
        )
    writes_s = time.monotonic() - start

    # 2. the same client creates tunings; the operator expands them.
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

        def tunings() -> list[dict[str, Any]]:
            items: list[dict[str, Any]] = api.list_namespaced_custom_object(
                GROUP, VERSION, operator_ns, PLURAL
            )["items"]
            return items

        def all_expanded() -> bool:
            items = tunings()
            done = [
                t
                for t in items
                if (t.get("status") or {}).get("experiment")
                and t["status"].get("phase") in ("Pending", "Running")
            ]
            if len(done) < count:
                return False
            listed = api.list_namespaced_custom_object(*KATIB[:2], operator_ns, KATIB[2])
            return len(listed["items"]) == count

        start = time.monotonic()
        for name in names:
            api.create_namespaced_custom_object(GROUP, VERSION, operator_ns, PLURAL, tuning(name))
        created_s = time.monotonic() - start
        operator_s = wait(all_expanded, "every tuning expanded") - start

        # 3. the stand-in finishes every Experiment; the operator mirrors Succeeded.
        by_tuning = {t["metadata"]["name"]: t["status"]["experiment"] for t in tunings()}
        start = time.monotonic()
        for name, experiment_name in by_tuning.items():
            api.patch_namespaced_custom_object_status(
                *KATIB[:2],
                operator_ns,
                KATIB[2],
                experiment_name,
                {"status": finished_status(f"{name}-t1")},
            )
        standin_s = time.monotonic() - start
        succeeded_s = (
            wait(
                lambda: (
                    sum((t.get("status") or {}).get("phase") == "Succeeded" for t in tunings())
                    == count
                ),
                "every tuning Succeeded",
            )
            - start
        )
        rss = peak_rss_mib(operator.pid)
        cpu = cpu_seconds(operator.pid)
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        log.close()

    create_ratio = direct_s / operator_s
    finish_ratio = standin_s / succeeded_s
    print(f"tunings: {count}; operator watching one namespace; {os.cpu_count()} CPUs shared")
    print(f"direct Experiment creates:           {direct_s:7.2f} s  ({count / direct_s:6.1f}/s)")
    print(f"the path's API writes, client alone: {writes_s:7.2f} s  ({count / writes_s:6.1f}/s)")
    print(f"MnistTuning creates (client only):   {created_s:7.2f} s")
    print(
        f"tunings -> Experiment + status:      {operator_s:7.2f} s  ({count / operator_s:6.1f}/s)"
    )
    print(f"create throughput ratio:             {create_ratio:7.2f}x  (target >= {TARGET_RATIO})")
    print(f"  ratio against the path's writes:   {writes_s / operator_s:7.2f}x")
    print(f"stand-in status writes:              {standin_s:7.2f} s  ({count / standin_s:6.1f}/s)")
    print(
        f"all tunings Succeeded after:         {succeeded_s:7.2f} s  ({count / succeeded_s:6.1f}/s)"
    )
    print(f"finish throughput ratio:             {finish_ratio:7.2f}x")
    print(f"operator CPU time (user+system):     {cpu:7.2f} s")
    print(f"operator peak RSS (VmHWM):           {rss:7.1f} MiB (target <= {TARGET_RSS_MIB})")
    return 0 if create_ratio >= TARGET_RATIO and rss <= TARGET_RSS_MIB else 1


def _fail(workdir: Path) -> bool:
    raise SystemExit(f"the operator exited:\n{launcher.log_tail(workdir / 'operator.log', 40)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
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
