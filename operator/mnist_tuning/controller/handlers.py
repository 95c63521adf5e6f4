"""kopf handlers: reconcile a MnistTuning into its Experiment, and follow Experiments back.

Two entry points write a tuning's status: the spec handlers (create/update/resume) and
the Experiment watch. Both read the tuning fresh and compute the whole status under a
per-tuning lock, so the last writer always writes from the newest state. Nothing is
ever written onto Katib's objects except the Experiment we render, and no finalizer is
added anywhere (there are no deletion handlers, daemons or timers): owner references
clean up, so deleting a tuning never waits for the operator.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

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
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.kube import EXPERIMENTS, KATIB_GROUP, KATIB_VERSION, Kube, refusal
from mnist_tuning.controller.reconcile import (
    Event,
    fault_status,
    is_settled,
    katib_found,
    mirrored_status,
    namespace_enabled,
    status_events,
    status_patch,
)
from mnist_tuning.controller.settings import OperatorSettings

registry = kopf.OperatorRegistry()

ANNOTATION_RESYNC = f"{GROUP}/experiment-lost"
NAMESPACE_CACHE_SECONDS = 10.0  # how long a namespace's Katib label is trusted
STATUS_CACHE_SIZE = 10_000
# kopf's own bookkeeping lives under a separate prefix: kopf ignores changes to annotations
# under its prefix, and ANNOTATION_RESYNC must count as a change.
KOPF_PREFIX = f"operator.{GROUP}"
LOCK_STRIPES = 64


@dataclass
class Operator:
    """What the handlers share: the API client, the settings and the per-tuning locks."""

    kube: Kube
    settings: OperatorSettings
    _locks: tuple[threading.Lock, ...] = field(
        default_factory=lambda: tuple(threading.Lock() for _ in range(LOCK_STRIPES))
    )
    # The operator is the only writer of a tuning's status, so what it last wrote (by uid) is
    # the current status; this saves re-reading tunings and never trails our own writes.
    _written: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    _enabled_namespaces: dict[str, float] = field(default_factory=dict)
    _cache_lock: threading.Lock = field(default_factory=threading.Lock)

    def lock(self, namespace: str, name: str) -> threading.Lock:
        """One lock per tuning (striped, so memory stays flat with many tunings)."""
        return self._locks[hash((namespace, name)) % LOCK_STRIPES]

    @property
    def default_image(self) -> str:
        """The trainer image for tunings that do not name one."""
        return self.settings.trial_image or DEFAULT_TRAINER_IMAGE

    def status_of(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """Return the current status: what we last wrote, else what the body carries."""
        with self._cache_lock:
            written = self._written.get(body["metadata"]["uid"])
        return written if written is not None else (body.get("status") or {})

    def _remember(self, uid: str, status: Mapping[str, Any]) -> None:
        with self._cache_lock:
            self._written[uid] = dict(status)
            self._written.move_to_end(uid)
            while len(self._written) > STATUS_CACHE_SIZE:
                self._written.popitem(last=False)

    def namespace_enabled(self, namespace: str) -> bool:
        """Read the Katib label (a positive answer is trusted for a few seconds)."""
        now = time.monotonic()
        with self._cache_lock:
            seen = self._enabled_namespaces.get(namespace)
        if seen is not None and now - seen < NAMESPACE_CACHE_SECONDS:
            return True
        enabled = self.kube.namespace_labels(namespace).get(c.LABEL_KATIB_INJECTION) == "enabled"
        with self._cache_lock:
            if enabled:
                self._enabled_namespaces[namespace] = now
            else:
                self._enabled_namespaces.pop(namespace, None)
        return enabled

    def reconcile(self, body: Mapping[str, Any], retry: int) -> None:
        """Make the Experiment for the tuning's current spec exist and mirror it."""
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return
        with self.lock(meta["namespace"], meta["name"]):
            self._reconcile(body, retry)

    def _reconcile(self, body: Mapping[str, Any], retry: int) -> None:
        namespace = body["metadata"]["namespace"]
        generation = body["metadata"].get("generation")
        old = self.status_of(body)
        try:
            tuning = parse_tuning(body)
        except SpecError as exc:
            invalid = c.condition(c.SPEC_VALID, False, c.SPEC_INVALID, str(exc), generation)
            new = {
                "phase": "Failed",
                "observedGeneration": generation,
                "conditions": c.settle(old.get("conditions") or [], [invalid], c.now()),
            }
            # No Experiment serves an invalid spec; one left running would also be missed as
            # stale later, since the status no longer names it.
            self._delete_stale(body, keep=None)
            self._write(body, old, new, [Event("Warning", c.SPEC_INVALID, str(exc))])
            raise kopf.PermanentError(str(exc)) from None
        if is_settled(old, generation):
            return
        seed = resolve_seed(tuning)
        delay = self.settings.retry_delay(retry)

        def fault(phase: Phase, faults: list[Condition], event: Event) -> None:
            new = fault_status(tuning, old, phase=phase, faults=faults, seed=seed, at=c.now())
            self._write(body, old, new, [event] if status_patch(old, new) else [])

        if not self.namespace_enabled(namespace):
            message = c.namespace_message(namespace)
            fault(
                "Pending",
                [
                    c.condition(
                        c.NAMESPACE_ENABLED, False, c.NAMESPACE_NOT_ENABLED, message, generation
                    )
                ],
                Event("Warning", c.NAMESPACE_NOT_ENABLED, message),
            )
            raise kopf.TemporaryError(message, delay=delay)
        wanted = expand(tuning, default_image=self.default_image)
        exp_name = wanted["metadata"]["name"]
        events: list[Event] = []
        try:
            experiment = self._create(wanted)
        except ApiException as exc:
            why = refusal(exc)
            if why.katib_missing:
                message = c.katib_missing_message(namespace)
                fault(
                    "Pending",
                    [
                        namespace_enabled(generation),
                        c.condition(
                            c.KATIB_AVAILABLE, False, c.KATIB_NOT_INSTALLED, message, generation
                        ),
                    ],
                    Event("Warning", c.KATIB_NOT_INSTALLED, message),
                )
                raise kopf.TemporaryError(message, delay=delay) from None
            if why.forbidden_by_rbac:
                message = f"the operator's ServiceAccount may not do this: {why.message}"
                fault(
                    "Pending",
                    [
                        c.condition(
                            c.EXPERIMENT_ACCEPTED, False, c.OPERATOR_FORBIDDEN, message, generation
                        )
                    ],
                    Event("Warning", c.OPERATOR_FORBIDDEN, message),
                )
                raise kopf.TemporaryError(message, delay=delay) from None
            if why.refused:
                if old.get("experiment"):
                    self._delete_stale(body, keep=None)
                refused = c.condition(
                    c.EXPERIMENT_ACCEPTED, False, c.EXPERIMENT_REFUSED, why.message, generation
                )
                fault(
                    "Failed",
                    [katib_found(generation), namespace_enabled(generation), refused],
                    Event("Warning", c.EXPERIMENT_REFUSED, why.message),
                )
                raise kopf.PermanentError(why.message) from None
            raise
        if experiment is not None:
            events.append(self._created_event(old, exp_name))
        else:
            experiment = self._existing(body, wanted)
            experiment, patched = self._patch_budget(body, tuning, old, experiment, wanted)
            events.extend(patched)
        # Status names the Experiment last known to serve the tuning; only when that differs
        # can an older one be left (a replacement, or one interrupted by a restart).
        moved = old.get("experiment") not in (None, exp_name)
        replaced = self._delete_stale(body, keep=exp_name) if moved else []
        if replaced and events and events[0].reason == c.EXPERIMENT_CREATED:
            events[0] = Event(
                "Normal",
                c.EXPERIMENT_REPLACED,
                f"the spec changed beyond the budget: replaced Experiment "
                f"{', '.join(replaced)} with {exp_name}",
            )
        new = mirrored_status(tuning, experiment, old, wanted_budget=budget_of(wanted), at=c.now())
        self._write(body, old, new, events + status_events(tuning, old, new))

    def _create(self, wanted: dict[str, Any]) -> dict[str, Any] | None:
        """Create the Experiment; None when it exists already.

        Admission runs before the API server's existence check, so a refused create may be
        of an Experiment that exists (e.g. with a smaller budget): that one counts as existing.
        """
        try:
            return self.kube.create_experiment(wanted)
        except ApiException as exc:
            meta = wanted["metadata"]
            if refusal(exc).refused and self.kube.get_experiment(meta["namespace"], meta["name"]):
                return None
            raise

    @staticmethod
    def _created_event(old: Mapping[str, Any], name: str) -> Event:
        if old.get("experiment") == name:
            return Event(
                "Warning",
                c.EXPERIMENT_RECREATED,
                f"Experiment {name} was deleted while the tuning was unfinished; created it again",
            )
        return Event("Normal", c.EXPERIMENT_CREATED, f"created Katib Experiment {name}")

    def _existing(self, body: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
        """Read the Experiment that answered 409; it must be this tuning's, not a namesake's."""
        meta = wanted["metadata"]
        experiment = self.kube.get_experiment(meta["namespace"], meta["name"])
        if experiment is None:
            raise kopf.TemporaryError(f"Experiment {meta['name']} is being deleted", delay=1)
        if _owner_uid(experiment) != body["metadata"]["uid"]:
            raise kopf.TemporaryError(
                f"Experiment {meta['name']} belongs to an earlier tuning of the same name; "
                "waiting for the garbage collector to remove it",
                delay=self.settings.retry_base_seconds,
            )
        return experiment

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
        if have == want:
            return experiment, []
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
            first_time = status_patch(old, new) is not None
            events = [Event("Warning", c.EXPERIMENT_REFUSED, message)] if first_time else []
            self._write(body, old, new, events)
            raise kopf.PermanentError(why.message) from None
        change = ", ".join(
            f"{key} {have.get(key)}→{value}"
            for key, value in want.items()
            if have.get(key) != value
        )
        return patched, [
            Event("Normal", c.BUDGET_UPDATED, f"patched Experiment {meta['name']}: {change}")
        ]

    def _delete_stale(self, body: Mapping[str, Any], keep: str | None) -> list[str]:
        """Delete this tuning's Experiments for earlier specs; return their names."""
        meta = body["metadata"]
        stale = [
            exp["metadata"]["name"]
            for exp in self.kube.experiments_of(meta["namespace"], meta["name"])
            if exp["metadata"]["name"] != keep and _owner_uid(exp) == meta["uid"]
        ]
        for name in stale:
            self.kube.delete_experiment(meta["namespace"], name)
        return stale

    def follow(
        self,
        event_type: str | None,
        experiment: Mapping[str, Any],
        tunings: kopf.Index[tuple[str, str], Mapping[str, Any]],
    ) -> None:
        """Mirror an Experiment's change into its tuning; a deleted one is re-requested."""
        meta = experiment.get("metadata") or {}
        owner = _owner(experiment)
        if owner is None:
            return
        namespace, name = meta["namespace"], owner["name"]
        with self.lock(namespace, name):
            body = next(iter(tunings.get((namespace, name), [])), None)
            if (
                body is None
                or body["metadata"].get("uid") != owner.get("uid")
                or body["metadata"].get("deletionTimestamp")
            ):
                return
            try:
                tuning = parse_tuning(body)
            except SpecError:
                return
            wanted = expand(tuning, default_image=self.default_image)
            if meta.get("name") != wanted["metadata"]["name"]:
                return  # an Experiment of an earlier spec, on its way out
            old = self.status_of(body)
            if event_type == "DELETED":
                if not is_settled(old, body["metadata"].get("generation")):
                    # Hand over to the spec handlers, which retry with backoff.
                    self.kube.annotate_tuning(
                        namespace, name, {ANNOTATION_RESYNC: f"{meta['name']} at {c.now()}"}
                    )
                return
            new = mirrored_status(
                tuning, experiment, old, wanted_budget=budget_of(wanted), at=c.now()
            )
            self._write(body, old, new, status_events(tuning, old, new))

    def _write(
        self,
        body: Mapping[str, Any],
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        events: list[Event],
    ) -> None:
        patch = status_patch(old, new)
        if patch is not None:
            meta = body["metadata"]
            if not self.kube.patch_tuning_status(meta["namespace"], meta["name"], patch):
                return  # deleted meanwhile: nothing to report on
            self._remember(meta["uid"], new)
        for event in events:
            kopf.event(
                kopf.Body(cast("kopf.RawBody", dict(body))),
                type=event.type,
                reason=event.reason,
                message=event.message,
            )


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
    """Keep kopf's bookkeeping in annotations on our own objects and build the shared state."""
    config: OperatorSettings = memo["config"]
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.execution.max_workers = config.workers
    settings.posting.loggers = False
    memo["operator"] = Operator(Kube(), config)


@kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="resume")
@kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="create")
@kopf.on.update(GROUP, VERSION, PLURAL, registry=registry, id="update")
def reconcile(body: kopf.Body, retry: int, memo: Any, **_: Any) -> None:
    """Any change of a tuning's spec, labels or annotations, and every operator start."""
    operator: Operator = memo["operator"]
    operator.reconcile(_plain(body), retry)


@kopf.index(GROUP, VERSION, PLURAL, registry=registry)
def tunings(
    namespace: str | None, name: str, body: kopf.Body, **_: Any
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """Index the tunings as last seen, so following an Experiment needs no API read."""
    return {(namespace or "", name): _plain(body)}


def _plain(body: kopf.Body) -> dict[str, Any]:
    """Copy the parts of a tuning the operator reads into plain dicts."""
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
        "status": dict(body.status),
    }


@kopf.on.event(
    KATIB_GROUP,
    KATIB_VERSION,
    EXPERIMENTS,
    labels={LABEL_TUNING: kopf.PRESENT},
    registry=registry,
)
def follow(type: str | None, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    """Watch our Experiments by label: a watch only, so kopf writes nothing onto them."""
    operator: Operator = memo["operator"]
    operator.follow(type, dict(body), kwargs["tunings"])
