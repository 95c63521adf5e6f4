"""A private registry on the node, as a user's registry is (the seed's DigitalOcean one): TLS
and a login.

The registry is distribution's own program (`build.sh node` compiles
`github.com/distribution/distribution/v3` from the module proxy). It serves HTTPS on a loopback
port, with a certificate of the node's CA, and basic auth from an htpasswd of one user whose
password every start makes anew: no credential of any real registry is anywhere. containerd
trusts the CA through its registry configuration (a hosts.toml for that host:port alone); the
kubelet gets the login from the pod's `imagePullSecrets`, as on any cluster.

Images go in with skopeo, from the OCI archives `node.builds` makes, their layers as they are:
containerd, which has those layers from the archive's import, then fetches only the manifest
and the config. (buildah pushes from its own storage: it would unpack the trainer's 3.2 GB
archive and gzip it again, minutes where this takes about half of one.)
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import yaml
from launcher import free_port

from node import host
from node.node import (
    RunningNode,
    end_processes,
    install_program,
    listening,
    start_process,
    wait_started,
)
from node.pki import tls_secret_material

PROCESS = "registry"
USER = "mnist-tuning"
REALM = "mnist-tuning node registry"
PACKAGES = {"skopeo": host.PACKAGES["skopeo"]}


@dataclass(frozen=True)
class Registry:
    """Where the registry listens, the login it asks for, and the CA its certificate has."""

    host: str  # 127.0.0.1:PORT
    user: str
    password: str
    ca: Path

    def push(self, archive: Path, repository: str, tag: str) -> str:
        """Copy the image in an OCI archive (one image) to `repository:tag`; its name here."""
        name = f"{self.host}/{repository}:{tag}"
        certs = self.ca.parent / "registry-client"
        certs.mkdir(exist_ok=True)
        (certs / "ca.crt").write_bytes(self.ca.read_bytes())
        host.ensure_packages(PACKAGES)
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-creds", f"{self.user}:{self.password}",
             "--dest-cert-dir", str(certs), f"oci-archive:{archive}", f"docker://{name}"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        return name


def config(port: int, storage: Path, cert: Path, key: Path, htpasswd: Path) -> str:
    """distribution's configuration: filesystem storage, TLS and htpasswd on loopback only."""
    return yaml.safe_dump(
        {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {
                "addr": f"127.0.0.1:{port}",
                "tls": {"certificate": str(cert), "key": str(key)},
            },
            "auth": {"htpasswd": {"realm": REALM, "path": str(htpasswd)}},
        },
        sort_keys=False,
    )


def containerd_hosts(registry_host: str, ca: Path) -> str:
    """containerd's hosts.toml for the registry: pull over TLS, trusting our CA."""
    return (
        f'server = "https://{registry_host}"\n'
        f'[host."https://{registry_host}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f'  ca = "{ca}"\n'
    )


def start(node: RunningNode, source_bin: Path) -> Registry:
    """The registry on a free loopback port, trusted by containerd; wait until it answers."""
    layout = node.layout
    port = free_port()
    registry_host = f"127.0.0.1:{port}"
    state = layout.var / "registry"
    state.mkdir(parents=True, exist_ok=True)
    cert, key = tls_secret_material(layout, "registry", ["localhost"], ["127.0.0.1"])
    password = secrets.token_urlsafe(24)
    htpasswd = state / "htpasswd"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    htpasswd.write_text(f"{USER}:{hashed}\n")
    htpasswd.chmod(0o600)
    settings = state / "config.yml"
    settings.write_text(config(port, state / "storage", cert, key, htpasswd))
    trust = layout.registry_hosts / registry_host
    trust.mkdir(parents=True, exist_ok=True)
    (trust / "hosts.toml").write_text(containerd_hosts(registry_host, layout.pki / "ca.crt"))
    program = install_program(layout, source_bin / "registry")
    process = start_process(layout, PROCESS, [str(program), "serve", str(settings)])
    wait_started(layout, "the registry to listen", listening(port), PROCESS, process)
    return Registry(registry_host, USER, password, layout.pki / "ca.crt")


def stop(node: RunningNode) -> None:
    """End the registry; what it stored goes with the node."""
    end_processes(node.layout, (PROCESS,))
