"""A 4-trial tuning on real Katib on this machine, against the same file run locally.

Applies deploy/samples/quick.yaml (4 one-epoch trials, 2 at a time), or the file `-f` names, to
a single-node cluster with Katib v0.19.0, our two images and the operator (the node `make
katib-cluster` runs, or one started here in a temporary directory and stopped at the end) and
prints:

- the time from `kubectl apply` to the first trial pod running, the part of it that is ours
  (the operator creating the Experiment) and the part that is Katib's suggestion readiness
  probe (its 10 s initial delay, not ours to shorten);
- per trial, the Trial's wall time (Katib's start to completion) against the trainer
  container's own run time: the difference is what Katib adds per trial (Job, pod, sidecar,
  metrics collection, database);
- the median trainer run time in a pod against the median trial process locally;
- the machine's busy CPU time over each run (/proc/stat, every core): what the same four
  trials cost on Katib beyond the trainers, the node's parts and Katib's included, where they
  share the trainers' cores;
- the same trainer (the trial pod `expand()` renders, with fixed values) timed to the
  millisecond in plain pods with no Katib, one and then `parallelTrials` at once, against as
  many local processes: what the pod itself costs, apart from Katib;
- the whole tuning's wall time against `mnist-tuning run -f` of the same file, run right after
  in this process tree on the same data while the node is still up, its parts idle (the
  baseline), as a ratio; and the ratio Katib's own costs alone would give, were each trainer
  as fast as locally (apply to the first Trial, then the trials' waves each with Katib's
  per-trial overhead).

    sudo .venv/bin/python benchmarks/katib_cluster.py [-f TUNING.yaml] [--dir .katib-cluster]
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "deploy" / "samples" / "quick.yaml"
sys.path[:0] = [
    str(REPO / "tests" / "harness"),
    str(REPO / "tests" / "e2e"),
    str(REPO / "operator"),
    str(REPO / "trainer"),
]

from launcher import DEFAULT_BIN_DIR, wait_for  # noqa: E402  # the harness the tests use
from mnist_tuning.api.expand import (  # noqa: E402
    METRICS_FILE_PATH,
    PRIMARY_CONTAINER,
    expand,
    trainer_threads,
)
from mnist_tuning.api.spec import parse_tuning  # noqa: E402
from mnist_tuning.local.command import primary_container, render_trial_spec, trial_process  # noqa: E402
from node import katib, product  # noqa: E402
from node.host import KUBERNETES_PROGRAMS  # noqa: E402
from node.node import Node, read_running  # noqa: E402
from node.product import OPERATOR_NAMESPACE  # noqa: E402
from providers import E2ECluster, watching_pods  # noqa: E402
from tunings import TRIAL_LABEL, seconds_between  # noqa: E402
from watch import watching  # noqa: E402

NAMESPACE = "bench-katib"
SUGGESTION_LABEL = "katib.kubeflow.org/suggestion"
DEADLINE_S = 40 * 60
PLAIN_NAMESPACE = "bench-pods"  # no Katib: its pod webhook leaves the namespace alone
# A trial's values, for the trainer run outside Katib (its time hardly depends on them).
TRIAL_VALUE = "0.05"
# The trainer's own run time in a pod, to the millisecond (Kubernetes keeps whole seconds).
TIMED = (
    "start=$(date +%s%N); {}; code=$?; end=$(date +%s%N); "
    'echo "trainer-ms $(((end - start) / 1000000))"; exit $code'
)
# The node's own long-lived processes, by name (/proc/PID/comm).
NODE_PARTS = frozenset({*KUBERNETES_PROGRAMS, "containerd"})
# Where a pod's cgroup lies under each QoS class: cgroup v1's cpuacct hierarchy, or v2's.
POD_CGROUPS = ("kubepods", "kubepods/burstable", "kubepods/besteffort")


def busy_cpu_seconds() -> float:
    """The machine's CPU time spent on work since boot (user, nice, system, irq, softirq; no
    idle, iowait or the hypervisor's steal), in core-seconds."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split()[1:8]
    )
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def node_parts_cpu_seconds() -> float:
    """CPU time of the node's own processes (API server, etcd, kubelet, containerd...)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # gone since the listing
            continue
        name, _, rest = text.partition("(")[2].rpartition(")")
        if name in NODE_PARTS:
            utime, stime = rest.split()[11:13]
            total += int(utime) + int(stime)
    return total / os.sysconf("SC_CLK_TCK")


def pod_cpu_seconds(pod: dict[str, Any]) -> float:
    """CPU time of a running pod's containers, from its cgroup (v1's cpuacct, or v2); 0 when
    its cgroup is not found."""
    uid = pod["metadata"]["uid"]
    for qos in POD_CGROUPS:
        v1 = Path("/sys/fs/cgroup/cpuacct", qos, f"pod{uid}", "cpuacct.usage")
        if v1.is_file():
            return int(v1.read_text()) / 1e9
        v2 = Path("/sys/fs/cgroup", qos, f"pod{uid}", "cpu.stat")
        if v2.is_file():
            usage = dict(line.split() for line in v2.read_text().splitlines())
            return int(usage["usage_usec"]) / 1e6
    return 0.0


def cpu_by_part(target: E2ECluster) -> dict[str, float]:
    """CPU seconds so far of the parts that outlive a tuning: Katib's and the operator's pods
    (the suggestion's included), and the node's own processes."""
    katib_pods = target.items("pods", katib.NAMESPACE) + [
        pod
        for pod in target.items("pods", NAMESPACE)
        if SUGGESTION_LABEL in pod["metadata"].get("labels", {})
    ]
    return {
        "Katib's pods": sum(map(pod_cpu_seconds, katib_pods)),
        "the operator": sum(map(pod_cpu_seconds, target.items("pods", OPERATOR_NAMESPACE))),
        "the node's parts": node_parts_cpu_seconds(),
    }


@contextmanager
def cluster(state_dir: Path, data_dir: Path) -> Iterator[E2ECluster]:
    """The running `make katib-cluster` node, or a fresh one for the duration of the block."""
    running = read_running(state_dir)
    if running is not None:
        yield E2ECluster("node", running.layout.bin, running.layout.kubeconfig)
        return
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        node = Node(Path(tmp), DEFAULT_BIN_DIR)
        started = time.perf_counter()
        try:
            up = node.up()
            katib.install(up, DEFAULT_BIN_DIR, katib.manifests_dir(DEFAULT_BIN_DIR))
            product.install(up, REPO, data_dir)
            print(f"node, Katib and operator up in {time.perf_counter() - started:.0f} s")
            yield E2ECluster("node", up.layout.bin, up.layout.kubeconfig)
        finally:
            node.down()


def on_cluster(target: E2ECluster, manifest: dict[str, Any]) -> dict[str, Any]:
    """Apply the tuning, follow it to its end; the figures of the run."""
    target.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=300s")
    target.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": NAMESPACE, "labels": {katib.INJECTION_LABEL: "enabled"}},
        }
    )
    name = manifest["metadata"]["name"]
    first_running: list[float] = []
    # Followed by watches, not polled: a kubectl process every half second would take CPU
    # from the trainers it measures.
    with (
        watching_pods(target, NAMESPACE, TRIAL_LABEL) as pods,
        watching(target.argv(), "mnisttunings", NAMESPACE) as tunings,
    ):
        parts = cpu_by_part(target)
        applied, busy = time.perf_counter(), busy_cpu_seconds()
        target.apply({**manifest, "metadata": {"name": name, "namespace": NAMESPACE}})

        def ended() -> bool:
            if not first_running and any(
                p.get("status", {}).get("phase") == "Running" for p in pods.latest().values()
            ):
                first_running.append(time.perf_counter() - applied)
            phase = ((tunings.latest().get(name) or {}).get("status") or {}).get("phase")
            return phase in ("Succeeded", "Failed")

        wait_for(f"MnistTuning {name} to end", ended, DEADLINE_S)
        wall, busy = time.perf_counter() - applied, busy_cpu_seconds() - busy
        parts = {part: seconds - parts[part] for part, seconds in cpu_by_part(target).items()}
        seen = pods.latest()
    final = target.get("mnisttuning", name, NAMESPACE)
    trials = []
    listed = target.items("trials", NAMESPACE)
    for trial in listed:
        [pod] = [
            p
            for p in seen.values()
            if p["metadata"]["labels"][TRIAL_LABEL] == trial["metadata"]["name"]
        ]
        [trainer] = [
            s
            for s in pod["status"]["containerStatuses"]
            if s["name"] != "metrics-logger-and-collector"
        ]
        done = trainer["state"]["terminated"]
        trials.append(
            {
                "trial": trial["metadata"]["name"],
                "trial_s": seconds_between(
                    trial["status"]["startTime"], trial["status"]["completionTime"]
                ),
                "trainer_s": seconds_between(done["startedAt"], done["finishedAt"]),
                "image": next(
                    c["image"] for c in pod["spec"]["containers"] if c["name"] == PRIMARY_CONTAINER
                ),
            }
        )
    readiness = suggestion_readiness(target.items("pods", NAMESPACE))
    first_trial = min(
        seconds_between(final["metadata"]["creationTimestamp"], trial["status"]["startTime"])
        for trial in listed
    )
    [experiment] = target.items("experiments", NAMESPACE)
    created = seconds_between(
        final["metadata"]["creationTimestamp"], experiment["metadata"]["creationTimestamp"]
    )
    target.kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    return {
        "wall": wall,
        "busy": busy,
        "parts": parts,
        "first_running": first_running[0],
        "suggestion_readiness": readiness,
        "experiment_created": created,
        "first_trial": first_trial,
        "status": final["status"],
        "trials": trials,
    }


def suggestion_readiness(pods: list[dict[str, Any]]) -> float | None:
    """Seconds from the suggestion container's start to its pod's Ready: Katib's probe delay."""
    for pod in pods:
        if SUGGESTION_LABEL not in pod["metadata"].get("labels", {}):
            continue
        status = pod["status"]
        [ready] = [c for c in status["conditions"] if c["type"] == "Ready"]
        started = min(s["state"]["running"]["startedAt"] for s in status["containerStatuses"])
        return seconds_between(started, ready["lastTransitionTime"])
    return None


def one_trial(manifest: dict[str, Any], image: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The Experiment `expand()` renders for the tuning, and a value for each trial parameter."""
    experiment = expand(parse_tuning(manifest), default_image=image)
    parameters = experiment["spec"]["trialTemplate"]["trialParameters"]
    return experiment, {parameter["reference"]: TRIAL_VALUE for parameter in parameters}


def in_plain_pods(
    target: E2ECluster, experiment: dict[str, Any], values: dict[str, str], count: int
) -> list[float]:
    """Seconds of the trainer in `count` trial pods started together, with no Katib around
    them: the rendered pod, with an emptyDir where Katib mounts its metrics volume."""
    target.kubectl("delete", "namespace", PLAIN_NAMESPACE, "--ignore-not-found", "--timeout=300s")
    target.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": PLAIN_NAMESPACE}})
    job = render_trial_spec(experiment, values)
    container = primary_container(experiment, job)
    timed = {
        **container,
        "command": ["sh", "-c", TIMED.format(shlex.join(container["command"]))],
        "volumeMounts": [{"name": "metrics", "mountPath": posixpath.dirname(METRICS_FILE_PATH)}],
    }
    spec = {
        **job["spec"]["template"]["spec"],
        "restartPolicy": "Never",
        "containers": [timed],
        "volumes": [{"name": "metrics", "emptyDir": {}}],
    }
    with watching(target.argv(), "pods", PLAIN_NAMESPACE) as pods:
        for index in range(count):
            target.apply(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": f"trainer-{index}", "namespace": PLAIN_NAMESPACE},
                    "spec": spec,
                }
            )

        def ended() -> bool:
            phases = [(p.get("status") or {}).get("phase") for p in pods.latest().values()]
            return len(phases) == count and all(p in ("Succeeded", "Failed") for p in phases)

        wait_for("the trainer pods to end", ended, DEADLINE_S)
    seconds = []
    for index in range(count):
        log = target.kubectl("logs", f"trainer-{index}", "-n", PLAIN_NAMESPACE)
        if pods.latest()[f"trainer-{index}"]["status"]["phase"] != "Succeeded":
            raise RuntimeError(f"trainer-{index} failed:\n{log}")
        [ms] = re.findall(r"^trainer-ms (\d+)$", log, re.MULTILINE)
        seconds.append(int(ms) / 1000)
    target.kubectl("delete", "namespace", PLAIN_NAMESPACE, "--wait=false")
    return seconds


def in_processes(
    experiment: dict[str, Any], values: dict[str, str], threads: int, data_dir: Path, count: int
) -> list[float]:
    """Seconds of the same trainer in `count` local processes started together, each made as
    the local engine makes a trial's process, on the pod's number of threads."""
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as workdir:
        seconds = [0.0] * count

        def run(index: int) -> None:
            process = trial_process(
                experiment,
                values,
                python=str(REPO / ".venv" / "bin" / "python"),
                data_dir=data_dir,
                metrics_file=Path(workdir, f"{index}.json"),
                threads=threads,
            )
            # The local engine's environment for a trial (mnist_tuning.local.engine).
            env = {**os.environ, **process.env, "OMP_NUM_THREADS": str(threads),
                   "MKL_NUM_THREADS": str(threads)}  # fmt: skip
            started = time.perf_counter()
            subprocess.run(process.argv, check=True, capture_output=True, env=env)
            seconds[index] = time.perf_counter() - started

        runners = [threading.Thread(target=run, args=(index,)) for index in range(count)]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
        return seconds


def local_trials(workdir: Path) -> list[float]:
    """Each local trial's seconds from its draw to its result, from the engine's Optuna study."""
    import optuna  # the local engine's own storage

    storage = f"sqlite:///{workdir / 'study.db'}"
    [name] = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    return [
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        for trial in study.trials
        if trial.datetime_start and trial.datetime_complete
    ]


def locally(
    manifest_file: Path, data_dir: Path
) -> tuple[float, float, dict[str, Any], list[float]]:
    """`mnist-tuning run -f` of the same file: wall time, busy CPU time, final status, each
    trial's time."""
    with tempfile.TemporaryDirectory(prefix="bench-local-") as workdir:
        command = [
            str(REPO / ".venv" / "bin" / "mnist-tuning"), "run", "-f", str(manifest_file),
            "--workdir", workdir, "--data-dir", str(data_dir),
        ]  # fmt: skip
        started, busy = time.perf_counter(), busy_cpu_seconds()
        subprocess.run(command, check=True, capture_output=True, text=True)
        wall, busy = time.perf_counter() - started, busy_cpu_seconds() - busy
        status = yaml.safe_load((Path(workdir) / "status.yaml").read_text())
        return wall, busy, status, local_trials(Path(workdir))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / ".katib-cluster")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("-f", "--file", type=Path, default=SAMPLE, help="the tuning to run")
    args = parser.parse_args()
    manifest = yaml.safe_load(args.file.read_text())
    budget = manifest["spec"]["budget"]
    print(f"{args.file}: {budget['maxTrials']} trials, {budget['parallelTrials']} at a time")
    with cluster(args.dir, args.data_dir) as target:
        run = on_cluster(target, manifest)
        # With the node still up and idle: both runs share the machine as it is.
        local_wall, local_busy, local_status, local_trial_s = locally(args.file, args.data_dir)
        [image] = {t["image"] for t in run["trials"]}
        experiment, values = one_trial(manifest, image)
        threads = trainer_threads(parse_tuning(manifest).spec.trial)
        side_by_side = {
            count: (
                in_plain_pods(target, experiment, values, count),
                in_processes(experiment, values, threads, args.data_dir, count),
            )
            for count in (1, budget["parallelTrials"])
        }
    print(f"apply → first trial pod running: {run['first_running']:.1f} s")
    print(
        f"  of which the operator's (apply → Experiment created): {run['experiment_created']:.0f} s"
    )
    readiness = run["suggestion_readiness"]
    if readiness is not None:
        print(f"  of which Katib's suggestion readiness (start → Ready): {readiness:.0f} s")
    print(f"{'trial':<28} {'trial wall s':>12} {'trainer s':>10} {'Katib adds s':>13}")
    for trial in sorted(run["trials"], key=lambda t: t["trial"]):
        overhead = trial["trial_s"] - trial["trainer_s"]
        print(
            f"{trial['trial']:<28} {trial['trial_s']:>12.0f} {trial['trainer_s']:>10.0f} "
            f"{overhead:>13.0f}"
        )
    overheads = [t["trial_s"] - t["trainer_s"] for t in run["trials"]]
    print(f"median per-trial overhead of Katib: {statistics.median(overheads):.0f} s")
    in_pod = statistics.median(t["trainer_s"] for t in run["trials"])
    local_trial = statistics.median(local_trial_s)
    print(
        f"median trainer in a pod {in_pod:.0f} s, median trial locally {local_trial:.1f} s: "
        f"{in_pod / local_trial:.2f}x"
    )
    best, local_best = run["status"].get("best") or {}, local_status.get("best") or {}
    print(
        f"on Katib: {run['status']['phase']} in {run['wall']:.0f} s, best accuracy "
        f"{best.get('accuracy', float('nan')):.4f}"
    )
    print(
        f"mnist-tuning run: {local_status['phase']} in {local_wall:.0f} s, best accuracy "
        f"{local_best.get('accuracy', float('nan')):.4f}"
    )
    cores = len(os.sched_getaffinity(0))
    print(
        f"CPU busy, all {cores} cores: on Katib {run['busy']:.0f} core-s in {run['wall']:.0f} s "
        f"({run['busy'] / run['wall']:.2f} cores), locally {local_busy:.0f} core-s in "
        f"{local_wall:.0f} s ({local_busy / local_wall:.2f} cores): Katib's run cost "
        f"{run['busy'] - local_busy:.0f} core-s more"
    )
    shares = ", ".join(f"{part} {seconds:.1f}" for part, seconds in run["parts"].items())
    rest = run["busy"] - sum(run["parts"].values())
    print(f"  on Katib, core-s of {shares}; the trials and the rest {rest:.0f}")
    print(f"Katib tuning wall time / local tuning wall time: {run['wall'] / local_wall:.2f}x")
    for count, (pods, processes) in side_by_side.items():
        print(
            f"the same trainer, {count} at once: in plain pods (no Katib) "
            f"{', '.join(f'{s:.1f}' for s in pods)} s, in local processes "
            f"{', '.join(f'{s:.1f}' for s in processes)} s: "
            f"{statistics.median(pods) / statistics.median(processes):.2f}x"
        )
    # A model, not a measurement: the run's own fixed costs with trainers as fast as locally.
    waves = -(-budget["maxTrials"] // budget["parallelTrials"])
    floor = run["first_trial"] + waves * (local_trial + statistics.median(overheads))
    print(
        f"  with trainers as fast as locally, Katib's own costs alone (apply → first Trial "
        f"{run['first_trial']:.0f} s, then {waves} waves each with its per-trial overhead) "
        f"give {floor:.0f} s: {floor / local_wall:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
