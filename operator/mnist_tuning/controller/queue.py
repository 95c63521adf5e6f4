"""A delay queue of keys to reconcile: each key queued once, held by one worker at a time.

Level-triggered reconciles only need to know *that* a tuning may be out of date, never
how often: a key added again while queued keeps its earliest due time, and one added
while a worker holds it comes back when that worker is done, so the newest state is
always read and a burst of changes costs one reconcile.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DelayQueue(Generic[K]):
    """Keys with due times; `get` blocks until one is due (or the queue is closed)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, K]] = []
        self._queued: dict[K, tuple[float, int]] = {}  # key -> its live heap entry
        self._held: set[K] = set()
        self._again: dict[K, float] = {}  # held keys added meanwhile -> earliest due time
        self._order = itertools.count()
        self._closed = False

    def add(self, key: K, delay: float = 0.0) -> None:
        """Queue `key` to be due in `delay` seconds, unless it is due sooner already."""
        due = time.monotonic() + max(0.0, delay)
        with self._cond:
            if key in self._held:
                self._again[key] = min(due, self._again.get(key, due))
                return
            queued = self._queued.get(key)
            if queued is not None and queued[0] <= due:
                return
            entry = (due, next(self._order))
            self._queued[key] = entry
            heapq.heappush(self._heap, (*entry, key))
            self._cond.notify()

    def get(self) -> K | None:
        """Wait for a due key and hold it; None once the queue is closed."""
        with self._cond:
            while not self._closed:
                while self._heap and self._queued.get(self._heap[0][2]) != self._heap[0][:2]:
                    heapq.heappop(self._heap)  # superseded by an earlier due time
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    _, _, key = heapq.heappop(self._heap)
                    del self._queued[key]
                    self._held.add(key)
                    return key
                self._cond.wait(self._heap[0][0] - now if self._heap else None)
            return None

    def done(self, key: K) -> None:
        """Release a held key; it is queued again if it was added while held."""
        with self._cond:
            self._held.discard(key)
            again = self._again.pop(key, None)
        if again is not None:
            self.add(key, again - time.monotonic())

    def close(self) -> None:
        """Wake every waiting worker with None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
