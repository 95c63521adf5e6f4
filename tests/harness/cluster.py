"""Start or stop a local control plane in the background (`make cluster`, `make cluster-down`).

`up` starts etcd, kube-apiserver and kube-controller-manager from DIR/bin (built by
`make binaries`), installs the MnistTuning CRD and Katib's experiments/trials/suggestions CRDs,
writes DIR/kubeconfig and returns; the servers keep running until `down`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import launcher


def default_crds(cluster_dir: Path) -> list[Path]:
    """Our CRDs (crds/*.yaml) and Katib's, as build.sh left them in DIR/crds/katib."""
    ours = sorted((launcher.REPO_ROOT / "crds").glob("*.yaml"))
    katib = sorted((cluster_dir / "crds" / "katib").glob("*.yaml"))
    return ours + katib


def up(cluster_dir: Path, bin_dir: Path | None, crds: list[Path] | None) -> int:
    """Start the control plane in the background and print how to use it."""
    try:
        bin_dir = launcher.binaries_dir(bin_dir or cluster_dir / "bin")
        crd_files = default_crds(cluster_dir) if crds is None else crds
        started = time.monotonic()
        running = launcher.start(cluster_dir, bin_dir, crd_files, tie_to_this_process=False)
    except launcher.ControlPlaneError as error:
        print(f"cluster up: {error}", file=sys.stderr)
        return 1
    print(f"control plane ready in {time.monotonic() - started:.1f}s at {running.server}")
    print(f"  CRDs: {', '.join(path.name for path in crd_files) or 'none'}")
    print(f"  export KUBECONFIG={running.kubeconfig}")
    print(f"  {bin_dir / 'kubectl'} get crds")
    print(f"  logs: {cluster_dir / 'logs'}; stop with `make cluster-down`")
    return 0


def down(cluster_dir: Path) -> int:
    """Stop the control plane, if one runs."""
    if launcher.stop(cluster_dir):
        (cluster_dir / "kubeconfig").unlink(missing_ok=True)
        print("control plane stopped")
    else:
        print(f"no control plane runs in {cluster_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run `up` or `down`."""
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down"):
        command = sub.add_parser(name)
        command.add_argument("--dir", type=Path, default=Path(".cluster"))
        if name == "up":
            command.add_argument("--bin-dir", type=Path, help="binaries (default: DIR/bin)")
            command.add_argument(
                "--crd",
                type=Path,
                action="append",
                dest="crds",
                help="CRD file to install (repeatable; default: crds/*.yaml and Katib's)",
            )
    args = parser.parse_args(argv)
    cluster_dir = args.dir.resolve()
    if args.command == "up":
        return up(cluster_dir, args.bin_dir, args.crds)
    return down(cluster_dir)


if __name__ == "__main__":
    sys.exit(main())
