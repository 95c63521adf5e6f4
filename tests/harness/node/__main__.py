"""`python -m node up|down|status|stop|start --dir DIR`: the single-node cluster from the command
line.

`up` brings the node up, installs real Katib v0.19.0 on it, builds our two images from our
Dockerfiles and deploys the CRD and the operator with them (deploy/default). `up --gitops`
instead starts Argo CD and a Git server serving this checkout and applies deploy/argocd/root.yaml:
Argo CD installs Katib, the operator and deploy/samples/quick.yaml from Git.
`stop PART...` and `start PART...` take parts of the running node down and bring them back
(containerd, kubelet, etcd, kube-apiserver), in the order given, as a crash or an upgrade would:
the pods they run go on.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from launcher import REPO_ROOT, wait_for

from node import gitops, katib, product
from node.host import HostError
from node.node import PARTS, Node, NodeError, RunningNode, read_running, start_parts, stop_parts


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: parts are named for stop and start, and only there."""
    parser = argparse.ArgumentParser(prog="python -m node", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status", "stop", "start"))
    parser.add_argument("parts", nargs="*", help=f"stop|start: any of {', '.join(PARTS)}")
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".katib-cluster")
    parser.add_argument("--bin-dir", type=Path, default=REPO_ROOT / ".cluster" / "bin")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    parser.add_argument(
        "--gitops", action="store_true", help="up: Argo CD installs everything from Git"
    )
    args = parser.parse_args(argv)
    if bool(args.parts) != (args.command in ("stop", "start")):
        parser.error("name the parts to stop or start, and only then")
    if unknown := [part for part in args.parts if part not in PARTS]:
        parser.error(f"no such part: {', '.join(unknown)} (the parts: {', '.join(PARTS)})")
    return args


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the command, print one line per fact a person needs."""
    args = parse(argv)
    try:
        if args.command in ("stop", "start"):
            (stop_parts if args.command == "stop" else start_parts)(args.dir, args.parts)
            print(f"{args.command}: {', '.join(args.parts)}")
            return 0
        if args.command == "status":
            running = read_running(args.dir)
            print(f"a node runs from {args.dir}" if running else f"no node runs from {args.dir}")
            return 0 if running else 1
        node = Node(args.dir, args.bin_dir)
        if args.command == "down":
            node.down()
            print("node stopped; nothing of it is left on this machine")
            return 0
        running = node.up()
        if args.gitops:
            return _gitops_up(running, args)
        katib.install(running, args.bin_dir, katib.manifests_dir(args.bin_dir))
        trainer = product.install(running, REPO_ROOT, args.data_dir)
        # `kubectl apply -f deploy/samples/quick.yaml` lands in `default`: enable it for Katib.
        running.kubectl("label", "namespace", "default", f"{katib.INJECTION_LABEL}=enabled")
    except (NodeError, HostError, AssertionError) as error:
        print(f"katib-cluster {args.command}: {error}", file=sys.stderr)
        return 1
    layout = running.layout
    print(
        "node Ready, DNS answering: " + ", ".join(f"{k} {v}s" for k, v in running.timings.items())
    )
    print(f"Katib {katib.VERSION} Available in namespace {katib.NAMESPACE}")
    print(f"the operator runs in {product.OPERATOR_NAMESPACE}; trials use {trainer}")
    print(f"  export KUBECONFIG={layout.kubeconfig}")
    print(f"  {layout.bin / 'kubectl'} get nodes,pods -A")
    print(f"  {layout.bin / 'kubectl'} apply -f deploy/samples/quick.yaml")
    print(f"  logs: {layout.logs}; stop with `make katib-cluster-down`")
    return 0


def _gitops_up(running: RunningNode, args: argparse.Namespace) -> int:
    """Argo CD and the Git server, the root Application applied; wait until Argo CD has
    installed Katib and the operator (the quick tuning then runs from Git)."""
    clone = args.dir / "gitops" / "repo"
    served = gitops.start(running, args.bin_dir, REPO_ROOT, args.data_dir, clone)
    started = time.monotonic()
    served.apply_root()
    katib_app, operator_app, _ = gitops.APPLICATIONS
    wait_for("Argo CD to install Katib and the operator", lambda: served.settled(operator_app),
             timeout=gitops.INSTALL_TIMEOUT_S)  # fmt: skip
    print(f"Argo CD syncs {served.url} (root Application {gitops.ROOT_APPLICATION})")
    print(f"  {katib_app} and {operator_app} Healthy {time.monotonic() - started:.0f}s after it")
    kubectl = running.layout.bin / "kubectl"
    print(f"  export KUBECONFIG={running.layout.kubeconfig}")
    print(f"  {kubectl} -n {gitops.NAMESPACE} get applications")
    print(f"  {kubectl} get mnisttunings -A")
    print(f"  change what is deployed: edit, commit and `git push` in {clone}")
    print(f"  logs: {running.layout.logs}; stop with `make katib-cluster-down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
