"""Argo CD on the node, syncing Katib, the operator and the tunings from a Git server here.

Argo CD runs the way its own local setup runs it: the application controller and the repo server
are host processes of the one `argocd` binary (built by `build.sh gitops`), with
`ARGOCD_FAKE_IN_CLUSTER` so that `https://kubernetes.default.svc` means the node's API server, and
a Redis of their own on loopback. Host processes need no image, and they keep every packet on
this machine: Argo CD's API traffic goes only to our API server, its Git traffic only to our Git
server on 127.0.0.1 (which pods could not reach). Its CRDs and base configuration are applied from
Argo CD's own module, then `deploy/argocd/argocd-cm.yaml` is merged into argocd-cm as a user does.

The served repository is this checkout with `SERVED_CHANGES` only: the Applications point at the
Git server, Katib comes from the Go module's `katib-standalone` through the node's overlay
(`node.katib`) and the operator and trial images are the ones built here (`node.product`).
Nothing of Katib, the operator or the tunings is applied by this module: Argo CD installs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from launcher import free_port, wait_for

from node import katib, product
from node.node import (
    NodeError,
    RunningNode,
    end_processes,
    install_program,
    listening,
    start_process,
    wait_started,
)

NAMESPACE = "argocd"
BRANCH = "main"
REPOSITORY = "mnist-tuning.git"
ROOT_APPLICATION = "deploy/argocd/root.yaml"
# Where the node's two overlays sit in the served repository.
KATIB_PATH = "deploy/node/katib/offline-node"
OPERATOR_PATH = "deploy/node/operator"
# Every change the served repository makes to deploy/argocd: file → Application source fields
# replaced (repoURL always becomes the Git server on this machine).
SERVED_CHANGES: dict[str, dict[str, str]] = {
    "deploy/argocd/root.yaml": {},
    "deploy/argocd/apps/katib.yaml": {"targetRevision": BRANCH, "path": KATIB_PATH},
    "deploy/argocd/apps/operator.yaml": {"path": OPERATOR_PATH},
    "deploy/argocd/apps/tunings.yaml": {},
}
# Argo CD re-reads Git and re-judges every Application this often (its default is 120 s, plus
# up to 60 s of jitter).
RESYNC = "15s"
START_TIMEOUT_S = 120.0
# From the root Application to Katib and the operator Healthy: Katib's MySQL and controller.
INSTALL_TIMEOUT_S = 600.0
# Argo CD's repo server runs this program on every revision it renders (its image ships one):
# it wants git's own word on the revision's signature, and a zero exit whatever that word is.
# Nothing here is signed and no key is configured, so the word is "no signature".
VERIFY_WRAPPER = """#!/bin/sh
[ -n "$1" ] || { echo "usage: git-verify-wrapper.sh REVISION" >&2; exit 1; }
if [ "$(git cat-file -t "$1" 2>/dev/null)" = tag ]; then
  git verify-tag "$1" 2>&1
else
  git verify-commit "$1" 2>&1
fi
exit 0
"""
# The clone's committer (a local identity; nothing is sent anywhere with it).
AUTHOR = {"user.name": "mnist-tuning node", "user.email": "node@localhost"}
ARGOCD_CRDS = ("applications.argoproj.io", "appprojects.argoproj.io")
# The Applications of deploy/argocd, by wave.
APPLICATIONS = ("katib", "mnist-tuning-operator", "mnist-tunings")
# The processes `start()` adds to the node, in the order `stop()` ends them.
PROCESSES = ("argocd-application-controller", "argocd-repo-server", "redis", "gitserver")


@dataclass(frozen=True)
class GitOps:
    """Argo CD and the Git server on a running node."""

    node: RunningNode
    url: str  # the served repository, as the Applications name it
    clone: Path  # a clone of it; `git push` from here changes what is deployed

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl in Argo CD's namespace."""
        return self.node.kubectl("-n", NAMESPACE, *args, check=check)

    def push(self, message: str) -> str:
        """Commit everything changed in the clone, push it; the new commit's id."""
        git(self.clone, "add", "-A")
        git(self.clone, "commit", "-q", "-m", message)
        git(self.clone, "push", "-q", "origin", BRANCH)
        return git(self.clone, "rev-parse", "HEAD").strip()

    def apply_root(self) -> None:
        """Apply the root Application from the served repository: Argo CD installs the rest."""
        self.kubectl("apply", "-f", str(self.clone / ROOT_APPLICATION))

    def application(self, name: str) -> dict[str, Any] | None:
        """The Application as Argo CD last wrote it; None while it does not exist."""
        found = self.kubectl("get", "application", name, "-o", "json", check=False)
        return dict(json.loads(found.stdout)) if found.returncode == 0 else None

    def settled(self, *applications: str) -> bool:
        """Every named Application Synced and Healthy, with no sync operation running."""
        return all(settled(self.application(name)) for name in applications)

    def diagnose(self, *namespaces: str) -> str:
        """What Argo CD says of every Application, its errors, and the pods of `namespaces`."""
        listing = self.kubectl("get", "applications", "-o", "json", check=False)
        apps = json.loads(listing.stdout)["items"] if listing.returncode == 0 else []
        out = ["--- Argo CD's Applications"]
        for app in apps:
            status = app.get("status") or {}
            out.append(json.dumps({
                "name": app["metadata"]["name"],
                "sync": (status.get("sync") or {}).get("status"),
                "health": status.get("health"),
                "operation": {k: (status.get("operationState") or {}).get(k)
                              for k in ("phase", "message", "retryCount")},
                "conditions": status.get("conditions"),
            }))  # fmt: skip
        log = self.node.layout.logs / "argocd-application-controller.log"
        lines = log.read_text().splitlines() if log.exists() else []
        errors = [line for line in lines if "level=error" in line]
        out += ["--- the application controller's last errors", *errors[-20:]]
        return "\n".join([*out, self.node.diagnose(*namespaces)])

    def refresh(self, application: str) -> None:
        """Ask Argo CD to compare `application` with Git now instead of at its next resync."""
        self.kubectl("annotate", "--overwrite", "application", application,
                     "argocd.argoproj.io/refresh=normal")  # fmt: skip


def settled(application: dict[str, Any] | None) -> bool:
    """Argo CD judged the Application Synced and Healthy and runs no sync operation on it."""
    status = (application or {}).get("status") or {}
    return (
        (status.get("health") or {}).get("status") == "Healthy"
        and (status.get("sync") or {}).get("status") == "Synced"
        and (status.get("operationState") or {}).get("phase") != "Running"
    )


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd`; its stdout, or NodeError with its stderr."""
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NodeError(f"git {' '.join(args)} in {cwd}: {result.stderr.strip()}")
    return result.stdout


# --- the served repository (pure where it can be) ----------------------------------------------


def serve_application(text: str, url: str, fields: Mapping[str, str]) -> str:
    """An Application file with its source's repoURL (and `fields`) replaced, comments kept."""
    replaced = {"repoURL": url, **fields}
    out = []
    for line in text.splitlines(keepends=True):
        match = re.match(r"^(\s+)(repoURL|targetRevision|path): .*$", line)
        if match and match.group(2) in replaced:
            line = f"{match.group(1)}{match.group(2)}: {replaced[match.group(2)]}\n"
        out.append(line)
    served = "".join(out)
    source = yaml.safe_load(served)["spec"]["source"]
    wrong = {k: v for k, v in replaced.items() if source.get(k) != v}
    if wrong:
        raise NodeError(f"could not point the Application at {wrong}: {text[:200]}")
    return served


def without_katib_config(text: str) -> str:
    """The Katib Application without its katib-config patch and that patch's comment, every
    other line as written: the node's overlay already has that katib-config with the node's
    images in it (`node.katib` tests that the two are the same)."""
    root = yaml.compose(text)
    spec = _value(root, "spec")
    patches = _value(_value(_value(spec, "source"), "kustomize"), "patches")
    [item] = [
        node
        for node in patches.value
        if yaml.safe_load(str(_value(node, "patch").value))["kind"] == "ConfigMap"
    ]
    lines = text.splitlines(keepends=True)
    first, end = item.start_mark.line, item.end_mark.line
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    # A block scalar ends where the next item starts: the next patch's comment stays.
    while end > first and lines[end - 1].lstrip().startswith("#"):
        end -= 1
    return "".join(lines[:first] + lines[end:])


def _value(mapping: yaml.Node, key: str) -> yaml.Node:
    """The value node of `key` in a composed YAML mapping."""
    [value] = [v for k, v in mapping.value if k.value == key]
    return value


def project_files(repo_root: Path) -> list[str]:
    """The checkout's files as Git sees them: tracked and new ones, never ignored ones."""
    listed = git(repo_root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    return sorted(f for f in set(listed.split("\0")) if f and (repo_root / f).is_file())


def write_served_tree(
    repo_root: Path,
    tree: Path,
    *,
    url: str,
    katib_manifests: Path,
    mysql_volume: Path,
    operator_image: str,
    trainer_image: str,
) -> None:
    """The served repository's files: the checkout, `SERVED_CHANGES`, and the node's overlays."""
    shutil.rmtree(tree, ignore_errors=True)
    for name in project_files(repo_root):
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / name, tree / name)
    for name, fields in SERVED_CHANGES.items():
        (tree / name).write_text(serve_application((tree / name).read_text(), url, fields))
    katib_app = tree / "deploy/argocd/apps/katib.yaml"
    katib_app.write_text(without_katib_config(katib_app.read_text()))
    katib.write_overlay(katib_manifests, tree / Path(KATIB_PATH).parent, mysql_volume)
    overlay = tree / OPERATOR_PATH
    overlay.mkdir(parents=True)
    kustomization = product.operator_kustomization(
        operator_image, trainer_image, base=os.path.relpath(tree / "deploy/default", overlay)
    )
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))


# --- processes ------------------------------------------------------------------------------------


def _argocd_env(node: RunningNode, component: str) -> dict[str, str]:
    """The environment of one Argo CD component (Argo CD's own local setup, in our state dir)."""
    state = node.layout.var / "argocd"
    dirs = {name: state / name for name in ("tls", "ssh", "gpg", "home", "tmp")}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{node.layout.bin}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(dirs["home"]),
        "TMPDIR": str(dirs["tmp"]),
        "KUBECONFIG": str(node.layout.kubeconfig),
        "ARGOCD_BINARY_NAME": component,
        "ARGOCD_FAKE_IN_CLUSTER": "true",
        "ARGOCD_GPG_ENABLED": "false",
        "ARGOCD_GNUPGHOME": str(dirs["gpg"]),
        "ARGOCD_TLS_DATA_PATH": str(dirs["tls"]),
        "ARGOCD_SSH_DATA_PATH": str(dirs["ssh"]),
        "ARGOCD_ASK_PASS_SOCK": str(state / "ask-pass.sock"),
        "ARGOCD_RECONCILIATION_TIMEOUT": RESYNC,
        "ARGOCD_RECONCILIATION_JITTER": "2s",
        # Keep each resource's health in the Application (Argo CD 3 keeps it in Redis only):
        # the tests read what Argo CD judged a tuning to be from the Application's history.
        "ARGOCD_APPLICATION_CONTROLLER_PERSIST_RESOURCE_HEALTH": "true",
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def start_git_server(node: RunningNode, source_bin: Path, served: Path) -> str:
    """Our Git server on loopback over the folder of bare repositories; the base URL."""
    program = install_program(node.layout, source_bin / "gitserver")
    port = free_port()
    argv = [str(program), f"--listen=127.0.0.1:{port}", f"--root={served}"]
    process = start_process(node.layout, "gitserver", argv)
    wait_started(node.layout, "the Git server to listen", listening(port), "gitserver", process)
    return f"http://127.0.0.1:{port}"


def start_argocd(node: RunningNode, source_bin: Path) -> None:
    """Redis, the repo server and the application controller, each on loopback ports."""
    bin_dir = node.layout.bin
    redis = install_program(node.layout, Path("/usr/bin/redis-server"))
    for program in ("argocd", "kustomize"):
        install_program(node.layout, source_bin / program)
    wrapper = bin_dir / "git-verify-wrapper.sh"
    wrapper.write_text(VERIFY_WRAPPER)
    wrapper.chmod(0o755)
    redis_port, repo_port = free_port(), free_port()
    argv = [str(redis), "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
            "--appendonly", "no", "--protected-mode", "yes"]  # fmt: skip
    process = start_process(node.layout, "redis", argv)
    wait_started(node.layout, "Redis to listen", listening(redis_port), "redis", process)
    redis_address = f"127.0.0.1:{redis_port}"
    argv = [str(bin_dir / "argocd"), "--address=127.0.0.1", f"--port={repo_port}",
            "--metrics-address=127.0.0.1", f"--metrics-port={free_port()}",
            f"--redis={redis_address}", "--loglevel=info"]  # fmt: skip
    env = _argocd_env(node, "argocd-repo-server")
    process = start_process(node.layout, "argocd-repo-server", argv, env)
    wait_started(node.layout, "the repo server to listen", listening(repo_port),
                 "argocd-repo-server", process)  # fmt: skip
    argv = [str(bin_dir / "argocd"), f"--namespace={NAMESPACE}", f"--redis={redis_address}",
            f"--repo-server=127.0.0.1:{repo_port}", f"--metrics-port={free_port()}",
            f"--commit-server=127.0.0.1:{free_port()}", "--loglevel=info"]  # fmt: skip
    env = _argocd_env(node, "argocd-application-controller")
    start_process(node.layout, "argocd-application-controller", argv, env)


# --- Argo CD's own objects ------------------------------------------------------------------------


def default_project() -> dict[str, Any]:
    """The `default` AppProject that argocd-server would create (it does not run here)."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AppProject",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {
            "sourceRepos": ["*"],
            "destinations": [{"namespace": "*", "server": "*"}],
            "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
        },
    }


def install_argocd_objects(node: RunningNode, manifests: Path, repo_root: Path) -> None:
    """Argo CD's CRDs and base config from its module, argocd-cm patched as our docs say."""
    overlay = node.layout.root / "argocd"
    shutil.rmtree(overlay, ignore_errors=True)
    shutil.copytree(manifests, overlay / "manifests")
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": NAMESPACE,
        "resources": ["manifests/crds", "manifests/base/config"],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    node.kubectl("create", "namespace", NAMESPACE)
    node.kubectl("apply", "--server-side", "-k", str(overlay), timeout=300)
    # `kubectl wait` fails at once on a CRD whose status is not written yet: ask again.
    wait_for(
        "Argo CD's CRDs Established",
        lambda: node.kubectl("wait", "--for=condition=Established", "--timeout=5s",
                             *(f"crd/{crd}" for crd in ARGOCD_CRDS), check=False).returncode == 0,
        timeout=START_TIMEOUT_S,
    )  # fmt: skip
    node.kubectl("-n", NAMESPACE, "patch", "configmap", "argocd-cm", "--type", "merge",
                 "--patch-file", str(repo_root / "deploy/argocd/argocd-cm.yaml"))  # fmt: skip
    node.apply([default_project()])


def manifests_dir(cluster_bin: Path) -> Path:
    """Where `build.sh gitops` left Argo CD's module manifests (beside the binaries)."""
    return cluster_bin.parent / "argocd" / "manifests"


def start(
    node: RunningNode, source_bin: Path, repo_root: Path, data_dir: Path, clone: Path
) -> GitOps:
    """Argo CD and the Git server on the node, serving this checkout; nothing applied from it.

    Only images are put on the node beforehand (an offline node pulls nothing): Katib's, and
    our two built from this tree. `GitOps.apply_root()` then hands everything to Argo CD.
    """
    missing = [p for p in ("argocd", "kustomize", "gitserver") if not (source_bin / p).exists()]
    argocd_manifests = manifests_dir(source_bin)
    katib_manifests = katib.manifests_dir(source_bin)
    if missing or not argocd_manifests.is_dir():
        raise NodeError(
            "Argo CD's programs or manifests are missing "
            f"({', '.join(missing) or argocd_manifests}); run `make gitops-binaries`"
        )
    katib.import_images(node, source_bin)
    operator_image, trainer_image = product.import_images(node, repo_root, data_dir)
    served = node.layout.var / "git"
    bare = served / REPOSITORY
    shutil.rmtree(served, ignore_errors=True)
    bare.mkdir(parents=True)
    git(bare, "init", "-q", "--bare", f"--initial-branch={BRANCH}")
    git(bare, "config", "http.receivepack", "true")
    url = f"{start_git_server(node, source_bin, served)}/{REPOSITORY}"
    write_served_tree(
        repo_root,
        clone,
        url=url,
        katib_manifests=katib_manifests,
        mysql_volume=katib.database_volume(node),
        operator_image=operator_image,
        trainer_image=trainer_image,
    )
    git(clone, "init", "-q", f"--initial-branch={BRANCH}")
    git(clone, "remote", "add", "origin", url)
    for key, value in AUTHOR.items():
        git(clone, "config", key, value)
    served_from = git(repo_root, "rev-parse", "--short", "HEAD").strip()
    gitops = GitOps(node, url, clone)
    gitops.push(f"mnist-tuning at {served_from} for the node on this machine")
    install_argocd_objects(node, argocd_manifests, repo_root)
    start_argocd(node, source_bin)
    return gitops


def stop(node: RunningNode) -> None:
    """End Argo CD and the Git server; what they installed stays (Applications do nothing then)."""
    end_processes(node.layout, PROCESSES)
