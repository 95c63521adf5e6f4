"""Every version of every object a `kubectl get --watch` saw, in order, from before a test acted.

Controllers delete what they are done with (Katib a trial's pods) and move fast (Argo CD's health
is re-judged within a second), so what an object looked like, and in which order, is read from a
watch's history, never from a `get` racing the controller.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# How long a watch that ended waits before it starts again.
RESTART_S = 1.0


@dataclass
class Watch:
    """The history of a watch: every version of every object seen, in order."""

    history: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def feed(self, stream: Iterator[str]) -> None:
        """Read the watch's JSON documents (one after another, any layout) as they come."""
        decoder, buffer = json.JSONDecoder(), ""
        for chunk in stream:
            buffer += chunk
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except json.JSONDecodeError:
                    break
                buffer = buffer.lstrip()[end:]
                with self.lock:
                    self.history.append(event["object"])

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest version of each object seen, by name."""
        with self.lock:
            return {obj["metadata"]["name"]: obj for obj in self.history}

    def versions(self, name: str) -> list[dict[str, Any]]:
        """Every version of the object `name` seen, oldest first."""
        with self.lock:
            return [obj for obj in self.history if obj["metadata"]["name"] == name]


@contextmanager
def watching(kubectl: Sequence[str], kind: str, namespace: str, *selector: str) -> Iterator[Watch]:
    """A Watch over `kind` in `namespace` (`-l ...` in `selector`) for the duration of the block.

    `kubectl` is the command line up to its verb (the binary and its --kubeconfig). A watch that
    ends (the API server stopped under it) is started again: it lists every object anew, so the
    latest version of each is seen again once the API server is back.
    """
    argv = [*kubectl, "get", kind, "-n", namespace, *selector, "--watch",
            "--output-watch-events", "-o", "json"]  # fmt: skip
    watch, done = Watch(), threading.Event()
    current: list[subprocess.Popen[str]] = []

    def follow() -> None:
        while True:
            with watch.lock:
                if done.is_set():
                    return
                process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
                current[:] = [process]
            assert process.stdout is not None
            watch.feed(iter(process.stdout))
            process.wait()
            done.wait(RESTART_S)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        yield watch
    finally:
        with watch.lock:
            done.set()
            for process in current:
                process.terminate()
        reader.join(timeout=10)
        for process in current:
            process.wait(timeout=10)
