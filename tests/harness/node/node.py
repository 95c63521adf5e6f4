"""Bring one single-node Kubernetes up on this machine, and take it down without a trace.

`up()` first removes whatever a previous node left (even one killed with SIGKILL), then prepares
the host (packages, sysctls, the network guard), starts containerd, imports the images, starts
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet and kube-proxy as
processes in their own sessions (they outlive the command that started them), deploys CoreDNS
and returns once the node is Ready and the cluster DNS answers. `down()` stops everything and
checks that nothing is left. Only one node can run on a machine (containerd's /run paths, the
bridge, the ports), so the machine-wide record in /run names the state directory in use.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import launcher
import yaml
from launcher import free_port, log_tail

from node import host, images, network
from node.configs import (
    API_PORT,
    COREDNS_IMAGE,
    KUBELET_HEALTHZ_PORT,
    NODE_NAME,
    PAUSE_IMAGE,
    Layout,
    cni_config,
    containerd_config,
    coredns_manifests,
    default_registry_hosts,
    kube_proxy_config,
    kubelet_config,
)
from node.network import API_SERVICE_IP, DNS_SERVICE_IP, SERVICE_RANGE, NetworkPlan
from node.pki import write_node_pki

RECORD = Path("/run/mnist-tuning-node.json")
SAVED_SYSCTLS = Path("/run/mnist-tuning-node.sysctls")
PROGRAMS = (*host.KUBERNETES_PROGRAMS, "kubectl", "coredns", "pause")
START_TIMEOUT_S = 180.0
# The parts of a running node `stop_parts` and `start_parts` take down and bring back.
PARTS = ("containerd", "kubelet", "etcd", "kube-apiserver")
STOP_GRACE_S = 10.0
RESTART_DELAY_S = 1.0  # before a part that exited at start is started again
# The Debian userland the node's own tests run in: python3 serves HTTP, answers webhooks and
# resolves names through glibc, like the images our product ships.
TEST_USERLAND = images.DebianUserland("bookworm", ("python3",))


def userland_image() -> str:
    """The name of the Debian test image; its tag is the userland's cache key."""
    return f"localhost/mnist-tuning/debian-python:bookworm-{TEST_USERLAND.key()}"


class NodeError(RuntimeError):
    """The node could not be started or stopped; the message says why and where the logs are."""


def cache_dir() -> Path:
    """The cache the harness shares with build.sh."""
    if os.environ.get("MNIST_TUNING_CACHE"):
        return Path(os.environ["MNIST_TUNING_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-tuning"


def outside_plan() -> NetworkPlan:
    """The node address and outside interface: those of this machine's default route."""
    route = host.run(["ip", "-4", "route", "show", "default"], check=False)
    addresses = ""
    if " dev " in route:
        interface = route.split(" dev ")[1].split()[0]
        addresses = host.run(
            ["ip", "-4", "-o", "addr", "show", "dev", interface, "scope", "global"]
        )
    try:
        interface, address = network.parse_default_route(route, addresses)
    except ValueError as error:
        raise NodeError(f"cannot tell this machine's outside interface: {error}") from None
    return NetworkPlan(node_ip=address, outside=interface)


@dataclass
class Timings:
    """Seconds from the start of `up()` to each milestone, for the notes and benchmarks."""

    started: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, what: str) -> None:
        """Record that `what` is done now."""
        self.marks[what] = round(time.monotonic() - self.started, 2)


@dataclass(frozen=True)
class RunningNode:
    """A node that is up: how to reach it."""

    layout: Layout
    plan: NetworkPlan
    timings: dict[str, float]

    def kubectl(
        self, *args: str, input_text: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """kubectl as the cluster admin; raise NodeError with stderr when `check` and it fails."""
        result = launcher.kubectl(
            self.layout.bin,
            self.layout.kubeconfig,
            *args,
            input_text=input_text,
            check=False,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise NodeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def apply(self, documents: Sequence[dict[str, Any]]) -> None:
        """`kubectl apply` of manifests given as dicts."""
        self.kubectl("apply", "-f", "-", input_text=as_input(documents))

    def rollout(self, deployment: str, namespace: str) -> None:
        """Wait until a Deployment has rolled out (its new pods Ready), five minutes at most;
        fail with what its namespace's pods and events say."""
        try:
            self.kubectl(
                "rollout", "status", f"deployment/{deployment}", "-n", namespace,
                "--timeout=300s", timeout=320,
            )  # fmt: skip
        except NodeError as error:
            raise NodeError(f"{error}\n{self.diagnose(namespace)}") from None

    def diagnose(self, *namespaces: str) -> str:
        """Why pods in `namespaces` are not Ready: pods, recent events, the logs of every
        container that is not ready (its previous run's too, where it restarted)."""

        def text(*args: str) -> str:
            result = self.kubectl(*args, check=False)
            return (result.stdout + result.stderr).strip()

        out = []
        for ns in namespaces:
            events = text("get", "events", "-n", ns, "--sort-by=.lastTimestamp").splitlines()
            out += [f"--- pods in {ns}", text("get", "pods", "-n", ns, "-o", "wide")]
            out += [f"--- events in {ns}", *events[-40:]]
            listing = self.kubectl("get", "pods", "-n", ns, "-o", "json", check=False)
            pods = json.loads(listing.stdout)["items"] if listing.returncode == 0 else []
            for pod in pods:
                for status in pod["status"].get("containerStatuses") or []:
                    if status.get("ready"):
                        continue
                    name, container = pod["metadata"]["name"], status["name"]
                    logs = ("logs", "-n", ns, name, "-c", container, "--tail=30")
                    out.append(f"--- {ns}/{name} [{container}]: {status.get('state')}")
                    if status.get("restartCount"):
                        out += ["(previous run)", text(*logs, "--previous")]
                    out.append(text(*logs))
        return "\n".join(out)


def as_input(documents: Sequence[dict[str, Any]]) -> str:
    """Manifests as kubectl's input: a JSON List, so every string reads back as a string (PyYAML
    writes `1e-05` bare, which kubectl's YAML 1.2 reads as a number)."""
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(documents)})


class Node:
    """One node's processes, in one state directory."""

    def __init__(self, root: Path, source_bin: Path) -> None:
        self.layout = Layout(root.resolve())
        self.source_bin = source_bin
        self.plan = outside_plan()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    # --- helpers -------------------------------------------------------------------------------

    def _start(self, name: str, argv: Sequence[str]) -> None:
        self.processes[name] = start_process(self.layout, name, argv)

    def _wait(self, what: str, ready: Callable[[], bool], watched: str | None = None) -> None:
        """Poll `ready()`; fail at once, with its log, if the `watched` process exits."""
        wait_started(self.layout, what, ready, watched, self.processes.get(watched or ""))

    def _running(self, timings: Timings) -> RunningNode:
        return RunningNode(self.layout, self.plan, timings.marks)

    # --- lifecycle -----------------------------------------------------------------------------

    def previous_roots(self) -> list[Path]:
        """State directories a node on this machine used: this one and the recorded one."""
        roots, recorded = [self.layout.root], recorded_root()
        if recorded is not None and recorded != self.layout.root:
            roots.append(recorded)
        return roots

    def up(self) -> RunningNode:
        """Start the node from scratch (cleaning any debris first); return once DNS answers."""
        host.require_root("make katib-cluster")
        timings = Timings()
        host.ensure_packages()
        missing = [p for p in PROGRAMS if not os.access(self.source_bin / p, os.X_OK)]
        if missing:
            raise NodeError(
                f"missing node programs in {self.source_bin}: {', '.join(missing)}; "
                "run `make binaries` (tests/harness/build.sh node builds them, cached afterwards)"
            )
        self.down()
        timings.mark("debris cleaned")
        try:
            self._prepare_host()
            self._install_programs()
            timings.mark("host prepared")
            self._start_containerd()
            timings.mark("containerd up")
            self._import_images()
            timings.mark("images imported")
            self._start_control_plane()
            timings.mark("apiserver ready")
            return self._start_node(timings)
        except BaseException:
            self.down()
            raise

    def _prepare_host(self) -> None:
        layout = self.layout
        for directory in (layout.bin, layout.etc / "cni", layout.etc / "manifests", layout.logs):
            directory.mkdir(parents=True, exist_ok=True)
        for directory in (layout.var, layout.pids):
            directory.mkdir(parents=True, exist_ok=True)
        RECORD.write_text(json.dumps({"root": str(layout.root), "plan": vars(self.plan)}))
        host.Sysctls(SAVED_SYSCTLS).enable()
        host.run(["ip", "route", "add", *network.SERVICE_ROUTE])
        # The guard's cgroup match needs the cgroup to exist when the rule goes in.
        host.containerd_cgroup().mkdir(exist_ok=True)
        for rule in network.guard_rules(self.plan):
            host.run(["iptables", "-w", *rule])

    def _install_programs(self) -> None:
        for program in PROGRAMS:
            target = self.layout.bin / program
            target.unlink(missing_ok=True)
            try:
                os.link(self.source_bin / program, target)
            except OSError:
                shutil.copy2(self.source_bin / program, target)

    def _start_containerd(self) -> None:
        config = self.layout.etc / "containerd.toml"
        config.write_text(containerd_config(self.layout))
        (self.layout.etc / "cni" / "10-mnist-node.conflist").write_text(
            cni_config(self.layout, self.plan)
        )
        default_hosts = self.layout.registry_hosts / "_default" / "hosts.toml"
        default_hosts.parent.mkdir(parents=True, exist_ok=True)
        default_hosts.write_text(default_registry_hosts())
        argv = ["containerd", "--config", str(config)]
        self._start("containerd", host.in_cgroup(host.containerd_cgroup(), argv))
        self._wait("containerd to answer", succeeds("ctr", "version"), "containerd")

    def _import_images(self) -> None:
        work = self.layout.var / "images"
        work.mkdir(parents=True, exist_ok=True)
        statics = {
            PAUSE_IMAGE: (
                {"/pause": self.source_bin / "pause"},
                images.ImageConfig(entrypoint=["/pause"]),
            ),
            COREDNS_IMAGE: (
                {"/coredns": self.source_bin / "coredns"},
                images.ImageConfig(entrypoint=["/coredns"]),
            ),
        }
        archives = []
        for name, (binaries, config) in statics.items():
            stem = name.rpartition("/")[2].replace(":", "-")
            rootfs = images.static_rootfs(work / f"rootfs-{stem}", binaries)
            layer = work / f"{stem}.layer.tar"
            images.write_layer(rootfs, layer)
            archives.append(work / f"{stem}.oci.tar")
            images.write_oci_archive([layer], name, config, archives[-1])
        layer = TEST_USERLAND.layer(cache_dir() / "images", images.debian_mirror())
        archives.append(work / "debian-python.oci.tar")
        images.write_oci_archive(
            [layer], userland_image(), images.ImageConfig(cmd=["python3"]), archives[-1]
        )
        for archive in archives:
            images.import_archive(["ctr"], archive)
        shutil.rmtree(work)

    def _start_control_plane(self) -> None:
        layout, plan = self.layout, self.plan
        server = f"https://{plan.node_ip}:{API_PORT}"
        write_node_pki(layout, plan.node_ip, server)
        pki = layout.pki
        etcd_url = f"http://127.0.0.1:{free_port()}"
        self._start(
            "etcd",
            [
                str(layout.bin / "etcd"),
                f"--data-dir={layout.var / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )
        self._wait("etcd healthy", lambda: launcher.probe(f"{etcd_url}/health", None), "etcd")
        self._start(
            "kube-apiserver",
            [
                str(layout.bin / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={plan.node_ip}",
                f"--secure-port={API_PORT}",
                f"--advertise-address={plan.node_ip}",
                f"--cert-dir={pki}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                "--allow-privileged=true",
                "--profiling=false",
            ],
        )
        kubectl = [str(layout.bin / "kubectl"), f"--kubeconfig={layout.kubeconfig}"]
        self._wait(
            "kube-apiserver ready",
            succeeds(*kubectl, "get", "--raw", "/readyz"),
            "kube-apiserver",
        )
        self._start(
            "kube-controller-manager",
            [
                str(layout.bin / "kube-controller-manager"),
                f"--kubeconfig={layout.kubeconfig_of('controller-manager')}",
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--use-service-account-credentials=true",
                "--allocate-node-cidrs=false",
                f"--flex-volume-plugin-dir={layout.var / 'kubelet-plugins'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
            ],
        )
        scheduler = layout.kubeconfig_of("scheduler")
        self._start(
            "kube-scheduler",
            [
                str(layout.bin / "kube-scheduler"),
                f"--kubeconfig={scheduler}",
                f"--authentication-kubeconfig={scheduler}",
                f"--authorization-kubeconfig={scheduler}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=10259",
            ],
        )

    def _start_node(self, timings: Timings) -> RunningNode:
        layout = self.layout
        kubelet_yaml = layout.etc / "kubelet.yaml"
        kubelet_yaml.write_text(yaml.safe_dump(kubelet_config(layout, self.plan)))
        proxy_yaml = layout.etc / "kube-proxy.yaml"
        proxy_yaml.write_text(yaml.safe_dump(kube_proxy_config(layout)))
        self._start(
            "kubelet",
            [
                str(layout.bin / "kubelet"),
                f"--config={kubelet_yaml}",
                f"--kubeconfig={layout.kubeconfig_of('kubelet')}",
                f"--root-dir={layout.var / 'kubelet'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={self.plan.node_ip}",
            ],
        )
        self._start("kube-proxy", [str(layout.bin / "kube-proxy"), f"--config={proxy_yaml}"])
        running = self._running(timings)
        self._wait(
            "the node to be Ready",
            lambda: (
                running.kubectl(
                    "wait",
                    "--for=condition=Ready",
                    f"node/{NODE_NAME}",
                    "--timeout=2s",
                    check=False,
                ).returncode
                == 0
            ),
            "kubelet",
        )
        timings.mark("node Ready")
        self._wait(
            "the default ServiceAccount",
            lambda: (
                running.kubectl("get", "serviceaccount", "default", check=False).returncode == 0
            ),
        )
        running.apply(coredns_manifests())
        self._wait(
            "CoreDNS to answer for the kubernetes Service",
            lambda: (
                network.resolve(DNS_SERVICE_IP, "kubernetes.default.svc.cluster.local")
                == [API_SERVICE_IP]
            ),
        )
        timings.mark("DNS answering")
        (layout.root / "timings.json").write_text(json.dumps(timings.marks, indent=2))
        return self._running(timings)

    def down(self) -> host.Leftovers:
        """Stop every process and remove every trace; raise NodeError if something is left."""
        roots = self.previous_roots()
        left = host.clean(roots, self.plan)
        host.Sysctls(SAVED_SYSCTLS).restore()
        for root in roots:
            for stale in ("pids", "var", "gitops"):
                shutil.rmtree(root / stale, ignore_errors=True)
        RECORD.unlink(missing_ok=True)
        if not left.empty():
            raise NodeError(f"the node left traces on this machine:\n{left.describe()}")
        return left

    def leftovers(self) -> host.Leftovers:
        """Every trace of a node on this machine right now."""
        return host.leftovers(self.previous_roots(), self.plan)


def start_process(
    layout: Layout, name: str, argv: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a node process in its own session (it outlives us), logging to logs/NAME.log.

    `down()` finds it again by its program's path under the node's root, so only programs
    installed in the node's bin/ and named in `host.NODE_PROGRAMS` may be started this way.
    """
    with (layout.logs / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    (layout.pids / name).write_text(f"{process.pid}\n")
    (layout.pids / f"{name}.argv").write_text(json.dumps({"argv": list(argv), "env": env}))
    return process


def install_program(layout: Layout, source: Path) -> Path:
    """Copy a program into the node's bin/, where `down()` finds what runs from it."""
    target = layout.bin / source.name
    target.unlink(missing_ok=True)
    shutil.copy2(source, target)
    return target


def end_processes(layout: Layout, names: Sequence[str]) -> None:
    """End the node processes `names` (SIGTERM, then SIGKILL) and forget their pid files."""
    pid_files = [layout.pids / name for name in names]
    pids = [int(f.read_text()) for f in pid_files if f.exists()]
    host.signal_and_wait(host.signal_and_wait(pids, signal.SIGTERM, 10.0), signal.SIGKILL, 3.0)
    for pid_file in pid_files:
        pid_file.unlink(missing_ok=True)


def listening(port: int) -> Callable[[], bool]:
    """A readiness check: something accepts connections on 127.0.0.1:`port`."""

    def ready() -> bool:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True

    return ready


def succeeds(*argv: str) -> Callable[[], bool]:
    """A readiness check: the command exits 0 within 10 s."""
    return lambda: (
        subprocess.run(list(argv), capture_output=True, timeout=10, check=False).returncode == 0
    )


def _part_answers(layout: Layout, name: str) -> Callable[[], bool]:
    """How a restarted part of the node shows it serves again."""
    if name == "containerd":
        return succeeds("ctr", "version")
    if name == "etcd":
        argv = json.loads((layout.pids / "etcd.argv").read_text())["argv"]
        [urls] = [a.partition("=")[2] for a in argv if a.startswith("--listen-client-urls=")]
        return lambda: launcher.probe(f"{urls}/health", None)
    if name == "kube-apiserver":
        kubectl = [str(layout.bin / "kubectl"), f"--kubeconfig={layout.kubeconfig}"]
        return succeeds(*kubectl, "get", "--raw", "/readyz")
    return lambda: launcher.probe(f"http://127.0.0.1:{KUBELET_HEALTHZ_PORT}/healthz", None)


def stop_parts(root: Path, names: Sequence[str]) -> None:
    """Stop these parts of the running node, in this order, as a node upgrade or a crash
    would: SIGTERM, then SIGKILL after `STOP_GRACE_S`. What they run (pods, shims) goes on."""
    layout = Layout(root.resolve())
    for name in names:
        pid = int((layout.pids / name).read_text())
        if host.signal_and_wait([pid], signal.SIGTERM, STOP_GRACE_S):
            host.signal_and_wait([pid], signal.SIGKILL, STOP_GRACE_S)


def start_parts(root: Path, names: Sequence[str]) -> None:
    """Start stopped parts again, in this order, each with the command line it first ran with;
    return once each serves again.

    A part that exits before it serves is started again after `RESTART_DELAY_S`, as a node's
    service manager does: a kubelet started right after containerd exits at once while
    containerd's CRI server still initialises ("server is not initialized yet").
    """
    layout = Layout(root.resolve())
    for name in names:
        recorded = json.loads((layout.pids / f"{name}.argv").read_text())
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            process = start_process(layout, name, recorded["argv"], recorded["env"])
            try:
                wait_started(
                    layout, f"{name} to serve again", _part_answers(layout, name), name, process
                )
                break
            except NodeError:
                if process.poll() is None or time.monotonic() > deadline:
                    raise
                time.sleep(RESTART_DELAY_S)


def wait_started(
    layout: Layout,
    what: str,
    ready: Callable[[], bool],
    name: str | None = None,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `ready()` until it holds; fail at once, with its log, if the node process `name`
    (started as `process`) exits first, and at `START_TIMEOUT_S` otherwise."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise NodeError(
                f"{name} exited ({process.returncode}) before {what}:\n"
                f"{log_tail(layout.logs / f'{name}.log')}"
            )
        try:
            if ready():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.2)
    raise NodeError(f"timed out after {START_TIMEOUT_S:.0f}s waiting for {what}")


def recorded_root() -> Path | None:
    """The state directory of the node this machine last started and has not stopped."""
    if not RECORD.exists():
        return None
    return Path(json.loads(RECORD.read_text())["root"])


def read_running(root: Path) -> RunningNode | None:
    """The node running from `root`, if the record says so and its API answers."""
    layout = Layout(root.resolve())
    if recorded_root() != layout.root or not layout.kubeconfig.exists():
        return None
    record = json.loads(RECORD.read_text())
    timings_file = layout.root / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    running = RunningNode(layout, NetworkPlan(**record["plan"]), timings)
    if running.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode != 0:
        return None
    return running
