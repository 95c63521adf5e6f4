from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from local_runs import RunCli, cli_command


@pytest.fixture
def run_cli() -> RunCli:
    """Run `mnist-tuning run` as a person would, in a separate process."""

    def run(
        manifest: dict[str, Any], workdir: Path, data_dir: Path
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_command(manifest, workdir, data_dir),
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "COLUMNS": "200"},
            check=False,
        )

    return run
