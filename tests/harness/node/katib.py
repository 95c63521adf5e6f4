"""Real Katib v0.19.0 on the node: its Go programs as local images, its own standalone install.

Katib's controller (with its real webhooks: Experiment validation, metrics-collector sidecar
injection), DB manager, file metrics collector and goptuna suggestion service are Go programs of
the `github.com/kubeflow/katib` module: `build.sh node` compiles them and this module wraps each
in an image named exactly as Katib's manifests and katib-config name it. Katib's hyperopt
optuna and skopt services, which serve `random`, `tpe`, `grid`, `multivariate-tpe` and
`bayesianoptimization`, and its `medianstop` early stopping are Python: our stand-in
(`katib_services`) serves them from images built here. The install is the module's own
`manifests/v1beta1/installs/katib-standalone`, with an overlay that changes only what an
offline single node needs (`OVERLAY_CHANGES`, also listed in docs/development.md).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import katib_services
import yaml
from katib_services import stubs
from launcher import REPO_ROOT, kustomize, wait_for
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from node import images
from node.builds import require_image_python
from node.node import TEST_USERLAND, NodeError, RunningNode, as_input, cache_dir

VERSION = "v0.19.0"
NAMESPACE = "kubeflow"
INJECTION_LABEL = "katib.kubeflow.org/metrics-collector-injection"
REGISTRY = "ghcr.io/kubeflow/katib"
# Image → (program in the node's bin/, working directory Katib's Dockerfile sets).
PROGRAMS: dict[str, tuple[str, str]] = {
    f"{REGISTRY}/katib-controller:{VERSION}": ("katib-controller", "/app"),
    f"{REGISTRY}/katib-db-manager:{VERSION}": ("katib-db-manager", "/app"),
    f"{REGISTRY}/file-metrics-collector:{VERSION}": ("file-metricscollector", "/app"),
    f"{REGISTRY}/suggestion-goptuna:{VERSION}": ("goptuna-suggestion", "/opt/katib"),
}
# Katib's Python suggestion services, hyperopt (`random`, `tpe`), optuna (`grid`,
# `multivariate-tpe`) and skopt (`bayesianoptimization`): our stand-in for all (katib_services).
SERVICES_IMAGE = f"localhost/mnist-tuning/katib-python-services:{VERSION}"
SERVED_BY_STAND_IN = ("random", "tpe", "grid", "multivariate-tpe", "bayesianoptimization")
# Katib's default suggestion memory limit is 100Mi; importing hyperopt with the scipy it runs
# on maps 112 MiB, skopt with scikit-learn 131 MiB: under the default the stand-in thrashed
# and never answered its readiness probe. Its entries get this limit instead.
SERVICES_MEMORY = "384Mi"
# Katib's medianstop early stopping service, Python too: the same stand-in, started for it.
EARLY_STOPPING_IMAGE = f"localhost/mnist-tuning/katib-python-earlystopping:{VERSION}"
SERVICES_ROOT = "/opt/katib-services"
# The stand-in's imports; the image gets them, and what they need, at the versions this venv
# runs (pyproject.toml's dev extra pins them), so the tests and the image run the same code.
SERVICES_REQUIREMENTS = (
    "grpcio",
    "grpcio-health-checking",
    "protobuf",
    "hyperopt",
    "optuna",
    "scikit-optimize",
)
DEPLOYMENTS = ("katib-controller", "katib-db-manager", "katib-mysql")
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
WEBHOOK_CONFIGURATION = "katib.kubeflow.org"
MARIADB_USERLAND = images.DebianUserland("bookworm", ("mariadb-server",))
# Katib's file metrics collector stops an early-stopped trial through gopsutil, which lists the
# trainer's children with `pgrep`: its image is alpine 3.15 (busybox's pgrep), ours Debian's
# minbase with procps.
COLLECTOR = "file-metricscollector"
COLLECTOR_USERLAND = images.DebianUserland("bookworm", ("procps",))
MYSQL_UID = 999
OVERLAY_CHANGES = (
    "the UI is left out (its front end is built with npm, not a Go program)",
    "katib-config serves `random`, `tpe`, `grid`, `multivariate-tpe` and `bayesianoptimization`, "
    "and `medianstop` early stopping, with our stand-in for Katib's hyperopt, optuna, skopt and "
    f"medianstop services (Python), its suggestion pods with a {SERVICES_MEMORY} memory limit",
    "the database is Debian's MariaDB in place of mysql:8.0.29, with the same environment",
    "a hostPath PersistentVolume for the katib-mysql claim (the node has no StorageClass)",
    "Katib's pod webhook leaves Katib's own pods alone, as deploy/katib makes it for users",
    "Katib's controller, DB manager and database request CPU, as deploy/katib makes them for users",
    "katib-config is deploy/katib's (injectSecurityContext on, restricted suggestion "
    "securityContexts), then with the stand-in's images as above",
)
# deploy/katib's changes to Katib's install, which users get too.
POD_WEBHOOK_PATCH = REPO_ROOT / "deploy" / "katib" / "pod-webhook.yaml"
RESOURCES_PATCH = REPO_ROOT / "deploy" / "katib" / "resources.yaml"
USERS_PATCHES = (POD_WEBHOOK_PATCH, RESOURCES_PATCH)  # applied as they are
KATIB_CONFIG_PATCH = REPO_ROOT / "deploy" / "katib" / "katib-config.yaml"

# The official mysql image's contract, as Katib's manifest uses it: MYSQL_ROOT_PASSWORD,
# MYSQL_DATABASE, `--datadir DIR`, run as uid 999, probes calling `mysql`/`mysqladmin`.
ENTRYPOINT = """#!/bin/bash
set -euo pipefail
datadir=/var/lib/mysql
while [ $# -gt 0 ]; do
  case "$1" in
    --datadir) datadir="$2"; shift 2 ;;
    --datadir=*) datadir="${1#*=}"; shift ;;
    *) echo "katib-mariadb: unsupported argument $1" >&2; exit 2 ;;
  esac
done
password="${MYSQL_ROOT_PASSWORD:-}"
if [ ! -d "$datadir/mysql" ]; then
  mkdir -p "$datadir"
  mariadb-install-db --datadir="$datadir" --auth-root-authentication-method=normal \\
    --skip-test-db > /dev/null
  mariadbd --datadir="$datadir" --bootstrap <<SQL
FLUSH PRIVILEGES;
ALTER USER 'root'@'localhost' IDENTIFIED BY '${password}';
CREATE USER 'root'@'%' IDENTIFIED BY '${password}';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE DATABASE IF NOT EXISTS \\`${MYSQL_DATABASE:-katib}\\`;
SQL
fi
exec mariadbd --datadir="$datadir"
"""
SERVER_CONFIG = """[client]
socket = /tmp/mysqld.sock
[mysqld]
socket = /tmp/mysqld.sock
pid-file = /tmp/mysqld.pid
bind-address = 0.0.0.0
port = 3306
skip-name-resolve
"""


def mariadb_image() -> str:
    """The MySQL-compatible image's name; its tag is the userland's cache key."""
    return f"localhost/mnist-tuning/katib-mariadb:bookworm-{MARIADB_USERLAND.key()}"


def _archives(source_bin: Path, work: Path, cache: Path, mirror: str) -> list[Path]:
    """OCI archives of Katib's four programs (the collector on a userland) and of the database,
    userlands cached in `cache` (made from `mirror`)."""
    archives = []
    for name, (program, workdir) in PROGRAMS.items():
        rootfs = images.static_rootfs(
            work / f"rootfs-{program}", {f"{workdir}/{program}": source_bin / program}
        )
        layer = work / f"{program}.layer.tar"
        images.write_layer(rootfs, layer)
        config = images.ImageConfig(entrypoint=[f"./{program}"], workdir=workdir)
        archives.append(work / f"{program}.oci.tar")
        userland = [COLLECTOR_USERLAND.layer(cache, mirror)] if program == COLLECTOR else []
        images.write_oci_archive([*userland, layer], name, config, archives[-1])
    base = MARIADB_USERLAND.layer(cache, mirror)
    extra = work / "rootfs-mariadb"
    shutil.rmtree(extra, ignore_errors=True)
    script = extra / "usr/local/bin/katib-mariadb"
    script.parent.mkdir(parents=True)
    script.write_text(ENTRYPOINT)
    script.chmod(0o755)
    config_file = extra / "etc/mysql/mariadb.conf.d/99-katib.cnf"
    config_file.parent.mkdir(parents=True)
    config_file.write_text(SERVER_CONFIG)
    config_file.chmod(0o644)
    layer = work / "mariadb-entrypoint.layer.tar"
    images.write_layer(extra, layer)
    archives.append(work / "mariadb.oci.tar")
    images.write_oci_archive(
        [base, layer],
        mariadb_image(),
        images.ImageConfig(entrypoint=["/usr/local/bin/katib-mariadb"], user=str(MYSQL_UID)),
        archives[-1],
    )
    return archives


def users_katib_config() -> str:
    """The katib-config deploy/katib installs: Katib's own, ready for `restricted` pods."""
    return str(yaml.safe_load(KATIB_CONFIG_PATCH.read_text())["data"]["katib-config.yaml"])


def katib_config(users: str) -> str:
    """deploy/katib's katib-config with Katib's Python-served algorithms served by our
    stand-in."""
    config = yaml.safe_load(users)
    for suggestion in config["runtime"]["suggestions"]:
        if suggestion["algorithmName"] in SERVED_BY_STAND_IN:
            suggestion["image"] = SERVICES_IMAGE
            suggestion["resources"] = {"limits": {"memory": SERVICES_MEMORY}}
    for early_stopping in config["runtime"]["earlyStoppings"]:
        if early_stopping["algorithmName"] == "medianstop":
            early_stopping["image"] = EARLY_STOPPING_IMAGE
    return str(yaml.safe_dump(config, sort_keys=False))


def installed_closure(names: Sequence[str]) -> list[str]:
    """`name==version` for `names` and everything they require, as installed in this venv."""
    pinned: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in pinned:
            continue
        distribution = importlib.metadata.distribution(name)
        pinned[name] = distribution.version
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return sorted(f"{name}=={version}" for name, version in pinned.items())


def _services_packages(cache: Path) -> Path:
    """A layer of the stand-in's Python packages (wheels from PyPI), built once per pin set."""
    require_image_python("the Katib services' packages")
    pins = installed_closure(SERVICES_REQUIREMENTS)
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:12]
    layer = cache / f"katib-services-packages-{key}.tar"
    if layer.exists():
        return layer
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        target = Path(scratch) / SERVICES_ROOT.lstrip("/") / "site-packages"
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile"]
        subprocess.run([*pip, "--only-binary=:all:", "--target", str(target), *pins], check=True)
        partial = layer.with_suffix(".partial")
        images.write_layer(Path(scratch), partial)
        partial.replace(layer)
    return layer


def services_archives(proto_dir: Path, work: Path, cache: Path, mirror: str) -> list[Path]:
    """The stand-in services' images: Debian's Python, its packages, our code; one runs the
    suggestion service, the other early stopping (Katib's config gives that one no command)."""
    base = TEST_USERLAND.layer(cache, mirror)
    packages = _services_packages(cache)
    code = work / "rootfs-katib-services"
    shutil.rmtree(code, ignore_errors=True)
    root = code / SERVICES_ROOT.lstrip("/")
    shutil.copytree(Path(katib_services.__file__).parent, root / "katib_services",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    stubs.generate(proto_dir, root)
    layer = work / "katib-services.layer.tar"
    images.write_layer(code, layer)
    archives = []
    for name, service in ((SERVICES_IMAGE, "suggestion"), (EARLY_STOPPING_IMAGE, "earlystopping")):
        config = images.ImageConfig(
            entrypoint=["python3", "-m", "katib_services"],
            cmd=[service],
            env={"PYTHONPATH": f"{SERVICES_ROOT}:{SERVICES_ROOT}/site-packages"},
            workdir=SERVICES_ROOT,
        )
        archives.append(work / f"katib-{service}.oci.tar")
        images.write_oci_archive([base, packages, layer], name, config, archives[-1])
    return archives


def proto_dir(cluster_bin: Path) -> Path:
    """Where build.sh node left Katib's gRPC API definition (beside the binaries)."""
    return cluster_bin.parent / "katib" / "proto"


def _delete(kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, str] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    version = "rbac.authorization.k8s.io/v1" if kind.startswith("Cluster") else "v1"
    if kind == "Deployment":
        version = "apps/v1"
    return {"apiVersion": version, "kind": kind, "metadata": metadata, "$patch": "delete"}


def write_overlay(manifests: Path, target: Path, volume: Path) -> Path:
    """A kustomization over Katib's own standalone install, with `OVERLAY_CHANGES` only."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(manifests, target / "v1beta1")
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    overlay = target / "offline-node"
    overlay.mkdir()
    (overlay / "katib-config.yaml").write_text(katib_config(users_katib_config()))
    volume_manifest = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": "katib-mysql"},
        "spec": {
            "capacity": {"storage": "10Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "hostPath": {"path": str(volume), "type": "Directory"},
            "claimRef": {"namespace": NAMESPACE, "name": "katib-mysql"},
        },
    }
    (overlay / "volume.yaml").write_text(yaml.safe_dump(volume_manifest))
    for patch in USERS_PATCHES:
        shutil.copyfile(patch, overlay / patch.name)
    removed = [
        _delete("Deployment", "katib-ui", NAMESPACE),
        _delete("Service", "katib-ui", NAMESPACE),
        _delete("ServiceAccount", "katib-ui", NAMESPACE),
        _delete("ClusterRole", "katib-ui"),
        _delete("ClusterRoleBinding", "katib-ui"),
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["../v1beta1/installs/katib-standalone", "volume.yaml"],
        "configMapGenerator": [
            {
                "name": "katib-config",
                "namespace": NAMESPACE,
                "behavior": "replace",
                "files": ["katib-config.yaml"],
                "options": {"disableNameSuffixHash": True},
            }
        ],
        "images": [
            {
                "name": "mysql",
                "newName": mariadb_image().rpartition(":")[0],
                "newTag": mariadb_image().rpartition(":")[2],
            }
        ],
        "patches": [
            *({"path": patch.name} for patch in USERS_PATCHES),
            *({"patch": yaml.safe_dump(doc)} for doc in removed),
        ],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return overlay


def import_images(node: RunningNode, source_bin: Path) -> None:
    """Katib's four programs and the database as images in the node's containerd."""
    missing = [p for p, _ in PROGRAMS.values() if not (source_bin / p).exists()]
    if missing:
        raise NodeError(
            f"Katib's programs are missing ({', '.join(missing)}); run `make node-binaries`"
        )
    work = node.layout.var / "katib-images"
    work.mkdir(parents=True, exist_ok=True)
    cache, mirror = cache_dir() / "images", images.debian_mirror()
    archives = [
        *_archives(source_bin, work, cache, mirror),
        *services_archives(proto_dir(source_bin), work, cache, mirror),
    ]
    for archive in archives:
        images.import_archive(["ctr"], archive)
    shutil.rmtree(work)


def database_volume(node: RunningNode) -> Path:
    """The host directory behind the katib-mysql PersistentVolume, owned by the database's uid."""
    volume = node.layout.var / "katib-mysql"
    volume.mkdir(parents=True, exist_ok=True)
    shutil.chown(volume, MYSQL_UID, MYSQL_UID)
    return volume


def install(node: RunningNode, source_bin: Path, manifests: Path) -> None:
    """Import Katib's images, apply the overlay (its webhooks last) and wait until every
    Deployment is Available and the controller's CA is in its webhooks."""
    if not manifests.is_dir():
        raise NodeError(f"Katib's manifests are missing ({manifests}); run `make node-binaries`")
    import_images(node, source_bin)
    overlay = write_overlay(manifests, node.layout.root / "katib", database_volume(node))
    documents = kustomize(overlay, node.layout.bin)
    # Katib's pod webhook (failurePolicy Fail) covers its own namespace: were its configurations
    # there before the ReplicaSets created Katib's pods, none could be created. Pods first.
    _apply(node, [doc for doc in documents if doc["kind"] not in WEBHOOK_KINDS])
    _wait_available(node)
    _apply(node, [doc for doc in documents if doc["kind"] in WEBHOOK_KINDS])
    wait_for("Katib's CA in its webhook configurations", lambda: _ca_injected(node), timeout=120)


def _apply(node: RunningNode, documents: list[dict[str, Any]]) -> None:
    # Where Argo CD installed Katib first (the gitops tier), the same manifests rendered by
    # another kustomize differ in a defaulted field or two: take them over.
    node.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                 input_text=as_input(documents), timeout=300)  # fmt: skip


def _ca_injected(node: RunningNode) -> bool:
    """Katib's controller has put its CA into every webhook of both configurations."""
    for kind in WEBHOOK_KINDS:
        found = node.kubectl("get", kind, WEBHOOK_CONFIGURATION, "-o", "json", check=False)
        if found.returncode != 0:
            return False
        webhooks = json.loads(found.stdout)["webhooks"]
        if not all(w["clientConfig"].get("caBundle") for w in webhooks):
            return False
    return True


def _wait_available(node: RunningNode) -> None:
    """Return once every Deployment of Katib has rolled out and its controller is Ready."""
    for deployment in DEPLOYMENTS:
        node.rollout(deployment, NAMESPACE)
    # Ready once its certificate is mounted and its webhook server has started.
    node.kubectl(
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "katib.kubeflow.org/component=controller",
        "-n",
        NAMESPACE,
        "--timeout=120s",
        timeout=140,
    )


def manifests_dir(cluster_bin: Path) -> Path:
    """Where build.sh node left the Katib module's manifests (beside the binaries)."""
    return cluster_bin.parent / "katib" / "manifests" / "v1beta1"


def trial_pods(node: RunningNode, namespace: str) -> list[dict[str, Any]]:
    """The pods of Katib's trials in `namespace`."""
    out = node.kubectl(
        "get", "pods", "-n", namespace, "-l", "katib.kubeflow.org/trial", "-o", "yaml"
    ).stdout
    return list(yaml.safe_load(out)["items"])
