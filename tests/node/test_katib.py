"""Real Katib v0.19.0 on the node: its webhooks judge Experiments, its controller runs them.

The trial here is a few lines of Python in the node's Debian test image that writes one metric
in the JSON-lines format our trainer writes; Katib's own sidecar collects it, its DB manager
stores it, and the suggestion service for `random` (our stand-in for Katib's Python services,
tests/harness/katib_services) suggests the values; the early-stopping stand-in stops trials.
Every algorithm runs with our trainer through the operator in tests/e2e/test_algorithms.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from launcher import REPO_ROOT
from mnist_trainer import early_stop
from mnist_tuning.api.expand import PRIMARY_CONTAINER, TRAINER_UID, expand
from mnist_tuning.api.spec import parse_tuning
from node.katib import trial_pods
from node.node import NodeError, RunningNode, userland_image
from workloads import wait_for

METRICS = "/var/log/katib/metrics.json"
# Katib's collector finds the trainer by scanning /proc once, right after it starts; a trainer
# that has already ended then fails its trial ("unable to find main pid"). A real trainer runs
# for many seconds; this one stays up until the collector has run for two.
WAIT_FOR_COLLECTOR = (
    "def collector_up():\n"
    "    for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "        try: argv0 = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')[0]\n"
    "        except OSError: continue\n"
    "        if argv0.endswith(b'metricscollector'): return True\n"
    "    return False\n"
    "while not collector_up(): time.sleep(0.1)\n"
    "time.sleep(2)\n"
)
TRIAL = (
    "import argparse, json, os, time\n"
    "parser = argparse.ArgumentParser()\n"
    "parser.add_argument('--x', type=float, required=True)\n"
    "x = parser.parse_args().x\n"
    f"with open('{METRICS}', 'w') as metrics:\n"
    "    score = 1 - (x - 0.3) ** 2\n"
    "    metrics.write(json.dumps({'score': str(score), 'timestamp': time.time()}) + '\\n')\n"
    "print('x', x, 'score', score)\n" + WAIT_FOR_COLLECTOR
)
# Katib's injected container in every trial pod of a File collector.
SIDECAR = "metrics-logger-and-collector"
EARLY_STOP = Path(early_stop.__file__)


def experiment(name: str, namespace: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "objective": {"type": "maximize", "objectiveMetricName": "score"},
        "algorithm": {
            "algorithmName": "random",
            "algorithmSettings": [{"name": "random_state", "value": "7"}],
        },
        "parallelTrialCount": 2,
        "maxTrialCount": 2,
        "maxFailedTrialCount": 1,
        "metricsCollectorSpec": {
            "collector": {"kind": "File"},
            "source": {"fileSystemPath": {"path": METRICS, "kind": "File", "format": "JSON"}},
        },
        "parameters": [
            {"name": "x", "parameterType": "double", "feasibleSpace": {"min": "0", "max": "1"}}
        ],
        "trialTemplate": {
            "primaryContainerName": "training",
            "retain": True,
            "trialParameters": [{"name": "x", "reference": "x"}],
            "trialSpec": {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [
                                {
                                    "name": "training",
                                    "image": userland_image(),
                                    "imagePullPolicy": "Never",
                                    "command": [
                                        "python3",
                                        "/trial/trial.py",
                                        "--x=${trialParameters.x}",
                                    ],
                                    "volumeMounts": [{"name": "trial", "mountPath": "/trial"}],
                                }
                            ],
                            "volumes": [{"name": "trial", "configMap": {"name": "trial"}}],
                        }
                    },
                },
            },
        },
        **overrides,
    }
    return {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def conditions(node: RunningNode, namespace: str, name: str) -> dict[str, str]:
    got = node.kubectl("get", "experiment", name, "-n", namespace, "-o", "json").stdout
    status = json.loads(got).get("status", {})
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


def test_katib_runs_an_experiment_with_its_sidecar_db_and_suggestion_service(
    katib: RunningNode, katib_namespace: str
) -> None:
    script = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "trial", "namespace": katib_namespace},
        "data": {"trial.py": TRIAL},
    }
    katib.apply([script, experiment("quadratic", katib_namespace)])

    def ended() -> bool:
        seen = conditions(katib, katib_namespace, "quadratic")
        return seen.get("Succeeded") == "True" or seen.get("Failed") == "True"

    try:
        wait_for("Experiment quadratic to end", ended, timeout=420)
    finally:
        print(katib.kubectl("get", "experiments,trials,pods", "-n", katib_namespace).stdout)
    final = json.loads(
        katib.kubectl("get", "experiment", "quadratic", "-n", katib_namespace, "-o", "json").stdout
    )
    status = final["status"]
    assert conditions(katib, katib_namespace, "quadratic")["Succeeded"] == "True", status
    assert status["trialsSucceeded"] == 2
    trials = yaml.safe_load(
        katib.kubectl("get", "trials", "-n", katib_namespace, "-o", "yaml").stdout
    )["items"]
    assert len(trials) == 2
    for trial in trials:
        [assignment] = trial["spec"]["parameterAssignments"]
        x = float(assignment["value"])
        assert 0 <= x <= 1
        [metric] = trial["status"]["observation"]["metrics"]
        assert metric["name"] == "score"
        assert float(metric["latest"]) == pytest.approx(1 - (x - 0.3) ** 2)
    best = status["currentOptimalTrial"]
    best_score = float(best["observation"]["metrics"][0]["latest"])
    assert best_score == max(
        float(t["status"]["observation"]["metrics"][0]["latest"]) for t in trials
    )
    pods = trial_pods(katib, katib_namespace)
    assert len(pods) == 2
    for pod in pods:
        names = [c["name"] for c in pod["spec"]["containers"]]
        assert names == ["training", SIDECAR], "Katib's webhook injected its collector"
        assert pod["status"]["phase"] == "Succeeded"


def test_katibs_validating_webhook_refuses_an_impossible_experiment(
    katib: RunningNode, katib_namespace: str
) -> None:
    broken = experiment("broken", katib_namespace, parallelTrialCount=3)

    with pytest.raises(NodeError) as refused:
        katib.apply([broken])

    assert "admission webhook" in str(refused.value)
    assert "parallelTrialCount" in str(refused.value)
    assert katib.kubectl("get", "experiments", "-n", katib_namespace, "-o", "name").stdout == ""


def run_rendered(
    katib: RunningNode, namespace: str, manifest: dict[str, Any], trainer_script: str
) -> dict[str, Any]:
    """Apply the Experiment expand() renders for `manifest`, its trainer swapped for a script
    answering the same flags; return the Experiment once it ended."""
    manifest["metadata"]["namespace"] = namespace
    rendered = expand(parse_tuning(manifest))
    # Katib deletes a finished trial's Job and pods unless told to keep them: their logs are
    # what a failure here is explained with.
    rendered["spec"]["trialTemplate"]["retain"] = True
    job = rendered["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
    [trainer] = job["containers"]
    assert trainer["command"][:3] == ["python", "-m", "mnist_trainer"]
    trainer["image"] = userland_image()
    trainer["imagePullPolicy"] = "Never"
    trainer["command"] = ["python3", "/trial/trainer.py", *trainer["command"][3:]]
    trainer.setdefault("volumeMounts", []).append({"name": "trial", "mountPath": "/trial"})
    job.setdefault("volumes", []).append({"name": "trial", "configMap": {"name": "trial"}})
    # The trials' own count, on the node: which trial a pod runs, whatever Katib names it. The
    # trainer's user owns it, as kubelet would create it root's.
    counter = katib.layout.var / f"trial-counter-{namespace}"
    counter.mkdir()
    os.chown(counter, TRAINER_UID, TRAINER_UID)
    trainer["volumeMounts"].append({"name": "counter", "mountPath": "/counter"})
    job["volumes"].append(
        {"name": "counter", "hostPath": {"path": str(counter), "type": "Directory"}}
    )
    script = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "trial", "namespace": namespace},
        # The trainer's own early-stop guard beside the script, which imports it.
        "data": {"trainer.py": trainer_script, "early_stop.py": EARLY_STOP.read_text()},
    }
    name = rendered["metadata"]["name"]
    katib.apply([script, rendered])

    def ended() -> bool:
        seen = conditions(katib, namespace, name)
        return seen.get("Succeeded") == "True" or seen.get("Failed") == "True"

    try:
        wait_for(f"Experiment {name} to end", ended, timeout=420)
    except AssertionError as timed_out:
        ending = str(timed_out)
    else:
        ending = ""
    final: dict[str, Any] = json.loads(
        katib.kubectl("get", "experiment", name, "-n", namespace, "-o", "json").stdout
    )
    if conditions(katib, namespace, name).get("Succeeded") != "True":
        objects = katib.kubectl("get", "trials,pods", "-n", namespace, "-o", "yaml").stdout
        pods = "".join(
            katib.kubectl(
                "logs",
                "-n",
                namespace,
                "-l",
                selector,
                "--all-containers",
                "--prefix",
                "--tail=40",
                check=False,
            ).stdout
            for selector in ("katib.kubeflow.org/experiment", "katib.kubeflow.org/trial")
        )
        status = json.dumps(final["status"], indent=1)
        raise AssertionError(f"{ending}\n{status}\n{objects}\n{pods}")
    return final


# Our trainer's flags and metrics over several epochs, one report a second and a half: the first
# two trials on the node (counted in the hostPath `run_rendered` mounts) learn, the later ones
# do not.
LEARNING_THEN_NOT = (
    "import json, os, sys, time\n"
    "from pathlib import Path\n"
    "from early_stop import end_on_sigterm\n"
    "flags = dict(a.removeprefix('--').split('=', 1) for a in sys.argv[1:])\n"
    "end_on_sigterm(Path(flags['metrics-file']))\n"
    "with open('/counter/started', 'a+') as counter:\n"
    "    counter.write('started\\n')\n"
    "    counter.seek(0)\n"
    "    order = len(counter.readlines())\n"
    "accuracy = 0.9 if order <= 2 else 0.1\n"
    + WAIT_FOR_COLLECTOR
    + "for epoch in range(int(flags['epochs'])):\n"
    "    with open(flags['metrics-file'], 'a') as metrics:\n"
    "        metrics.write(json.dumps({'accuracy': str(accuracy), 'loss': str(1 - accuracy),\n"
    "                                  'timestamp': time.time()}) + '\\n')\n"
    "    time.sleep(1.5)\n"
)


def test_katib_stops_trials_below_the_median_with_the_early_stopping_stand_in(
    katib: RunningNode, katib_namespace: str
) -> None:
    manifest = yaml.safe_load((REPO_ROOT / "deploy/samples/early-stopping.yaml").read_text())
    # The stopped trial is the last: Katib v0.19.0 asks for no new trial while a stopped one has
    # no observation, which it reads only on an event of the trial's Job after the stop
    # (kubeflow/katib#1377), and a stopped trial's collector waits for ever, its Job unchanged.
    manifest["spec"]["budget"] = {"maxTrials": 3, "parallelTrials": 1, "maxFailedTrials": 0}
    manifest["spec"]["earlyStopping"] = {"rule": "median", "minTrials": 2, "startStep": 2}
    manifest["spec"]["fixed"]["epochs"] = 4
    final = run_rendered(katib, katib_namespace, manifest, LEARNING_THEN_NOT)

    status = final["status"]
    assert (status.get("trialsSucceeded"), status.get("trialsEarlyStopped")) == (2, 1), status
    listed = katib.kubectl("get", "trials", "-n", katib_namespace, "-o", "json").stdout
    trials = json.loads(listed)["items"]
    stopped = [t for t in trials if t["metadata"]["name"] in status["earlyStoppedTrialList"]]
    assert len(stopped) == 1
    for trial in stopped:
        [condition] = [c for c in trial["status"]["conditions"] if c["type"] == "EarlyStopped"]
        assert (condition["status"], condition["reason"]) == ("True", "TrialEarlyStopped")
        # The rule the stand-in gave: the mean of the two succeeded trials' first two reports.
        [rule] = trial["spec"]["earlyStoppingRules"]
        assert rule["name"] == "accuracy"
        assert rule["comparison"] == "less"
        assert float(rule["value"]) == pytest.approx(0.9)
        assert rule["startStep"] == 2
        # Katib v0.19.0 copies a stopped trial's reports into its status only when its
        # controller reads them after the collector stored them: where it did, they are bad.
        observed = (trial["status"].get("observation") or {}).get("metrics", [])
        accuracies = [float(m["latest"]) for m in observed if m["name"] == "accuracy"]
        assert accuracies in ([], [pytest.approx(0.1)]), observed
    assert status["currentOptimalTrial"]["bestTrialName"] in status["succeededTrialList"]
    # The stopped trainer kept the collector's marker, so Katib's wrapper shell could not mark
    # the run completed and ended 2; the others completed. (The kubelet may report the stopped
    # container's end after Katib marked the trial.)
    expected = {t["metadata"]["name"]: 2 if t in stopped else 0 for t in trials}

    def trainer_exits() -> dict[str, int | None]:
        return {
            pod["metadata"]["labels"]["katib.kubeflow.org/trial"]: {
                c["name"]: c["state"].get("terminated", {}).get("exitCode")
                for c in pod["status"]["containerStatuses"]
            }[PRIMARY_CONTAINER]
            for pod in trial_pods(katib, katib_namespace)
        }

    wait_for(f"trainers to exit {expected}", lambda: trainer_exits() == expected, timeout=60)
