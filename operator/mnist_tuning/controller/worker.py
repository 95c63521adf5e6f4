"""The workers: make a queued tuning what its newest state asks for.

A key that fails comes back with backoff. The decisions are `reconcile.py`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from mnist_tuning.api.expand import DEFAULT_TRAINER_IMAGE, budget_of, expand
from mnist_tuning.api.spec import SpecError, parse_tuning
from mnist_tuning.api.summarize import summarize
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.experiments import Experiments, created_event
from mnist_tuning.controller.kube import Kube
from mnist_tuning.controller.memory import Key, Memory, Plan
from mnist_tuning.controller.pods import pods_condition
from mnist_tuning.controller.queue import DelayQueue
from mnist_tuning.controller.reconcile import (
    Event,
    invalid_status,
    is_settled,
    mirrored_status,
    pods_condition_of,
    status_events,
)
from mnist_tuning.controller.settings import OperatorSettings
from mnist_tuning.controller.watches import owner_uid
from mnist_tuning.controller.writes import RetryError, SettledError, StatusWriter

logger = logging.getLogger("mnist_tuning.operator")

NAMESPACE_CACHE_SECONDS = 10.0  # how long a namespace's Katib label is trusted


@dataclass
class Worker:
    """What every worker thread runs; they share the memory, the queue and the API."""

    kube: Kube
    settings: OperatorSettings
    memory: Memory
    queue: DelayQueue[Key]
    writer: StatusWriter
    experiments: Experiments

    @classmethod
    def build(
        cls, kube: Kube, settings: OperatorSettings, memory: Memory, queue: DelayQueue[Key]
    ) -> Worker:
        """Wire a worker to the API, with its status writer and Experiment steps."""
        writer = StatusWriter(kube, memory)
        experiments = Experiments(kube, memory, writer, settings)
        return cls(kube, settings, memory, queue, writer, experiments)

    @property
    def default_image(self) -> str:
        """The trainer image for tunings that do not name one."""
        return self.settings.trial_image or DEFAULT_TRAINER_IMAGE

    def work(self) -> None:
        """Reconcile keys until the queue closes; a failing key comes back with backoff."""
        while (key := self.queue.get()) is not None:
            again: float | None = None  # seconds until this key is tried again
            try:
                self.reconcile(key)
            except SettledError as settled:
                logger.info("%s/%s: %s", *key, settled)
            except RetryError as retry:
                logger.info("%s/%s: %s", *key, retry)
                again = self._backoff(key) if retry.delay is None else retry.delay
            except ApiException as exc:
                logger.warning("%s/%s: the API server answered %s %s", *key, exc.status, exc.reason)
                again = self._backoff(key)
            except Exception:
                logger.exception("%s/%s: reconcile failed", *key)
                again = self._backoff(key)
            finally:
                self.queue.done(key)
            if again is None:
                with self.memory.lock:
                    self.memory.retries.pop(key, None)
            else:
                self.queue.add(key, again)

    def _backoff(self, key: Key) -> float:
        """Return the next delay for a key that keeps failing (it doubles up to a cap)."""
        with self.memory.lock:
            tries = self.memory.retries.get(key, 0)
            self.memory.retries[key] = tries + 1
        return self.settings.retry_delay(tries)

    def reconcile(self, key: Key) -> None:
        """Make the tuning's Experiment and status what its newest spec asks for."""
        with self.memory.lock:
            body = self.memory.tunings.get(key)
            owned = list(self.memory.experiments.get(key, {}).values())
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        meta = body["metadata"]
        uid = meta["uid"]
        old = self.memory.status_of(body)
        plan = self._plan(body)
        mine = [e for e in owned if owner_uid(e) == uid]
        if plan.tuning is None:
            # No Experiment serves an invalid spec; one left running would run beside the
            # fixed spec's (the status no longer names it).
            self.experiments.delete_stale(mine, keep=None)
            new = invalid_status(old, message=plan.invalid, generation=plan.generation, at=c.now())
            event = Event("Warning", c.SPEC_INVALID, plan.invalid)
            self.writer.write(body, old, new, on_change=[event])
            return
        tuning, wanted = plan.tuning, plan.wanted
        name = wanted["metadata"]["name"]
        experiment = next((e for e in mine if e["metadata"]["name"] == name), None)
        running = None if experiment is None else summarize(experiment, tuning).phase
        if is_settled(old, plan.generation, running):
            return
        if experiment is not None and experiment["metadata"].get("deletionTimestamp"):
            raise RetryError(f"Experiment {name} is being deleted", delay=1.0)
        happened: list[Event] = []
        if experiment is None:
            # Only a create needs the label: an Experiment that exists was let in already.
            if not self.namespace_enabled(meta["namespace"]):
                message = c.namespace_message(meta["namespace"])
                self.writer.fault(body, old, tuning, "Pending", message)
            experiment, created = self.experiments.create(body, old, tuning, wanted, mine)
            if created:
                replaced = [
                    e["metadata"]["name"]
                    for e in mine
                    if e["metadata"]["name"] != name and not e["metadata"].get("deletionTimestamp")
                ]
                happened.append(created_event(old, name, replaced))
        experiment, patched = self.experiments.patch_budget(body, tuning, old, experiment, wanted)
        happened.extend(patched)
        self.experiments.delete_stale(mine, keep=name)
        with self.memory.lock:
            pods = list(self.memory.pods.get(key, {}).values())
            jobs = list(self.memory.jobs.get(key, {}).values())
            refusals = dict(self.memory.refusals.get(key, {}))
        stuck = pods_condition(
            pods, jobs, name, plan.generation, pods_condition_of(old), refusals=refusals
        )
        new = mirrored_status(
            tuning, experiment, old, wanted_budget=budget_of(wanted), at=c.now(), stuck=stuck
        )
        on_change = status_events(tuning, old, new)
        self.writer.write(body, old, new, happened=happened, on_change=on_change)

    def _plan(self, body: Mapping[str, Any]) -> Plan:
        """Parse and expand a generation once; later reconciles of it reuse the result."""
        meta = body["metadata"]
        generation = meta.get("generation")
        with self.memory.lock:
            plan = self.memory.plans.get(meta["uid"])
        if plan is not None and plan.generation == generation:
            return plan
        try:
            tuning = parse_tuning(body)
            plan = Plan(generation, tuning, expand(tuning, default_image=self.default_image))
        except SpecError as exc:
            plan = Plan(generation, None, {}, invalid=str(exc))
        with self.memory.lock:
            self.memory.plans[meta["uid"]] = plan
        return plan

    def namespace_enabled(self, namespace: str) -> bool:
        """Read the Katib label (a positive answer is trusted for a few seconds)."""
        now = time.monotonic()
        with self.memory.lock:
            seen = self.memory.enabled_namespaces.get(namespace)
        if seen is not None and now - seen < NAMESPACE_CACHE_SECONDS:
            return True
        enabled = self.kube.namespace_labels(namespace).get(c.LABEL_KATIB_INJECTION) == "enabled"
        with self.memory.lock:
            if enabled:
                self.memory.enabled_namespaces[namespace] = now
            else:
                self.memory.enabled_namespaces.pop(namespace, None)
        return enabled
