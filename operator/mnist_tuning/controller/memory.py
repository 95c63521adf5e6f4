"""What the operator remembers between reconciles.

In memory only: a restart rebuilds it from the watches, and a status it wrote is read back from
the tuning itself.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mnist_tuning.api.spec import MnistTuning

Key = tuple[str, str]  # a tuning's (namespace, name)


@dataclass(frozen=True)
class Plan:
    """One spec generation, parsed and expanded once."""

    generation: int | None
    tuning: MnistTuning | None
    wanted: dict[str, Any]
    invalid: str = ""


@dataclass
class Memory:
    """The newest tunings and Experiments seen, and what each reconcile leaves for the next.

    Every field is read and written under `lock`.
    """

    tunings: dict[Key, dict[str, Any]] = field(default_factory=dict)
    experiments: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # The pods of its trials and of its Experiment's suggestion, by name.
    pods: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    jobs: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)  # trial Jobs
    # Why the API server refused a trial Job's pod (the Job controller's Event), by Job name.
    refusals: dict[Key, dict[str, str]] = field(default_factory=dict)
    # The operator is the only writer of a tuning's status, so what it last wrote (by uid) is
    # the current status, even before the watch brings our own write back.
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    plans: dict[str, Plan] = field(default_factory=dict)
    last_write: dict[Key, float] = field(default_factory=dict)
    retries: dict[Key, int] = field(default_factory=dict)
    refused_budgets: set[tuple[str, int | None]] = field(default_factory=set)  # (uid, generation)
    enabled_namespaces: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def forget(self, key: Key, uid: str | None) -> None:
        """Drop everything kept for a deleted tuning."""
        with self.lock:
            self.last_write.pop(key, None)
            self.retries.pop(key, None)
            self.pods.pop(key, None)
            self.jobs.pop(key, None)
            self.refusals.pop(key, None)
            if uid is not None:
                self.written.pop(uid, None)
                self.plans.pop(uid, None)
                self.refused_budgets = {r for r in self.refused_budgets if r[0] != uid}

    def status_of(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return the tuning's current status: what we last wrote, else what the body carries."""
        with self.lock:
            written = self.written.get(body["metadata"]["uid"])
        return written if written is not None else (body.get("status") or {})
