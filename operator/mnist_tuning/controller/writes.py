"""The one place a tuning's status is written, with the Events that go with it.

Also the two ways a reconcile ends early: retry later, or settled until the spec changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from mnist_tuning.api.expand import resolve_seed
from mnist_tuning.api.spec import Condition, MnistTuning, Phase
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.kube import Kube
from mnist_tuning.controller.memory import Memory
from mnist_tuning.controller.reconcile import Event, fault_status, status_patch

logger = logging.getLogger("mnist_tuning.operator")


class RetryError(Exception):
    """Reconcile this tuning again later; the message says what it waits for."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class SettledError(Exception):
    """The generation has its answer (a refusal): nothing to retry until the spec changes."""


@dataclass
class StatusWriter:
    """Patches a tuning's status only when it changed, and remembers what it wrote."""

    kube: Kube
    memory: Memory

    def write(
        self,
        body: Mapping[str, Any],
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        *,
        happened: list[Event] | None = None,
        on_change: list[Event] | None = None,
    ) -> None:
        """Patch the status if it changed; post what happened, and what shows if it changed."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        patch = status_patch(old, new)
        events = list(happened or [])
        if patch is not None:
            if not self.kube.patch_tuning_status(meta["namespace"], meta["name"], patch):
                return  # deleted meanwhile: nothing to report on
            with self.memory.lock:
                self.memory.written[meta["uid"]] = dict(new)
                self.memory.last_write[key] = time.monotonic()
            events.extend(on_change or [])
        for event in events:
            try:
                self.kube.post_event(body, event.type, event.reason, event.message)
            except ApiException as exc:
                logger.warning("%s/%s: Event %s not posted: %s", *key, event.reason, exc.reason)

    def fault(
        self,
        body: Mapping[str, Any],
        old: Mapping[str, Any],
        tuning: MnistTuning,
        phase: Phase,
        message: str,
        faults: list[Condition] | None = None,
        reason: str = c.NAMESPACE_NOT_ENABLED,
    ) -> None:
        """Write the fault's status (and its Warning, once), then stop this reconcile.

        A Pending fault may heal and is retried; a Failed one waits for a new generation.
        """
        generation = tuning.metadata.generation
        if faults is None:
            faults = [c.condition(c.NAMESPACE_ENABLED, False, reason, message, generation)]
        new = fault_status(
            tuning, old, phase=phase, faults=faults, seed=resolve_seed(tuning), at=c.now()
        )
        self.write(body, old, new, on_change=[Event("Warning", reason, message)])
        if phase == "Pending":
            raise RetryError(message)
        raise SettledError(message)
