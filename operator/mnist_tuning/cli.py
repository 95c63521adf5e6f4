"""The `mnist-tuning` command line: one entry point, one subcommand per job.

Each subcommand's implementation lives with the code it drives and is imported
lazily, so `render`/`validate` work in an install without kopf or optuna.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

# subcommand -> (module, function, one-line help). Each module also exposes
# `add_arguments_<function>(parser)` to declare its own flags.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "render": (
        "mnist_tuning.api.cli",
        "render",
        "print the Katib Experiment for a MnistTuning file",
    ),
    "validate": (
        "mnist_tuning.api.cli",
        "validate",
        "check a MnistTuning file; every problem with its field path",
    ),
    "crd": ("mnist_tuning.api.cli", "crd", "print the MnistTuning CustomResourceDefinition"),
    "run": (
        "mnist_tuning.local.cli",
        "run",
        "run a MnistTuning on this machine (trials as local processes)",
    ),
    "operator": ("mnist_tuning.controller.cli", "operator", "run the operator against a cluster"),
}


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    """Build the parser, letting the chosen subcommand's module declare its flags.

    Only that module is imported, so a long-running `operator` process does not carry the
    local engine's plotting libraries (and `render` does not load kopf).
    """
    parser = argparse.ArgumentParser(prog="mnist-tuning", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, function, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        sub_parser.set_defaults(module=module, function=function)
        if name == chosen:
            getattr(import_module(module), f"add_arguments_{function}")(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and dispatch to the subcommand; return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    except ImportError as exc:
        # An optional extra is missing: say which and how to get it, not a traceback.
        print(
            f"mnist-tuning {chosen}: needs {exc.name}, which is not installed; "
            "install the project with `pip install 'mnist-tuning[dev]'` or run `make venv`",
            file=sys.stderr,
        )
        return 2
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = getattr(
        import_module(args.module), args.function
    )
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
