"""The e2e tier's cluster, whoever provides it: kind where a Docker engine answers, our node here.

Both providers leave the same thing behind: real Katib v0.19.0, our two images built from our
Dockerfiles, and the operator applied from deploy/default with its default trial image set to
the trainer image built in the same run. The tests talk to it only through `E2ECluster`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import launcher
import yaml
from watch import Watch, watching

KUBECTL_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class E2ECluster:
    """How the tests reach the cluster: the folder of a `kubectl` binary and a kubeconfig, and
    on our node its state directory (`python -m node stop|start --dir` takes its parts down)."""

    provider: str
    bin_dir: Path
    kubeconfig: Path
    node_root: Path | None = None

    def argv(self, *args: str) -> list[str]:
        """kubectl's full command line for `args`."""
        return [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True) -> str:
        """Run kubectl; its stdout (launcher.kubectl raises with stderr when `check` fails)."""
        return launcher.kubectl(
            self.bin_dir,
            self.kubeconfig,
            *args,
            input_text=input_text,
            check=check,
            timeout=KUBECTL_TIMEOUT_S,
        ).stdout

    def apply(self, *documents: dict[str, Any]) -> None:
        """`kubectl apply` manifests given as dicts."""
        self.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(documents))

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any]:
        """One object as a dict."""
        return dict(json.loads(self.kubectl("get", kind, name, "-n", namespace, "-o", "json")))

    def items(self, kind: str, namespace: str, *selector: str) -> list[dict[str, Any]]:
        """Every object of a kind in the namespace (optionally `-l ...` selected)."""
        listing = self.kubectl("get", kind, *selector, "-n", namespace, "-o", "json")
        return list(json.loads(listing)["items"])


@contextmanager
def watching_pods(cluster: E2ECluster, namespace: str, selector: str) -> Iterator[Watch]:
    """A Watch over the pods matching `selector` in `namespace` for the duration of the block."""
    with watching(cluster.argv(), "pods", namespace, "-l", selector) as watch:
        yield watch


def containers_of(pod: dict[str, Any]) -> Sequence[str]:
    """The names of a pod's containers, in order."""
    return [c["name"] for c in pod["spec"]["containers"]]
