"""The local engine with a stand-in trainer that reports at once, for the resume tests.

The engine's bookkeeping is what those tests prove, at a dozen kill points; the real
trainer would make each of them minutes long on a shared machine (one real-trainer case
stays in test_local_run.py).

    python stub_engine.py run SPEC WORKDIR   # the engine, trials run the stand-in
    python stub_engine.py trainer -m mnist_trainer --flag=value ...   # one stand-in trial
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path


def trainer(argv: list[str]) -> int:
    """Report one epoch in cloudml-hypertune's format; the numbers follow the flags."""
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv if arg.startswith("--"))
    accuracy = 0.9 - abs(math.log10(float(flags["learning-rate"])) + 1.5) / 10
    lines = [
        {"accuracy": str(accuracy), "global_step": "1", "timestamp": time.time()},
        {"loss": str(1 - accuracy), "global_step": "1", "timestamp": time.time()},
    ]
    Path(flags["metrics-file"]).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return 0


def run(spec: Path, workdir: Path) -> int:
    """Run the engine on SPEC with every trial's interpreter swapped for this stand-in."""
    # Imported here: a stand-in trial starts without them.
    from mnist_tuning.api.expand import expand
    from mnist_tuning.api.spec import parse_tuning
    from mnist_tuning.local.engine import Engine
    from yaml import safe_load

    shim = workdir.parent / f"{workdir.name}-python"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{__file__}" trainer "$@"\n')
    shim.chmod(0o755)
    tuning = parse_tuning(safe_load(spec.read_text()))
    engine = Engine(
        tuning,
        expand(tuning),
        workdir=workdir,
        data_dir=workdir,
        observer=lambda progress: None,
        python=str(shim),
        cpus=1,
    )
    return 0 if engine.run().phase == "Succeeded" else 1


if __name__ == "__main__":
    if sys.argv[1] == "trainer":
        sys.exit(trainer(sys.argv[2:]))
    sys.exit(run(Path(sys.argv[2]), Path(sys.argv[3])))
