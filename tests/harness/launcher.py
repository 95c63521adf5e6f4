"""Run a real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) locally.

The binaries come from `tests/harness/build.sh` (`make binaries`). A supervisor process owns the
three servers: it is the leader of its own session and process group, starts etcd, then
kube-apiserver (client-certificate authentication, RBAC, service-account tokens), installs the
given CRDs, then kube-controller-manager (garbage collector, namespaces, service accounts and
their tokens, Jobs), writes `state.json` when everything is ready, and on SIGTERM stops the
servers in reverse order. The same supervisor serves the pytest fixtures (it also stops when the
test process dies) and `cluster.py up` (it outlives the command).

Layout of a run directory: `pki/` keys and certificates, `etcd/` data, `logs/*.log`,
`kubeconfig` (admin, group system:masters), `state.json` (supervisor pid, server URL).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BIN_DIR = REPO_ROOT / ".cluster" / "bin"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "katib-validate")
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
KCM_CONTROLLERS = (
    "garbagecollector",
    "namespace",
    "serviceaccount",
    "serviceaccount-token",
    "clusterrole-aggregation",
    "root-ca-cert-publisher",
    "job",  # its FailedCreate Events: a trial pod the namespace refuses
)


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached or stopped; the message says why."""


def binaries_dir(bin_dir: Path | None = None) -> Path:
    """Return the directory holding every control-plane binary, or explain how to build them."""
    directory = bin_dir or Path(os.environ.get("MNIST_TUNING_BIN_DIR", DEFAULT_BIN_DIR))
    missing = [name for name in BINARIES if not os.access(directory / name, os.X_OK)]
    if missing:
        raise ControlPlaneError(
            f"missing control-plane binaries in {directory}: {', '.join(missing)}; "
            "run `make binaries` (it builds them from the Go module proxy, cached afterwards)"
        )
    return directory


# --- keys, certificates, kubeconfigs ---------------------------------------------------------


def pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """The key as unencrypted PKCS#8 PEM, the form every Kubernetes component reads."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    sans: Sequence[x509.GeneralName] = (),
) -> x509.Certificate:
    """A certificate for `key`, signed by `issuer` (self-signed when None), valid for a week."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signer = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(signer, hashes.SHA256())


def x509_name(common_name: str, organization: str | None = None) -> x509.Name:
    """CN (the user, to the API server) and optional O (its group)."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


@dataclass(frozen=True)
class Pki:
    """Paths of the files the servers and clients need."""

    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    sa_public: Path
    sa_private: Path
    clients: dict[str, tuple[Path, Path]]


def write_pki(directory: Path, clients: dict[str, tuple[str, str]]) -> Pki:
    """Write a throw-away CA, a loopback serving cert, client certs and a service-account key.

    `clients` maps a file stem to (user name, group): the cert's CN and O, which the apiserver
    reads as the user and its group.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509_name("mnist-tuning-test-ca", "mnist-tuning")
    ca = certificate(ca_name, ca_key, None, ca=True)
    written: dict[str, Path] = {}

    def write(stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        written[f"{stem}.crt"] = directory / f"{stem}.crt"
        written[f"{stem}.key"] = directory / f"{stem}.key"
        written[f"{stem}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        written[f"{stem}.key"].write_bytes(pem_key(key))
        written[f"{stem}.key"].chmod(0o600)

    write("ca", ca, ca_key)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    serving = certificate(
        x509_name("localhost"),
        serving_key,
        (ca_name, ca_key),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )
    write("apiserver", serving, serving_key)
    for stem, (user, group) in clients.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = certificate(
            x509_name(user, group), key, (ca_name, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
        )
        write(stem, cert, key)
    write_service_account_key(directory)
    return Pki(
        ca_cert=written["ca.crt"],
        serving_cert=written["apiserver.crt"],
        serving_key=written["apiserver.key"],
        sa_public=directory / "sa.pub",
        sa_private=directory / "sa.key",
        clients={stem: (written[f"{stem}.crt"], written[f"{stem}.key"]) for stem in clients},
    )


def write_service_account_key(directory: Path) -> None:
    """sa.key and sa.pub: the RSA pair the API server signs and checks tokens with."""
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "sa.key").write_bytes(pem_key(sa_key))
    (directory / "sa.key").chmod(0o600)
    (directory / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def b64(path: Path) -> str:
    """The file's bytes in base64, as kubeconfigs embed them."""
    return base64.b64encode(path.read_bytes()).decode()


def kubeconfig_text(server: str, ca_cert: Path, user: str, credentials: dict[str, str]) -> str:
    """Return a one-context kubeconfig for `server`; `credentials` is the kubeconfig user entry."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "mnist-tuning",
                "cluster": {"server": server, "certificate-authority-data": b64(ca_cert)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "mnist-tuning", "user": user}}],
        "current-context": user,
    }
    return yaml.safe_dump(config, sort_keys=False)


def client_cert_credentials(cert: Path, key: Path) -> dict[str, str]:
    """Return a kubeconfig user entry that authenticates with a client certificate."""
    return {"client-certificate-data": b64(cert), "client-key-data": b64(key)}


# --- processes ---------------------------------------------------------------------------------


def free_port() -> int:
    """Return a loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    """Return the last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def probe(url: str, context: ssl.SSLContext | None) -> bool:
    """True when GET `url` answers 200; False on any error or other status."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """One server process, its log file, and how to wait for it."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def wait_until(self, ready: Callable[[], bool], what: str, deadline: float) -> None:
        """Poll `ready()` until true; fail early, with the log, if the process exits."""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ControlPlaneError(
                    f"{self.name} exited with status {self.process.returncode} before {what}; "
                    f"last lines of {self.log}:\n{log_tail(self.log)}"
                )
            if ready():
                return
            time.sleep(0.1)
        raise ControlPlaneError(
            f"{self.name} not {what} after {START_TIMEOUT_S:.0f}s; "
            f"last lines of {self.log}:\n{log_tail(self.log)}"
        )

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for(
    what: str, condition: Callable[[], bool], timeout: float = 120.0, every: float = 0.5
) -> None:
    """Poll `condition` every `every` seconds until it holds; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def kubectl(
    bin_dir: Path,
    kubeconfig: Path,
    *args: str,
    input_text: str | None = None,
    check: bool = True,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl against the control plane; raise with its stderr when `check` and it fails."""
    result = subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        input=input_text,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise ControlPlaneError(
            f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def kustomize(directory: Path, bin_dir: Path = DEFAULT_BIN_DIR) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize DIRECTORY` renders (no cluster needed)."""
    out = subprocess.run(
        [str(bin_dir / "kubectl"), "kustomize", str(directory)],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout  # fmt: skip
    return [doc for doc in yaml.safe_load_all(out) if doc]


def install_crds(bin_dir: Path, kubeconfig: Path, crd_files: Sequence[Path]) -> None:
    """Apply CRD manifests server-side and wait until every one is established."""
    if not crd_files:
        return
    args = ["apply", "--server-side", "--force-conflicts"]
    for path in crd_files:
        args += ["-f", str(path)]
    names = kubectl(bin_dir, kubeconfig, *args, "-o", "name").stdout.split()
    kubectl(bin_dir, kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", *names)


class Supervisor:
    """Starts and stops etcd, kube-apiserver and kube-controller-manager in one run directory."""

    def __init__(self, run_dir: Path, bin_dir: Path) -> None:
        self.run_dir = run_dir
        self.bin_dir = bin_dir
        self.servers: list[Server] = []
        self.kubeconfig = run_dir / "kubeconfig"
        self.server_url = ""

    def start(self, crd_files: Sequence[Path]) -> None:
        """Start everything and return once the API serves, the CRDs are established and
        the controller manager has created the default ServiceAccount."""
        deadline = time.monotonic() + START_TIMEOUT_S
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        pki = write_pki(
            self.run_dir / "pki",
            {
                "admin": ("admin", "system:masters"),
                "controller-manager": ("system:kube-controller-manager", "system:masters"),
            },
        )
        etcd_url = f"http://127.0.0.1:{free_port()}"
        etcd = Server(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{free_port()}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            logs,
        )
        self.servers.append(etcd)
        etcd.wait_until(lambda: probe(f"{etcd_url}/health", None), "healthy", deadline)

        port = free_port()
        self.server_url = f"https://127.0.0.1:{port}"
        apiserver = Server(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--secure-port={port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--cert-dir={self.run_dir / 'pki'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=198.19.0.0/24",
                f"--service-account-issuer={self.server_url}",
                f"--service-account-key-file={pki.sa_public}",
                f"--service-account-signing-key-file={pki.sa_private}",
                "--endpoint-reconciler-type=none",
                "--allow-privileged=true",
                "--profiling=false",
            ],
            logs,
        )
        self.servers.append(apiserver)
        admin_cert, admin_key = pki.clients["admin"]
        self.kubeconfig.write_text(
            kubeconfig_text(
                self.server_url,
                pki.ca_cert,
                "admin",
                client_cert_credentials(admin_cert, admin_key),
            )
        )
        self.kubeconfig.chmod(0o600)
        tls = ssl.create_default_context(cafile=str(pki.ca_cert))
        tls.load_cert_chain(str(admin_cert), str(admin_key))
        apiserver.wait_until(
            lambda: (
                probe(f"{self.server_url}/readyz", tls)
                and probe(f"{self.server_url}/api/v1/namespaces/default", tls)
            ),
            "ready",
            deadline,
        )
        # CRDs before the controller manager, so its garbage collector discovers them at once.
        install_crds(self.bin_dir, self.kubeconfig, crd_files)

        kcm_cert, kcm_key = pki.clients["controller-manager"]
        kcm_kubeconfig = self.run_dir / "controller-manager.kubeconfig"
        kcm_kubeconfig.write_text(
            kubeconfig_text(
                self.server_url,
                pki.ca_cert,
                "controller-manager",
                client_cert_credentials(kcm_cert, kcm_key),
            )
        )
        controller_manager = Server(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kcm_kubeconfig}",
                "--leader-elect=false",
                "--secure-port=0",
                f"--controllers={','.join(KCM_CONTROLLERS)}",
                f"--service-account-private-key-file={pki.sa_private}",
                f"--root-ca-file={pki.ca_cert}",
                "--use-service-account-credentials=false",
            ],
            logs,
        )
        self.servers.append(controller_manager)
        controller_manager.wait_until(
            lambda: probe(
                f"{self.server_url}/api/v1/namespaces/default/serviceaccounts/default", tls
            ),
            "creating the default ServiceAccount",
            deadline,
        )

    def stop(self) -> None:
        """Stop the servers in reverse start order."""
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def died(self) -> Server | None:
        """Return a server that exited on its own, if any."""
        return next((s for s in self.servers if s.process.poll() is not None), None)


# --- the supervisor process and its clients ---------------------------------------------------


def _state_path(run_dir: Path) -> Path:
    return run_dir / "state.json"


def _serve(run_dir: Path, bin_dir: Path, crd_files: list[Path], parent: int | None) -> int:
    """Body of the supervisor process: start, report readiness in state.json, wait, stop."""
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    supervisor = Supervisor(run_dir, bin_dir)
    status = 0
    try:
        supervisor.start(crd_files)
        state = {
            "pid": os.getpid(),
            "server": supervisor.server_url,
            "kubeconfig": str(supervisor.kubeconfig),
            "bin_dir": str(bin_dir),
        }
        partial = run_dir / "state.json.partial"
        partial.write_text(json.dumps(state))
        partial.replace(_state_path(run_dir))
        while not stopping:
            dead = supervisor.died()
            if dead is not None:
                print(f"{dead.name} exited; last lines:\n{log_tail(dead.log)}", file=sys.stderr)
                status = 1
                break
            if parent is not None and os.getppid() != parent:
                break
            time.sleep(0.5)
    except ControlPlaneError as error:
        print(error, file=sys.stderr)
        status = 1
    finally:
        supervisor.stop()
        _state_path(run_dir).unlink(missing_ok=True)
    return status


@dataclass(frozen=True)
class ControlPlane:
    """A running control plane, as recorded by its supervisor, and ways to talk to it."""

    run_dir: Path
    pid: int
    server: str
    kubeconfig: Path
    bin_dir: Path

    def run_kubectl(
        self,
        *args: str,
        input_text: str | None = None,
        check: bool = True,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as admin (or with `kubeconfig`); raise on failure when `check`."""
        return kubectl(
            self.bin_dir, kubeconfig or self.kubeconfig, *args, input_text=input_text, check=check
        )

    def apply(self, manifest: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` of a YAML (or JSON) text."""
        return self.run_kubectl("apply", "-f", "-", input_text=manifest, check=check)

    def kubeconfig_for_service_account(
        self, namespace: str, name: str, duration: str = "2h"
    ) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount namespace/name.

        The token comes from the TokenRequest API (`kubectl create token`), so RBAC applies to
        it exactly as it would to a pod running under that ServiceAccount.
        """
        token = self.run_kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        path = self.run_dir / f"sa-{namespace}-{name}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{name}"
        ca_cert = self.run_dir / "pki" / "ca.crt"
        path.write_text(kubeconfig_text(self.server, ca_cert, user, {"token": token}))
        path.chmod(0o600)
        return path


def read_state(run_dir: Path) -> ControlPlane | None:
    """Return the running control plane of `run_dir`, or None when none runs there."""
    try:
        state = json.loads(_state_path(run_dir).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    try:
        os.kill(state["pid"], 0)
    except ProcessLookupError:
        return None
    return ControlPlane(
        run_dir=run_dir,
        pid=state["pid"],
        server=state["server"],
        kubeconfig=Path(state["kubeconfig"]),
        bin_dir=Path(state["bin_dir"]),
    )


def start(
    run_dir: Path, bin_dir: Path, crd_files: Sequence[Path], *, tie_to_this_process: bool
) -> ControlPlane:
    """Start a supervisor in its own session and wait until the control plane is ready.

    With `tie_to_this_process` the supervisor stops the servers when this process exits (for
    tests); without, the control plane outlives this process (for `make cluster`).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if read_state(run_dir) is not None:
        raise ControlPlaneError(f"a control plane already runs in {run_dir}; stop it first")
    _state_path(run_dir).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "etcd", ignore_errors=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    supervisor_log = run_dir / "logs" / "supervisor.log"
    argv = [sys.executable, str(Path(__file__).resolve()), "serve", "--dir", str(run_dir)]
    argv += ["--bin-dir", str(bin_dir)]
    if tie_to_this_process:
        argv += ["--parent", str(os.getpid())]
    argv += [str(path.resolve()) for path in crd_files]
    with supervisor_log.open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        running = read_state(run_dir)
        if running is not None:
            return running
        if process.poll() is not None:
            raise ControlPlaneError(
                f"the control plane did not start:\n{log_tail(supervisor_log)}\n"
                f"(server logs in {run_dir / 'logs'})"
            )
        time.sleep(0.1)
    stop(run_dir, process.pid)
    raise ControlPlaneError(f"the control plane did not start in time; logs in {run_dir / 'logs'}")


def stop(run_dir: Path, pid: int | None = None) -> bool:
    """Stop the control plane of `run_dir` and its whole process group; False if none ran."""
    if pid is None:
        running = read_state(run_dir)
        if running is None:
            return False
        pid = running.pid
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 3 * STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    # Anything left in the supervisor's group (it leads its own session) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _state_path(run_dir).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return finished == 0


@contextlib.contextmanager
def running_control_plane(
    run_dir: Path, bin_dir: Path, crd_files: Sequence[Path]
) -> Iterator[ControlPlane]:
    """A control plane for the duration of a `with` block (stops even if the block raises)."""
    running = start(run_dir, bin_dir, crd_files, tie_to_this_process=True)
    try:
        yield running
    finally:
        stop(run_dir, running.pid)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the supervisor process (`launcher.py serve`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the control plane in the foreground")
    serve.add_argument("--dir", type=Path, required=True)
    serve.add_argument("--bin-dir", type=Path, required=True)
    serve.add_argument("--parent", type=int, default=None)
    serve.add_argument("crds", type=Path, nargs="*")
    args = parser.parse_args(argv)
    return _serve(args.dir.resolve(), args.bin_dir.resolve(), args.crds, args.parent)


if __name__ == "__main__":
    sys.exit(main())
