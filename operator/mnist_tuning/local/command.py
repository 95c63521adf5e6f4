"""The trial's process: the rendered Job's container, substituted as Katib does, made local.

Katib renders a trial by plain string replacement of `${trialParameters.<name>}` on the
JSON text of the trial template; doing the same here means the local process gets exactly
the arguments a trial pod would get. Only what points into the pod's filesystem changes:
the interpreter, the data directory and the metrics file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mnist_tuning.api.expand import METRICS_FILE_PATH

PYTHON_NAMES = ("python", "python3")
DATA_DIR_FLAG = "--data-dir"
# A pod's trainer takes the threads of its CPU share (expand); local trials split the cores.
THREADS_FLAG = "--threads"


@dataclass(frozen=True)
class TrialProcess:
    """What to start for one trial: argv and the environment variables the container sets."""

    argv: list[str]
    env: dict[str, str]


def render_trial_spec(experiment: Mapping[str, Any], assignments: Mapping[str, str]) -> Any:
    """Render the trial's Job: every `${trialParameters.x}` replaced by its parameter's value."""
    template = experiment["spec"]["trialTemplate"]
    text = json.dumps(template["trialSpec"])
    for trial_parameter in template["trialParameters"]:
        value = assignments[trial_parameter["reference"]]
        text = text.replace(f"${{trialParameters.{trial_parameter['name']}}}", value)
    return json.loads(text)


def primary_container(experiment: Mapping[str, Any], job: Mapping[str, Any]) -> dict[str, Any]:
    """Find the container Katib would collect metrics from."""
    name = experiment["spec"]["trialTemplate"]["primaryContainerName"]
    containers: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"]
    for container in containers:
        if container["name"] == name:
            return container
    raise ValueError(f"the trial template has no container named {name}")


def localize(arg: str, *, python: str, data_dir: Path, metrics_file: Path) -> str:
    """Point one argument at this machine instead of the trial pod's filesystem."""
    if arg in PYTHON_NAMES:
        return python
    if arg.startswith(f"{DATA_DIR_FLAG}="):
        return f"{DATA_DIR_FLAG}={data_dir}"
    return arg.replace(METRICS_FILE_PATH, str(metrics_file))


def trial_process(
    experiment: Mapping[str, Any],
    assignments: Mapping[str, str],
    *,
    python: str,
    data_dir: Path,
    metrics_file: Path,
    threads: int,
    extra_args: Sequence[str] = (),
) -> TrialProcess:
    """Build the local process for one trial from the Experiment's trial template.

    `threads` is this trial's share of the cores; `extra_args` go to every trial's trainer
    after the template's own arguments (e.g. `--train-limit=5000` for a quick look).
    """
    container = primary_container(experiment, render_trial_spec(experiment, assignments))
    argv = [*container.get("command", []), *container.get("args", [])]
    local = [
        localize(a, python=python, data_dir=data_dir, metrics_file=metrics_file)
        for a in argv
        if not a.startswith(f"{THREADS_FLAG}=")
    ]
    local += [f"{THREADS_FLAG}={threads}", *extra_args]
    env = {
        item["name"]: item["value"].replace(METRICS_FILE_PATH, str(metrics_file))
        for item in container.get("env", [])
        if "value" in item
    }
    return TrialProcess(argv=local, env=env)
