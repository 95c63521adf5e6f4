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

Where each part lives: `watches.py` (what the watches keep and queue), `worker.py` (the
reconcile and its retries), `experiments.py` (create, patch the budget, delete stale
Experiments), `writes.py` (the status write and its Events), `memory.py` (what is kept between
reconciles); the decisions themselves are the pure functions of `reconcile.py`.
"""

from __future__ import annotations

import threading
from typing import Any

import kopf

from mnist_tuning.api.expand import LABEL_TUNING
from mnist_tuning.api.spec import GROUP, PLURAL, VERSION
from mnist_tuning.controller.kube import EXPERIMENTS, KATIB_GROUP, KATIB_VERSION, Kube
from mnist_tuning.controller.memory import Key, Memory
from mnist_tuning.controller.queue import DelayQueue
from mnist_tuning.controller.settings import OperatorSettings
from mnist_tuning.controller.watches import Watches
from mnist_tuning.controller.worker import Worker

registry = kopf.OperatorRegistry()


@kopf.on.login(registry=registry)
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Log in the way `Kube` does: in-cluster ServiceAccount, else $KUBECONFIG."""
    return kopf.login_via_client(**kwargs)


@kopf.on.startup(registry=registry)
def configure(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    """Build the shared state and start the workers; kopf itself only watches."""
    config: OperatorSettings = memo["config"]
    settings.posting.enabled = False
    memory, queue = Memory(), DelayQueue[Key]()
    memo["watches"] = Watches(memory, queue, config)
    memo["queue"] = queue
    worker = Worker.build(Kube(), config, memory, queue)
    memo["workers"] = [
        threading.Thread(target=worker.work, name=f"reconcile-{i}", daemon=True)
        for i in range(config.workers)
    ]
    for thread in memo["workers"]:
        thread.start()


@kopf.on.cleanup(registry=registry)
def stop(memo: Any, **_: Any) -> None:
    """Let the workers finish what they hold, then stop them."""
    memo["queue"].close()
    for thread in memo["workers"]:
        thread.join(timeout=10)


@kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
async def tuning_seen(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Any change of a tuning, and every tuning at start: reconcile it."""
    memo["watches"].saw_tuning(type, body)


@kopf.on.event(
    KATIB_GROUP,
    KATIB_VERSION,
    EXPERIMENTS,
    labels={LABEL_TUNING: kopf.PRESENT},
    registry=registry,
)
async def experiment_seen(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Watch our Experiments by label: a watch only, so kopf writes nothing onto them."""
    memo["watches"].saw_experiment(type, body)


@kopf.on.event("", "v1", "pods", labels={LABEL_TUNING: kopf.PRESENT}, registry=registry)
async def pod_seen(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Watch our trial and suggestion pods (read only): why one cannot start or was killed."""
    memo["watches"].saw_pod(type, body)


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TUNING: kopf.PRESENT}, registry=registry)
async def trial_job_seen(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Watch our trial Jobs (read only): one stopped at its deadline has no pod left to say so."""
    memo["watches"].saw_trial_job(type, body)


@kopf.on.event("", "v1", "events", field="reason", value="FailedCreate", registry=registry)
async def refusal_seen(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Watch the Job controller's FailedCreate Events: why a trial Job's pod was refused."""
    memo["watches"].saw_refusal(type, body)
