"""`python -m node up|down|status --dir DIR`: the single-node cluster from the command line.

`up` brings the node up, installs real Katib v0.19.0 on it, builds our two images from our
Dockerfiles and deploys the CRD and the operator with them (deploy/default).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from launcher import REPO_ROOT

from node import katib, product
from node.host import HostError
from node.node import Node, NodeError, read_running


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the command, print one line per fact a person needs."""
    parser = argparse.ArgumentParser(prog="python -m node", description=__doc__)
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--dir", type=Path, default=REPO_ROOT / ".katib-cluster")
    parser.add_argument("--bin-dir", type=Path, default=REPO_ROOT / ".cluster" / "bin")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data")
    args = parser.parse_args(argv)
    try:
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
        katib.install(running, args.bin_dir, katib.manifests_dir(args.bin_dir))
        trainer = product.install(running, REPO_ROOT, args.data_dir)
        # `kubectl apply -f deploy/samples/quick.yaml` lands in `default`: enable it for Katib.
        running.kubectl("label", "namespace", "default", f"{katib.INJECTION_LABEL}=enabled")
    except (NodeError, HostError) as error:
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


if __name__ == "__main__":
    sys.exit(main())
