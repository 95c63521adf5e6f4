"""A tuning's Katib Experiment: created or found, its budget patched, stale ones deleted.

A refusal or a missing Katib ends the reconcile with the tuning's status saying why
(`StatusWriter.fault`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from mnist_tuning.api.expand import budget_of
from mnist_tuning.api.spec import MnistTuning
from mnist_tuning.controller import conditions as c
from mnist_tuning.controller.kube import Kube, refusal
from mnist_tuning.controller.memory import Memory
from mnist_tuning.controller.reconcile import Event, katib_found, mirrored_status, namespace_enabled
from mnist_tuning.controller.settings import OperatorSettings
from mnist_tuning.controller.watches import owner_uid
from mnist_tuning.controller.writes import RetryError, SettledError, StatusWriter

logger = logging.getLogger("mnist_tuning.operator")


@dataclass
class Experiments:
    """The Experiment side of a reconcile."""

    kube: Kube
    memory: Memory
    writer: StatusWriter
    settings: OperatorSettings

    def create(
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
                self.writer.fault(
                    body, old, tuning, "Pending", message, faults, c.KATIB_NOT_INSTALLED
                )
            if why.forbidden_by_rbac:
                message = f"the operator's ServiceAccount may not do this: {why.message}"
                faults = [
                    c.condition(
                        c.EXPERIMENT_ACCEPTED, False, c.OPERATOR_FORBIDDEN, message, generation
                    )
                ]
                self.writer.fault(
                    body, old, tuning, "Pending", message, faults, c.OPERATOR_FORBIDDEN
                )
            if not why.refused:
                raise
            existing = self.kube.get_experiment(namespace, meta["name"])
            if existing is None:
                self.delete_stale(mine, keep=None)  # the spec it served is gone
                refused = c.condition(
                    c.EXPERIMENT_ACCEPTED, False, c.EXPERIMENT_REFUSED, why.message, generation
                )
                faults = [katib_found(generation), namespace_enabled(generation), refused]
                self.writer.fault(
                    body, old, tuning, "Failed", why.message, faults, c.EXPERIMENT_REFUSED
                )
            created = None
        else:
            if created is not None:
                return created, True
            existing = self.kube.get_experiment(meta["namespace"], meta["name"])
        if existing is None:
            raise RetryError(f"Experiment {meta['name']} is being deleted", delay=1.0)
        if owner_uid(existing) != body["metadata"]["uid"]:
            raise RetryError(
                f"Experiment {meta['name']} belongs to an earlier tuning of the same name; "
                "waiting for the garbage collector to remove it",
                delay=self.settings.retry_base_seconds,
            )
        return existing, False

    def patch_budget(
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
        with self.memory.lock:
            refused_already = refused_before in self.memory.refused_budgets
        if have == want or refused_already:
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
            self.writer.write(
                body, old, new, on_change=[Event("Warning", c.EXPERIMENT_REFUSED, message)]
            )
            with self.memory.lock:
                self.memory.refused_budgets.add(refused_before)
            raise SettledError(why.message) from None
        change = ", ".join(
            f"{key} {have.get(key)}→{value}"
            for key, value in want.items()
            if have.get(key) != value
        )
        return patched, [
            Event("Normal", c.BUDGET_UPDATED, f"patched Experiment {meta['name']}: {change}")
        ]

    def delete_stale(self, mine: list[dict[str, Any]], keep: str | None) -> None:
        """Delete this tuning's Experiments for other specs than the one it has now."""
        for experiment in mine:
            meta = experiment["metadata"]
            if meta["name"] != keep and not meta.get("deletionTimestamp"):
                self.kube.delete_experiment(meta["namespace"], meta["name"])
                logger.info(
                    "%s: deleted Experiment %s of an earlier spec", meta["namespace"], meta["name"]
                )


def created_event(old: Mapping[str, Any], name: str, replaced: list[str]) -> Event:
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
