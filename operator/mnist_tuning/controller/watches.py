"""What the watches see: the newest tunings and our Experiments, and the keys they queue.

A new spec is queued at once, anything else coalesced with the last status write.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mnist_tuning.api.expand import LABEL_TUNING
from mnist_tuning.api.spec import API_VERSION, KIND
from mnist_tuning.controller.memory import Key, Memory
from mnist_tuning.controller.pods import killed
from mnist_tuning.controller.queue import DelayQueue
from mnist_tuning.controller.settings import OperatorSettings

# The parts of an Experiment the reconcile reads: summarize() and budget_of().
EXPERIMENT_SPEC_KEYS = ("algorithm", "maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")


@dataclass
class Watches:
    """Feeds `Memory` from kopf's watch events and queues the tunings they concern."""

    memory: Memory
    queue: DelayQueue[Key]
    settings: OperatorSettings

    def saw_tuning(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Keep the newest tuning; reconcile a new spec now, anything else coalesced."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self.memory.lock:
            before = self.memory.tunings.pop(key, None)
            if event_type != "DELETED":
                self.memory.tunings[key] = trimmed(body, ("spec", "status"))
        if event_type == "DELETED":
            self.memory.forget(key, None if before is None else before["metadata"]["uid"])
            return
        # Our own status write comes back here too: it must not cut a coalesced burst short.
        same = before is not None and all(
            before["metadata"].get(k) == meta.get(k) for k in ("uid", "generation")
        )
        self.queue.add(key, self._coalesced(key) if same else 0.0)

    def saw_experiment(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Keep the newest Experiment under its tuning; reconcile that one, coalesced."""
        owner = owner_of(body)
        if owner is None:
            return
        meta = body["metadata"]
        key = (meta["namespace"], str(owner["name"]))
        with self.memory.lock:
            owned = self.memory.experiments.setdefault(key, {})
            if event_type == "DELETED":
                owned.pop(meta["name"], None)
                if not owned:
                    del self.memory.experiments[key]
            else:
                owned[meta["name"]] = trimmed(body, ("status",), EXPERIMENT_SPEC_KEYS)
        self.queue.add(key, self._coalesced(key))

    def saw_pod(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Keep the newest of a tuning's pods (by our label); reconcile it, coalesced.

        Its trials' pods carry the label from our Job template, and its suggestion's pods too:
        Katib copies the Experiment's labels onto the Suggestion and from there onto its pods.
        """
        meta = body["metadata"]
        tuning = (meta.get("labels") or {}).get(LABEL_TUNING)
        if tuning:
            self._keep((meta["namespace"], str(tuning)), self.memory.pods, event_type, body)

    def saw_trial_job(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Keep the newest of a tuning's trial Jobs (by our label); reconcile it, coalesced."""
        meta = body["metadata"]
        tuning = (meta.get("labels") or {}).get(LABEL_TUNING)
        if not tuning:
            return
        key = (meta["namespace"], str(tuning))
        if event_type == "DELETED":
            with self.memory.lock:
                refused = self.memory.refusals.get(key, {})
                refused.pop(meta["name"], None)
                if not refused:
                    self.memory.refusals.pop(key, None)
        self._keep(key, self.memory.jobs, event_type, body)

    def saw_refusal(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Keep why the API server refused a trial Job's pod; reconcile its tuning, coalesced.

        The Job controller says so only in an Event on the Job (`FailedCreate`): the Job's
        status does not change, and there is no pod. Its tuning is the one whose trial Jobs
        the watch has seen by that name; an Event before its Job is seen again when the Job
        controller retries.
        """
        regarding = body.get("involvedObject") or {}
        if event_type == "DELETED" or regarding.get("kind") != "Job":
            return
        namespace, job = regarding.get("namespace"), regarding.get("name")
        with self.memory.lock:
            keys = [k for k, jobs in self.memory.jobs.items() if k[0] == namespace and job in jobs]
            for key in keys:
                self.memory.refusals.setdefault(key, {})[str(job)] = str(body.get("message"))
        for key in keys:
            self.queue.add(key, self._coalesced(key))

    def _keep(
        self,
        key: Key,
        kept: dict[Key, dict[str, dict[str, Any]]],
        event_type: str | None,
        body: Mapping[str, Any],
    ) -> None:
        """Keep (or drop) one pod or Job of a tuning in `kept`, then queue the tuning.

        A killed one is kept after its deletion, until the tuning goes: its cause is shown for
        the Experiment's life, and Katib deletes it before a coalesced reconcile may run.
        """
        name = body["metadata"]["name"]
        with self.memory.lock:
            objects = kept.setdefault(key, {})
            if event_type == "DELETED" and not killed(body):
                objects.pop(name, None)
                if not objects:
                    del kept[key]
            else:
                objects[name] = trimmed(body, ("status",), ("activeDeadlineSeconds",))
        self.queue.add(key, self._coalesced(key))

    def _coalesced(self, key: Key) -> float:
        """Return how long a change must wait: until the last write's interval is over."""
        with self.memory.lock:
            written = self.memory.last_write.get(key)
        if written is None:
            return 0.0
        return written + self.settings.status_interval_seconds - time.monotonic()


def trimmed(
    body: Mapping[str, Any], keep: tuple[str, ...], spec_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Copy what the reconcile reads of an object (memory stays flat with many of them)."""
    meta = body.get("metadata") or {}
    kept: dict[str, Any] = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta[k]
            for k in (
                "name",
                "namespace",
                "uid",
                "generation",
                "labels",
                "annotations",
                "ownerReferences",
                "deletionTimestamp",
            )
            if k in meta
        },
    }
    for part in keep:
        kept[part] = dict(body.get(part) or {})
    if spec_keys:
        spec = body.get("spec") or {}
        kept["spec"] = {k: spec[k] for k in spec_keys if k in spec}
    return kept


def owner_of(experiment: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the controlling MnistTuning owner reference, if any."""
    for ref in (experiment.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion") == API_VERSION
        ):
            return dict(ref)
    return None


def owner_uid(experiment: Mapping[str, Any]) -> str | None:
    """Return the uid of the tuning that owns the Experiment, if one does."""
    owner = owner_of(experiment)
    return None if owner is None else owner.get("uid")
