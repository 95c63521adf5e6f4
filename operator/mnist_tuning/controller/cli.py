"""`mnist-tuning operator`: run the operator against $KUBECONFIG or the in-cluster config.

kopf and the Kubernetes client are imported only when the operator runs, so other
subcommands start fast; a missing `operator` extra is still reported at import time.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.util import find_spec

from mnist_tuning.controller.settings import ENV_PREFIX, SettingsError, load_settings

for _module in ("kopf", "kubernetes"):
    if find_spec(_module) is None:
        raise ImportError(f"No module named {_module!r}", name=_module)


def add_arguments_operator(parser: argparse.ArgumentParser) -> None:
    """Declare the operator's flags; everything else comes from MNIST_TUNING_* variables."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help=f"watch this namespace (repeatable); default {ENV_PREFIX}NAMESPACES, else all",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument(
        "--log-format",
        choices=("plain", "full", "json"),
        help=f"log line format; default {ENV_PREFIX}LOG_FORMAT, else full",
    )
    parser.add_argument(
        "--liveness-port",
        type=int,
        metavar="PORT",
        help=f"serve GET /healthz on this port (0: off); default {ENV_PREFIX}LIVENESS_PORT, "
        "else 8080",
    )


def operator(args: argparse.Namespace) -> int:
    """Validate the settings, then run kopf until SIGTERM/SIGINT."""
    try:
        settings = load_settings(os.environ)
    except SettingsError as exc:
        print(f"mnist-tuning operator: cannot start, bad settings:\n{exc}", file=sys.stderr)
        return 2
    import kopf

    from mnist_tuning.controller.handlers import registry

    namespaces = () if args.all_namespaces else tuple(args.namespaces or settings.namespaces)
    log_format = args.log_format or settings.log_format
    port = settings.liveness_port if args.liveness_port is None else args.liveness_port
    kopf.configure(
        verbose=settings.log_level == "DEBUG",
        quiet=settings.log_level == "WARNING",
        log_format=kopf.LogFormat[log_format.upper()],
    )
    kopf.run(
        registry=registry,
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{port}/healthz" if port else None,
        memo=kopf.Memo(config=settings),
    )
    return 0
