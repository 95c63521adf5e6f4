"""The e2e tiers' watch keeps following its objects when the API server under it stops."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from watch import watching

# Stands in for `kubectl get --watch` against an API server that stops: each run prints one
# event, numbered by how many runs came before it, and exits as kubectl does when the
# server goes away. The script ignores the arguments `watching` appends.
ONE_EVENT_THEN_GONE = """
import json, pathlib, sys
runs = pathlib.Path(sys.argv[1])
count = int(runs.read_text()) + 1 if runs.exists() else 1
runs.write_text(str(count))
print(json.dumps({"type": "ADDED", "object": {"metadata": {"name": "p", "run": count}}}))
"""


def test_a_watch_whose_kubectl_ends_starts_again_and_sees_the_objects_anew(
    tmp_path: Path,
) -> None:
    script = tmp_path / "kubectl.py"
    script.write_text(ONE_EVENT_THEN_GONE)
    with watching([sys.executable, str(script), str(tmp_path / "runs")], "pods", "ns") as watch:
        deadline = time.monotonic() + 30
        while len(watch.versions("p")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    runs = [obj["metadata"]["run"] for obj in watch.versions("p")]
    assert runs[:3] == [1, 2, 3]
    assert watch.latest()["p"]["metadata"]["run"] == runs[-1]
