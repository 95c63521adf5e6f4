"""What the node needs from the machine, and how to give it all back.

Three jobs, all as root: install the Debian packages the node runs on (`ensure_packages`), set
and later restore the kernel switches it flips (`Sysctls`), and find or remove every trace a
node leaves behind (`leftovers`, `clean`), whether it stopped cleanly or was killed with SIGKILL.
A trace is a process, a mount, a network namespace, a link, an iptables chain or a cgroup; the
same `leftovers()` that `clean()` must empty is what the teardown test asserts is empty.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from node.network import CHAIN_PREFIXES, CONTAINERD_CGROUP, SERVICE_ROUTE, NetworkPlan

# Debian package → a file it installs that the node runs.
PACKAGES: dict[str, str] = {
    "containerd": "/usr/bin/containerd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "iproute2": "/usr/sbin/ip",
    "debootstrap": "/usr/sbin/debootstrap",
    # Builds our Dockerfiles without a daemon (node.builds).
    "buildah": "/usr/bin/buildah",
    # Copies an image's OCI archive into the node's private registry, layers as they are.
    "skopeo": "/usr/bin/skopeo",
    # Argo CD's cache (node.gitops runs its own on loopback, never the system service).
    "redis-server": "/usr/bin/redis-server",
    "mount": "/usr/bin/umount",
}
# The Kubernetes programs a node runs from its own bin/.
KUBERNETES_PROGRAMS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
)
# Programs of a node: ours (in the node's bin/: Kubernetes, and Argo CD with its Redis and our Git
# server) and containerd's shims. A process running one of these after the node stopped is debris.
GITOPS_PROGRAMS = ("argocd", "redis-server", "gitserver")
NODE_PROGRAMS = (
    *KUBERNETES_PROGRAMS,
    *GITOPS_PROGRAMS,
    "registry",  # node.registry: the private registry
    "containerd",
    "containerd-shim-runc-v2",
)
# Debian's convention for "start no service while installing": invoke-rc.d asks this script.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
CONTAINERD_STATE = Path("/run/containerd")
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
KUBEPODS = "kubepods"
# The kubelet links container logs here whatever its root directory; the CNI library caches
# each attachment's result here, named after the network (ours, and the loopback network
# containerd adds to every sandbox).
CONTAINER_LOGS = Path("/var/log/containers")
CNI_RESULTS = Path("/var/lib/cni/results")
CNI_NETWORK = "mnist-node"
CNI_NETWORKS = (CNI_NETWORK, "cni-loopback")
SYSCTLS = ("net.ipv4.ip_forward", "net.bridge.bridge-nf-call-iptables")


class HostError(RuntimeError):
    """The machine cannot host the node as it is; the message says what to do."""


def require_root(what: str) -> None:
    """Fail with one line naming the command when not root."""
    if os.geteuid() != 0:
        raise HostError(f"{what} needs root (containerd, kubelet, iptables): run `sudo {what}`")


def run(argv: Sequence[str], *, check: bool = True, input_text: str | None = None) -> str:
    """Run a host command; its stdout, or a HostError with its stderr."""
    result = subprocess.run(
        list(argv), input=input_text, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        raise HostError(f"`{' '.join(argv)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def missing_packages(packages: dict[str, str] = PACKAGES) -> list[str]:
    """The packages whose marker file is not on this machine."""
    return [name for name, marker in packages.items() if not Path(marker).exists()]


def ensure_packages(packages: dict[str, str] = PACKAGES) -> list[str]:
    """Install the missing packages with apt-get (one `update` first); return what it installed."""
    missing = missing_packages(packages)
    if not missing:
        return []
    require_root("apt-get install " + " ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with no_services_started():
        for argv in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        ):
            result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise HostError(f"`{' '.join(argv)}` failed: {result.stderr.strip()[-2000:]}")
    still = missing_packages(packages)
    if still:
        raise HostError(f"apt-get installed {missing} but these are still missing: {still}")
    return missing


@contextlib.contextmanager
def no_services_started() -> Iterator[None]:
    """While installing, refuse every package's request to start its service (redis-server's,
    containerd's): the node starts what it needs itself, as its own processes."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text(
        "#!/bin/sh\n# the mnist-tuning node starts its own processes\nexit 101\n"
    )
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


@dataclass
class Sysctls:
    """Kernel switches the node turns on, saved so that teardown restores what was there."""

    saved_to: Path

    def enable(self) -> None:
        """Save the current values (once per node run), then turn each switch on."""
        if not self.saved_to.exists():
            values = {name: _sysctl_path(name).read_text().strip() for name in SYSCTLS}
            self.saved_to.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        for name in SYSCTLS:
            _sysctl_path(name).write_text("1\n")

    def saved(self) -> dict[str, str]:
        """The values saved by the node run that has not been torn down yet, if any."""
        if not self.saved_to.exists():
            return {}
        lines = self.saved_to.read_text().splitlines()
        return {name: value for name, _, value in (line.partition("=") for line in lines)}

    def original(self, name: str) -> str:
        """The machine's value before any node: saved by a run that was killed, else current."""
        return self.saved().get(name) or _sysctl_path(name).read_text().strip()

    def restore(self) -> None:
        """Write back the saved values and forget them."""
        for name, value in self.saved().items():
            _sysctl_path(name).write_text(f"{value}\n")
        self.saved_to.unlink(missing_ok=True)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


# --- traces ------------------------------------------------------------------------------------


@dataclass
class Leftovers:
    """Every trace of a node on this machine; empty after a clean teardown."""

    processes: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    iptables: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        """True when nothing of a node is left."""
        return not any(vars(self).values())

    def describe(self) -> str:
        """One line per kind of trace that is left."""
        return "\n".join(
            f"{kind}: {', '.join(items)}" for kind, items in vars(self).items() if items
        )


def node_processes(state_dirs: Iterable[Path]) -> dict[int, str]:
    """pid → command line of every running node program (ours by path, or containerd's)."""
    roots = [str(d.resolve()) for d in state_dirs]
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            exe = os.readlink(proc / "exe")
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        program = Path(exe.removesuffix(" (deleted)")).name
        ours = any(exe.startswith(root + "/") for root in roots)
        if program in NODE_PROGRAMS and (ours or program.startswith("containerd")):
            found[int(proc.name)] = " ".join(a.decode(errors="replace") for a in argv if a)
    return found


def node_mounts(state_dirs: Iterable[Path]) -> list[str]:
    """Mount points below the state directories, containerd's state and /run/netns."""
    prefixes = [str(d.resolve()) + "/" for d in state_dirs]
    prefixes += [f"{CONTAINERD_STATE}/", f"{NETNS_DIR}/"]
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if any((point + "/").startswith(prefix) for prefix in prefixes):
            points.append(point)
    return points


def node_links(plan: NetworkPlan) -> list[str]:
    """The bridge and the veths on it."""
    output = run(["ip", "-o", "link", "show"], check=False)
    names = [line.split(":")[1].strip().split("@")[0] for line in output.splitlines()]
    ours = {plan.bridge}
    bridged = run(["ip", "-o", "link", "show", "master", plan.bridge], check=False)
    ours |= {line.split(":")[1].strip().split("@")[0] for line in bridged.splitlines()}
    return [name for name in names if name in ours]


def node_routes() -> list[str]:
    """The route that keeps the service range on this machine, if it is there."""
    return run(["ip", "route", "show", *SERVICE_ROUTE], check=False).splitlines()


def node_files(state_dirs: Iterable[Path]) -> list[str]:
    """Files the kubelet and the CNI plugins write outside the state directory."""
    roots = [str(d.resolve()) for d in state_dirs]
    files = [str(p) for net in CNI_NETWORKS for p in CNI_RESULTS.glob(f"{net}-*")]
    if CONTAINER_LOGS.is_dir():
        for link in CONTAINER_LOGS.iterdir():
            if link.is_symlink() and os.readlink(link).startswith(tuple(roots)):
                files.append(str(link))
    return files


def node_chains() -> list[str]:
    """iptables chains of kube-proxy (KUBE-*), CNI (CNI-*) and our guard, as table/chain."""
    chains = []
    for table in ("filter", "nat", "mangle"):
        for line in run(["iptables-save", "-t", table], check=False).splitlines():
            if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
                chains.append(f"{table}/{line[1:].split()[0]}")
    return chains


def unified_hierarchy(mounts: str) -> Path:
    """Where the unified (v2) cgroup hierarchy is mounted, from /proc/self/mounts."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            return Path(fields[1])
    raise HostError(
        "no cgroup2 (unified) hierarchy is mounted, and the node's guard knows containerd's "
        "packets by its cgroup there: `mkdir -p /sys/fs/cgroup/unified && "
        "mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )


def containerd_cgroup() -> Path:
    """The cgroup containerd (and so its shims) runs in: `network.guard_rules` matches it."""
    return unified_hierarchy(Path("/proc/self/mounts").read_text()) / CONTAINERD_CGROUP


def in_cgroup(cgroup: Path, argv: Sequence[str]) -> list[str]:
    """`argv` started inside `cgroup`, before it can open a socket (the shell joins, then execs)."""
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup), *argv]


def container_pids(container_id: str) -> list[int]:
    """The processes of one of the kubelet's containers, found on the host by the cgroup the
    container runs in (named after its id): they answer even while the kubelet, containerd or
    the API server is stopped."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if container_id in (entry / "cgroup").read_text():
                    pids.append(int(entry.name))
    return pids


def kubepods_cgroups() -> list[Path]:
    """The kubelet's `kubepods` cgroup in each v1 hierarchy and in the unified one."""
    return [path for path in sorted(CGROUP_ROOT.glob(f"*/{KUBEPODS}")) if path.is_dir()]


def node_cgroups() -> list[str]:
    """Every cgroup of a node: the kubelet's and containerd's."""
    return [str(p) for p in [*kubepods_cgroups(), containerd_cgroup()] if p.is_dir()]


def leftovers(state_dirs: Iterable[Path], plan: NetworkPlan) -> Leftovers:
    """Every trace of a node on this machine right now."""
    dirs = list(state_dirs)
    netns = [p.name for p in NETNS_DIR.glob("cni-*")] if NETNS_DIR.is_dir() else []
    return Leftovers(
        processes=[f"{pid} {argv}" for pid, argv in sorted(node_processes(dirs).items())],
        mounts=node_mounts(dirs),
        netns=netns,
        links=node_links(plan),
        routes=node_routes(),
        files=node_files(dirs),
        iptables=node_chains(),
        cgroups=node_cgroups(),
    )


def kill_processes(state_dirs: Iterable[Path], grace_s: float = 3.0) -> None:
    """SIGTERM every node program, then SIGKILL what is still there after `grace_s`."""
    dirs = list(state_dirs)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        signal_and_wait(node_processes(dirs), sig, grace_s)


def signal_and_wait(pids: Iterable[int], sig: signal.Signals, grace_s: float) -> list[int]:
    """Send `sig` to `pids`; wait up to `grace_s` for them to end; the pids still running."""
    left = list(pids)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace_s
    while left and time.monotonic() < deadline:
        left = [pid for pid in left if running(pid)]
        time.sleep(0.1)
    return [pid for pid in left if running(pid)]


def running(pid: int) -> bool:
    """Whether `pid` still runs: an exited child its parent has not reaped yet (a zombie, as
    the node's processes are in the process that started them) has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _cgroup_tree(hierarchy: str | Path) -> list[Path]:
    """A cgroup and every cgroup below it, deepest first.

    os.walk skips directories that vanish while it reads (the kubelet may still be removing
    pod cgroups), where Path.rglob raises FileNotFoundError.
    """
    return [Path(top) for top, _, _ in os.walk(hierarchy, topdown=False)]


def _kill_cgroup_members() -> None:
    """SIGKILL every process left in a kubepods cgroup: containers whose shim is gone."""
    for hierarchy in kubepods_cgroups():
        for cgroup in _cgroup_tree(hierarchy):
            try:
                pids = (cgroup / "cgroup.procs").read_text().split()
            except OSError:  # being removed: ENOENT, or ENODEV once the kernel let it go
                continue
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def _remove_cgroups() -> None:
    """rmdir every cgroup of the node, deepest first (empty once their processes died)."""
    deadline = time.monotonic() + 10
    while node_cgroups() and time.monotonic() < deadline:
        for hierarchy in node_cgroups():
            for directory in _cgroup_tree(hierarchy):
                with contextlib.suppress(OSError):
                    directory.rmdir()
        time.sleep(0.1)


def _remove_chains() -> None:
    """Drop every KUBE-*/CNI-*/guard chain and every rule that names one, leaving the rest."""
    for table in ("filter", "nat", "mangle"):
        saved = run(["iptables-save", "-t", table], check=False)
        if not any(prefix in saved for prefix in CHAIN_PREFIXES):
            continue
        kept = [line for line in saved.splitlines() if not any(p in line for p in CHAIN_PREFIXES)]
        run(["iptables-restore", "-T", table], input_text="\n".join(kept) + "\n")


def clean(state_dirs: Iterable[Path], plan: NetworkPlan) -> Leftovers:
    """Remove every trace of a node (processes first, then what they held); return what is left."""
    dirs = list(state_dirs)
    # Containers first: their shims then exit on SIGTERM instead of waiting for them.
    _kill_cgroup_members()
    kill_processes(dirs)
    _kill_cgroup_members()
    for point in sorted(node_mounts(dirs), key=len, reverse=True):
        run(["umount", "-l", point], check=False)
    if NETNS_DIR.is_dir():
        for namespace in NETNS_DIR.glob("cni-*"):
            with contextlib.suppress(OSError):
                namespace.unlink()
    shutil.rmtree(CONTAINERD_STATE, ignore_errors=True)
    for link in node_links(plan):
        run(["ip", "link", "delete", link], check=False)
    if node_routes():
        run(["ip", "route", "del", *SERVICE_ROUTE])
    for path in node_files(dirs):
        Path(path).unlink(missing_ok=True)
    for folder in (CONTAINER_LOGS, CNI_RESULTS, CNI_RESULTS.parent):
        with contextlib.suppress(OSError):
            folder.rmdir()
    _remove_chains()
    _remove_cgroups()
    return leftovers(dirs, plan)
