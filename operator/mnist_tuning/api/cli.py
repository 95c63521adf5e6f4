"""The `render`, `validate` and `crd` subcommands: the pure core on the command line.

User mistakes (a missing file, broken YAML, an invalid spec) end in one readable line per
problem and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from mnist_tuning.api.crd import crd as crd_manifest
from mnist_tuning.api.expand import expand
from mnist_tuning.api.spec import MnistTuning, SpecError, parse_tuning
from mnist_tuning.api.yamlio import to_yaml

EXIT_INVALID = 1
EXIT_UNREADABLE = 2


class InputError(Exception):
    """A file that cannot be read or parsed as one YAML document; exit code attached."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def load_manifest(filename: str) -> Any:
    """Read one YAML document from a file (`-` is standard input)."""
    try:
        text = sys.stdin.read() if filename == "-" else Path(filename).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(
            f"{filename}: cannot read: {exc.strerror or exc}", EXIT_UNREADABLE
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{filename}: not a text file (UTF-8)", EXIT_UNREADABLE) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InputError(f"{filename}: not valid YAML{where}: {problem}", EXIT_INVALID) from None


def load_tuning(filename: str, namespace: str | None = None) -> MnistTuning:
    """Read and validate a MnistTuning file; `namespace` overrides metadata.namespace."""
    manifest = load_manifest(filename)
    if isinstance(manifest, dict) and namespace:
        metadata = manifest.get("metadata")
        manifest = {
            **manifest,
            "metadata": {
                **(metadata if isinstance(metadata, dict) else {}),
                "namespace": namespace,
            },
        }
    return parse_tuning(manifest)


def _problems(filename: str, error: SpecError) -> None:
    for problem in error.problems:
        print(f"{filename}: {problem.path}: {problem.message}", file=sys.stderr)


def add_arguments_render(parser: argparse.ArgumentParser) -> None:
    """Declare `render`'s flags."""
    parser.add_argument(
        "-f", "--filename", required=True, help="MnistTuning YAML file (- for stdin)"
    )
    parser.add_argument("--namespace", help="namespace of the Experiment (default: the file's)")
    parser.add_argument(
        "--image", help="trainer image for trials that do not name one (default: the built-in)"
    )


def checked_tuning(filename: str, namespace: str | None = None) -> MnistTuning | int:
    """Load a tuning, or print why it cannot be loaded and return the exit code."""
    try:
        return load_tuning(filename, namespace)
    except InputError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except SpecError as exc:
        _problems(filename, exc)
        return EXIT_INVALID


def render(args: argparse.Namespace) -> int:
    """Print the Katib Experiment for a MnistTuning file."""
    tuning = checked_tuning(args.filename, args.namespace)
    if isinstance(tuning, int):
        return tuning
    options = {"default_image": args.image} if args.image else {}
    sys.stdout.write(to_yaml(expand(tuning, **options)))
    return 0


def add_arguments_validate(parser: argparse.ArgumentParser) -> None:
    """Declare `validate`'s flags."""
    parser.add_argument(
        "-f", "--filename", required=True, help="MnistTuning YAML file (- for stdin)"
    )


def validate(args: argparse.Namespace) -> int:
    """Check a MnistTuning file with the CRD's rules; print every problem with its field path."""
    tuning = checked_tuning(args.filename)
    if isinstance(tuning, int):
        return tuning
    print(f"{args.filename}: valid")
    return 0


def add_arguments_crd(parser: argparse.ArgumentParser) -> None:
    """Declare `crd`'s flags (none)."""


def crd(args: argparse.Namespace) -> int:
    """Print the MnistTuning CustomResourceDefinition."""
    sys.stdout.write(to_yaml(crd_manifest()))
    return 0
