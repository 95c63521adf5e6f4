"""Real Katib v0.19.0 on the node: its Go programs as local images, its own standalone install.

Katib's controller (with its real webhooks: Experiment validation, metrics-collector sidecar
injection), DB manager, file metrics collector and goptuna suggestion service are Go programs of
the `github.com/kubeflow/katib` module: `build.sh node` compiles them and this module wraps each
in an image named exactly as Katib's manifests and katib-config name it. The install is the
module's own `manifests/v1beta1/installs/katib-standalone`, with an overlay that changes only
what an offline single node needs (`OVERLAY_CHANGES`, also listed in the README).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from node import images
from node.node import NodeError, RunningNode, cache_dir

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
GOPTUNA_IMAGE = f"{REGISTRY}/suggestion-goptuna:{VERSION}"
# Algorithms whose standalone service is Python (hyperopt): goptuna implements both, seeded.
SERVED_BY_GOPTUNA = ("random", "tpe")
DEPLOYMENTS = ("katib-controller", "katib-db-manager", "katib-mysql")
MARIADB_USERLAND = images.DebianUserland("bookworm", ("mariadb-server",))
MYSQL_UID = 999
OVERLAY_CHANGES = (
    "the UI is left out (its front end is built with npm, not a Go program)",
    "katib-config serves `random` and `tpe` with the goptuna image (hyperopt is Python)",
    "the database is Debian's MariaDB in place of mysql:8.0.29, with the same environment",
    "a hostPath PersistentVolume for the katib-mysql claim (the node has no StorageClass)",
)

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


def _archives(source_bin: Path, work: Path) -> list[Path]:
    """OCI archives of Katib's four programs and of the database."""
    archives = []
    for name, (program, workdir) in PROGRAMS.items():
        rootfs = images.static_rootfs(
            work / f"rootfs-{program}", {f"{workdir}/{program}": source_bin / program}
        )
        layer = work / f"{program}.layer.tar"
        images.write_layer(rootfs, layer)
        config = images.ImageConfig(entrypoint=[f"./{program}"], workdir=workdir)
        archives.append(work / f"{program}.oci.tar")
        images.write_oci_archive([layer], name, config, archives[-1])
    base = MARIADB_USERLAND.layer(cache_dir() / "images", images.debian_mirror())
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


def katib_config(upstream: str) -> str:
    """The standalone katib-config with the Python-only random and tpe served by goptuna."""
    config = yaml.safe_load(upstream)
    for suggestion in config["runtime"]["suggestions"]:
        if suggestion["algorithmName"] in SERVED_BY_GOPTUNA:
            suggestion["image"] = GOPTUNA_IMAGE
    return str(yaml.safe_dump(config, sort_keys=False))


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
    standalone = target / "v1beta1" / "installs" / "katib-standalone"
    (overlay / "katib-config.yaml").write_text(
        katib_config((standalone / "katib-config.yaml").read_text())
    )
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
        "patches": [{"patch": yaml.safe_dump(doc)} for doc in removed],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    return overlay


def install(node: RunningNode, source_bin: Path, manifests: Path) -> None:
    """Import Katib's images, apply the overlay and wait until every Deployment is Available."""
    missing = [p for p, _ in PROGRAMS.values() if not (source_bin / p).exists()]
    if missing or not manifests.is_dir():
        raise NodeError(
            f"Katib's programs or manifests are missing ({', '.join(missing) or manifests}); "
            "run `make node-binaries`"
        )
    work = node.layout.var / "katib-images"
    work.mkdir(parents=True, exist_ok=True)
    for archive in _archives(source_bin, work):
        images.import_archive(["ctr"], archive)
    shutil.rmtree(work)
    volume = node.layout.var / "katib-mysql"
    volume.mkdir(parents=True, exist_ok=True)
    shutil.chown(volume, MYSQL_UID, MYSQL_UID)
    overlay = write_overlay(manifests, node.layout.root / "katib", volume)
    node.kubectl("apply", "--server-side", "-k", str(overlay), timeout=300)
    for deployment in DEPLOYMENTS:
        node.rollout(deployment, NAMESPACE)
    # The controller's webhooks answer once its certificate is in place and the Service routes.
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
