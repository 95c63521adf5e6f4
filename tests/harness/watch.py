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

    `kubectl` is the command line up to its verb (the binary and its --kubeconfig).
    """
    argv = [*kubectl, "get", kind, "-n", namespace, *selector, "--watch",
            "--output-watch-events", "-o", "json"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert process.stdout is not None
    watch = Watch()
    reader = threading.Thread(target=watch.feed, args=(iter(process.stdout),), daemon=True)
    reader.start()
    try:
        yield watch
    finally:
        process.terminate()
        process.wait(timeout=10)
        reader.join(timeout=10)
