"""Python code for Katib's gRPC API, generated from the `api.proto` of Katib's Go module.

The same file the Katib controller we run was built from (`build.sh node` leaves it beside the
binaries), so both ends speak exactly one version of the API. The generated modules are
`api_pb2` (messages) and `api_pb2_grpc` (service glue); nothing generated is committed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

PROTO = "api.proto"
MODULES = ("api_pb2", "api_pb2_grpc")


def generate(proto_dir: Path, out: Path) -> Path:
    """Write api_pb2.py and api_pb2_grpc.py for `proto_dir/api.proto` into `out`."""
    from grpc_tools import protoc  # the build's tool, not the service's: the image lacks it

    out.mkdir(parents=True, exist_ok=True)
    argv = ["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", PROTO]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc could not compile {proto_dir / PROTO}")
    return out


def load(directory: Path | None = None) -> tuple[ModuleType, ModuleType]:
    """The generated modules, from `directory` (put first on the path) or the path as it is."""
    if directory is not None and str(directory) not in sys.path:
        sys.path.insert(0, str(directory))
    api, glue = (importlib.import_module(name) for name in MODULES)
    return api, glue
