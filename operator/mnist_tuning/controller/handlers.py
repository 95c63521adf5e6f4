"""kopf watches, a level-triggered reconcile does the rest: one write per change, no bookkeeping.

kopf only watches here. Tunings and our Experiments reach `on.event` handlers, which keep
the newest body of each and queue the tuning's key; kopf has no change handlers, so it
writes no progress or diff-base annotations and adds no finalizer anywhere. Worker
threads take keys off a `DelayQueue` and make the tuning what its newest state asks for:

- The reconcile computes the whole status and writes it as one merge patch against what it
  last wrote, only when it differs. A restart, a replayed watch, our own write coming back
  as an event: each reconciles to the same status and writes nothing. A generation is done
  (left alone) once its status says it ended with that `observedGeneration`.
- Experiment events coalesce: a key is queued once, and a tuning whose status was written
  less than `status_interval_seconds` ago waits out the rest of it, so a burst of Katib
  updates costs one write at its start and one at its end.
- Events are posted for what happened (created, replaced, recreated, budget patched) and,
  only with a status change, for what it shows (a fault, a better best trial, the end).
- Faults that may heal (namespace not labelled, Katib missing, RBAC) queue the key again
  with exponential backoff; a refusal or an invalid spec waits for a new generation.
- The watch tells which Experiments a tuning owns, so stale ones (a replaced or invalid
  spec, one left by a restart) are deleted without a list call, and one deleted behind our
  back queues its tuning, which creates it again unless that generation had ended.

Owner references clean up after a deleted tuning, so deleting one never waits for us.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from mnist_tuning.api.expand import (
    DEFAULT_TRAINER_IMAGE,
    LABEL_TUNING,
    budget_of,
    expand,
    resolve_seed,
)
from mnist_tuning.api.spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    MnistTuning,
    Phase,
    SpecError,
    parse_tuning,
)
from mnist_tuning.api.summarize import summarize
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.kube import EXPERIMENTS, KATIB_GROUP, KATIB_VERSION, Kube, refusal
from mnist_tuning.controller.queue import DelayQueue
from mnist_tuning.controller.reconcile import (
    Event,
    fault_status,
    invalid_status,
    is_settled,
    katib_found,
    mirrored_status,
    namespace_enabled,
    status_events,
    status_patch,
)
from mnist_tuning.controller.settings import OperatorSettings

registry = kopf.OperatorRegistry()
logger = logging.getLogger("mnist_tuning.operator")

NAMESPACE_CACHE_SECONDS = 10.0  # how long a namespace's Katib label is trusted
Key = tuple[str, str]  # a tuning's (namespace, name)
# The parts of an Experiment the reconcile reads: summarize() and budget_of().
EXPERIMENT_SPEC_KEYS = ("algorithm", "maxTrialCount", "parallelTrialCount", "maxFailedTrialCount")


class RetryError(Exception):
    """Reconcile this tuning again later; the message says what it waits for."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class Plan:
    """One spec generation, parsed and expanded once."""

    generation: int | None
    tuning: MnistTuning | None
    wanted: dict[str, Any]
    invalid: str = ""


@dataclass
class Operator:
    """What the handlers and workers share: the API, the watched objects, the queue."""

    kube: Kube
    settings: OperatorSettings
    queue: DelayQueue[Key] = field(default_factory=DelayQueue)
    _tunings: dict[Key, dict[str, Any]] = field(default_factory=dict)
    _experiments: dict[Key, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # The operator is the only writer of a tuning's status, so what it last wrote (by uid) is
    # the current status, even before the watch brings our own write back.
    _written: dict[str, dict[str, Any]] = field(default_factory=dict)
    _plans: dict[str, Plan] = field(default_factory=dict)
    _last_write: dict[Key, float] = field(default_factory=dict)
    _retries: dict[Key, int] = field(default_factory=dict)
    _refused_budgets: set[tuple[str, int | None]] = field(default_factory=set)  # (uid, generation)
    _enabled_namespaces: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def default_image(self) -> str:
        """The trainer image for tunings that do not name one."""
        return self.settings.trial_image or DEFAULT_TRAINER_IMAGE

    # -- what the watches see ----------------------------------------------------------------

    def saw_tuning(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Keep the newest tuning; reconcile a new spec now, anything else coalesced."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            before = self._tunings.pop(key, None)
            if event_type == "DELETED":
                self._last_write.pop(key, None)
                self._retries.pop(key, None)
                if before is not None:
                    uid = before["metadata"]["uid"]
                    self._written.pop(uid, None)
                    self._plans.pop(uid, None)
                    self._refused_budgets = {r for r in self._refused_budgets if r[0] != uid}
                return
            self._tunings[key] = _trimmed(body, ("spec", "status"))
        # Our own status write comes back here too: it must not cut a coalesced burst short.
        same = before is not None and all(
            before["metadata"].get(k) == meta.get(k) for k in ("uid", "generation")
        )
        self.queue.add(key, self._coalesced(key) if same else 0.0)

    def saw_experiment(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Keep the newest Experiment under its tuning; reconcile that one, coalesced."""
        owner = _owner(body)
        if owner is None:
            return
        meta = body["metadata"]
        key = (meta["namespace"], str(owner["name"]))
        with self._lock:
            owned = self._experiments.setdefault(key, {})
            if event_type == "DELETED":
                owned.pop(meta["name"], None)
                if not owned:
                    del self._experiments[key]
            else:
                owned[meta["name"]] = _trimmed(body, ("status",), EXPERIMENT_SPEC_KEYS)
        self.queue.add(key, self._coalesced(key))

    def _coalesced(self, key: Key) -> float:
        """Return how long a change must wait: until the last write's interval is over."""
        with self._lock:
            written = self._last_write.get(key)
        if written is None:
            return 0.0
        return written + self.settings.status_interval_seconds - time.monotonic()

    # -- the workers ---------------------------------------------------------------------------

    def work(self) -> None:
        """Reconcile keys until the queue closes; a failing key comes back with backoff."""
        while (key := self.queue.get()) is not None:
            again: float | None = None  # seconds until this key is tried again
            try:
                self.reconcile(key)
            except _SettledError as settled:
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
                with self._lock:
                    self._retries.pop(key, None)
            else:
                self.queue.add(key, again)

    def _backoff(self, key: Key) -> float:
        """Return the next delay for a key that keeps failing (it doubles up to a cap)."""
        with self._lock:
            tries = self._retries.get(key, 0)
            self._retries[key] = tries + 1
        return self.settings.retry_delay(tries)

    def reconcile(self, key: Key) -> None:
        """Make the tuning's Experiment and status what its newest spec asks for."""
        with self._lock:
            body = self._tunings.get(key)
            owned = list(self._experiments.get(key, {}).values())
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        meta = body["metadata"]
        uid = meta["uid"]
        old = self._status_of(body)
        plan = self._plan(body)
        mine = [e for e in owned if _owner_uid(e) == uid]
        if plan.tuning is None:
            # No Experiment serves an invalid spec; one left running would run beside the
            # fixed spec's (the status no longer names it).
            self._delete_stale(mine, keep=None)
            new = invalid_status(old, message=plan.invalid, generation=plan.generation, at=c.now())
            self._write(body, old, new, on_change=[Event("Warning", c.SPEC_INVALID, plan.invalid)])
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
                self._fault(body, old, tuning, "Pending", c.namespace_message(meta["namespace"]))
            experiment, created = self._create(body, old, tuning, wanted, mine)
            if created:
                replaced = [
                    e["metadata"]["name"]
                    for e in mine
                    if e["metadata"]["name"] != name and not e["metadata"].get("deletionTimestamp")
                ]
                happened.append(_created_event(old, name, replaced))
        experiment, patched = self._patch_budget(body, tuning, old, experiment, wanted)
        happened.extend(patched)
        self._delete_stale(mine, keep=name)
        new = mirrored_status(tuning, experiment, old, wanted_budget=budget_of(wanted), at=c.now())
        self._write(body, old, new, happened=happened, on_change=status_events(tuning, old, new))

    # -- steps ---------------------------------------------------------------------------------

    def _plan(self, body: Mapping[str, Any]) -> Plan:
        """Parse and expand a generation once; later reconciles of it reuse the result."""
        meta = body["metadata"]
        generation = meta.get("generation")
        with self._lock:
            plan = self._plans.get(meta["uid"])
        if plan is not None and plan.generation == generation:
            return plan
        try:
            tuning = parse_tuning(body)
            plan = Plan(generation, tuning, expand(tuning, default_image=self.default_image))
        except SpecError as exc:
            plan = Plan(generation, None, {}, invalid=str(exc))
        with self._lock:
            self._plans[meta["uid"]] = plan
        return plan

    def _status_of(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        with self._lock:
            written = self._written.get(body["metadata"]["uid"])
        return written if written is not None else (body.get("status") or {})

    def namespace_enabled(self, namespace: str) -> bool:
        """Read the Katib label (a positive answer is trusted for a few seconds)."""
        now = time.monotonic()
        with self._lock:
            seen = self._enabled_namespaces.get(namespace)
        if seen is not None and now - seen < NAMESPACE_CACHE_SECONDS:
            return True
        enabled = self.kube.namespace_labels(namespace).get(c.LABEL_KATIB_INJECTION) == "enabled"
        with self._lock:
            if enabled:
                self._enabled_namespaces[namespace] = now
            else:
                self._enabled_namespaces.pop(namespace, None)
        return enabled

    def _fault(
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
        self._write(body, old, new, on_change=[Event("Warning", reason, message)])
        if phase == "Pending":
            raise RetryError(message)
        raise _SettledError(message)

    def _create(
        self,
        body: Mapping[str, Any],
        old: Mapping[str, Any],
        tuning: MnistTuning,
        wanted: dict[str, Any],
        mine: list[dict[str, Any]],
    ) -> tuple[dict[str, Any], bool]:
        """Create the Experiment (True), or read the one that is there already (False).

        Admission runs before the API server's existence check, so a refused create may be
        of an Experiment that exists (e.g. with a smaller budget): that one counts as existing.
        """
        meta = wanted["metadata"]
        generation = tuning.metadata.generation
        try:
            created = self.kube.create_experiment(wanted)
        except ApiException as exc:
            why = refusal(exc)
            namespace = meta["namespace"]
            if why.katib_missing:
                message = c.katib_missing_message(namespace)
                faults = [
                    namespace_enabled(generation),
                    c.condition(
                        c.KATIB_AVAILABLE, False, c.KATIB_NOT_INSTALLED, message, generation
                    ),
                ]
                self._fault(body, old, tuning, "Pending", message, faults, c.KATIB_NOT_INSTALLED)
            if why.forbidden_by_rbac:
                message = f"the operator's ServiceAccount may not do this: {why.message}"
                faults = [
                    c.condition(
                        c.EXPERIMENT_ACCEPTED, False, c.OPERATOR_FORBIDDEN, message, generation
                    )
                ]
                self._fault(body, old, tuning, "Pending", message, faults, c.OPERATOR_FORBIDDEN)
            if not why.refused:
                raise
            existing = self.kube.get_experiment(namespace, meta["name"])
            if existing is None:
                self._delete_stale(mine, keep=None)  # the spec it served is gone
                refused = c.condition(
                    c.EXPERIMENT_ACCEPTED, False, c.EXPERIMENT_REFUSED, why.message, generation
                )
                faults = [katib_found(generation), namespace_enabled(generation), refused]
                self._fault(body, old, tuning, "Failed", why.message, faults, c.EXPERIMENT_REFUSED)
            created = None
        else:
            if created is not None:
                return created, True
            existing = self.kube.get_experiment(meta["namespace"], meta["name"])
        if existing is None:
            raise RetryError(f"Experiment {meta['name']} is being deleted", delay=1.0)
        if _owner_uid(existing) != body["metadata"]["uid"]:
            raise RetryError(
                f"Experiment {meta['name']} belongs to an earlier tuning of the same name; "
                "waiting for the garbage collector to remove it",
                delay=self.settings.retry_base_seconds,
            )
        return existing, False

    def _patch_budget(
        self,
        body: Mapping[str, Any],
        tuning: MnistTuning,
        old: Mapping[str, Any],
        experiment: dict[str, Any],
        wanted: Mapping[str, Any],
    ) -> tuple[dict[str, Any], list[Event]]:
        """Budget edits go into the running Experiment; a refused one leaves it running as is."""
        have, want = budget_of(experiment), budget_of(wanted)
        refused_before = (body["metadata"]["uid"], tuning.metadata.generation)
        if have == want or refused_before in self._refused_budgets:
            return experiment, []  # a refusal stays shown (mirrored_status) until the next edit
        meta = experiment["metadata"]
        try:
            patched = self.kube.patch_experiment_spec(meta["namespace"], meta["name"], want)
        except ApiException as exc:
            why = refusal(exc)
            if not why.refused:
                raise
            message = f"the budget change was refused, the Experiment runs on: {why.message}"
            refused = c.condition(
                c.EXPERIMENT_ACCEPTED,
                False,
                c.EXPERIMENT_REFUSED,
                message,
                tuning.metadata.generation,
            )
            new = mirrored_status(
                tuning, experiment, old, wanted_budget=want, at=c.now(), refused=refused
            )
            self._write(body, old, new, on_change=[Event("Warning", c.EXPERIMENT_REFUSED, message)])
            with self._lock:
                self._refused_budgets.add(refused_before)
            raise _SettledError(why.message) from None
        change = ", ".join(
            f"{key} {have.get(key)}→{value}"
            for key, value in want.items()
            if have.get(key) != value
        )
        return patched, [
            Event("Normal", c.BUDGET_UPDATED, f"patched Experiment {meta['name']}: {change}")
        ]

    def _delete_stale(self, mine: list[dict[str, Any]], keep: str | None) -> None:
        """Delete this tuning's Experiments for other specs than the one it has now."""
        for experiment in mine:
            meta = experiment["metadata"]
            if meta["name"] != keep and not meta.get("deletionTimestamp"):
                self.kube.delete_experiment(meta["namespace"], meta["name"])
                logger.info(
                    "%s: deleted Experiment %s of an earlier spec", meta["namespace"], meta["name"]
                )

    def _write(
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
            with self._lock:
                self._written[meta["uid"]] = dict(new)
                self._last_write[key] = time.monotonic()
            events.extend(on_change or [])
        for event in events:
            try:
                self.kube.post_event(body, event.type, event.reason, event.message)
            except ApiException as exc:
                logger.warning("%s/%s: Event %s not posted: %s", *key, event.reason, exc.reason)


class _SettledError(Exception):
    """The generation has its answer (a refusal): nothing to retry until the spec changes."""


def _created_event(old: Mapping[str, Any], name: str, replaced: list[str]) -> Event:
    """Say why an Experiment was created: the first, a replacement, or a recreation."""
    if replaced:
        return Event(
            "Normal",
            c.EXPERIMENT_REPLACED,
            f"the spec changed beyond the budget: replaced Experiment {', '.join(replaced)} "
            f"with {name}",
        )
    if old.get("experiment") == name:
        return Event(
            "Warning",
            c.EXPERIMENT_RECREATED,
            f"Experiment {name} was deleted while the tuning was unfinished; created it again",
        )
    return Event("Normal", c.EXPERIMENT_CREATED, f"created Katib Experiment {name}")


def _trimmed(
    body: Mapping[str, Any], keep: tuple[str, ...], spec_keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Copy what the reconcile reads of an object (memory stays flat with many of them)."""
    meta = body.get("metadata") or {}
    trimmed: dict[str, Any] = {
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
        trimmed[part] = dict(body.get(part) or {})
    if spec_keys:
        spec = body.get("spec") or {}
        trimmed["spec"] = {k: spec[k] for k in spec_keys if k in spec}
    return trimmed


def _owner(experiment: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Return the controlling MnistTuning owner reference, if any."""
    for ref in (experiment.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and ref.get("apiVersion") == API_VERSION
        ):
            return dict(ref)
    return None


def _owner_uid(experiment: Mapping[str, Any]) -> str | None:
    owner = _owner(experiment)
    return None if owner is None else owner.get("uid")


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in the way `Kube` does: in-cluster ServiceAccount, else $KUBECONFIG."""
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Build the shared state and start the workers; kopf itself only watches."""
    config: OperatorSettings = memo["config"]
    settings.posting.enabled = False
    operator = Operator(Kube(), config)
    memo["operator"] = operator
    memo["workers"] = [
        threading.Thread(target=operator.work, name=f"reconcile-{i}", daemon=True)
        for i in range(config.workers)
    ]
    for worker in memo["workers"]:
        worker.start()


@kopf.on.cleanup(registry=registry)
def stop(memo: Any, **_: Any) -> None:
    """Let the workers finish what they hold, then stop them."""
    memo["operator"].queue.close()
    for worker in memo["workers"]:
        worker.join(timeout=10)


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def tuning_seen(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Any change of a tuning, and every tuning at start: reconcile it."""
    memo["operator"].saw_tuning(type, body)


@kopf.on.event(
    KATIB_GROUP,
    KATIB_VERSION,
    EXPERIMENTS,
    labels={LABEL_TUNING: kopf.PRESENT},
    registry=registry,
)
async def experiment_seen(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Watch our Experiments by label: a watch only, so kopf writes nothing onto them."""
    memo["operator"].saw_experiment(type, body)
