"""The local engine: an Experiment's trials as processes on this machine, Optuna as the ledger.

Optuna samples and keeps the books in SQLite under the workdir; this module only starts
processes, reads their metrics files and applies Katib's stopping rules. One run holds
a lock on the workdir, so any trial the storage still calls RUNNING when a run starts was
left behind by an interrupted run: it is set aside (not counted) and re-run with the same
parameters.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import optuna
import yaml
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mnist_tuning.api.expand import resolve_seed
from mnist_tuning.api.metrics import MetricsFileError, MetricSummary, read_metrics_file
from mnist_tuning.api.spec import MnistTuning, MnistTuningStatus
from mnist_tuning.api.summarize import summarize
from mnist_tuning.local import katib
from mnist_tuning.local.command import trial_process
from mnist_tuning.local.katib import TrialRecord, Verdict
from mnist_tuning.local.search import (
    Searched,
    assignments,
    distributions,
    make_sampler,
    replay,
    sampled_count,
    search_space,
)

STUDY_FILE = "study.db"
STATUS_FILE = "status.yaml"
LOCK_FILE = ".lock"
TRIALS_DIR = "trials"
OUTPUT_FILE = "output.log"
METRICS_FILE = "metrics.json"
# Trial user attributes: every trial this engine finishes carries STATE; a FAIL trial
# without it was interrupted and is not counted.
STATE = "katib_state"
METRICS = "metrics"
MESSAGE = "message"
NAME = "trial_name"
RETRY_OF = "retry_of"
# Study user attributes.
STARTED = "started"
COMPLETED = "completed"
TAIL_LINES = 5
POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 5.0
PR_SET_PDEATHSIG = 1


class EngineError(Exception):
    """Something the person running the tuning can fix; the message says what and how."""


class RunInterruptedError(Exception):
    """The run was stopped by Ctrl-C or SIGTERM; running trials will be re-run on resume."""


@dataclass(frozen=True)
class Progress:
    """What the live view shows: every counted trial, the budget, and why the run stopped."""

    experiment: str
    records: list[TrialRecord]
    max_trials: int
    parallel: int
    max_failed: int
    threads_per_trial: int
    verdict: Verdict | None = None
    tails: dict[str, list[str]] = field(default_factory=dict)


Observer = Callable[[Progress], None]


@dataclass
class _Running:
    """A trial process this run started."""

    trial: optuna.Trial
    record: TrialRecord
    process: subprocess.Popen[bytes]
    output: IO[bytes]
    metrics_file: Path
    deadline: float | None
    overdue: bool = False


def now() -> datetime:
    """Return the current time, timezone-aware (Kubernetes times are UTC)."""
    return datetime.now(UTC)


def trial_name(experiment_name: str, number: int) -> str:
    """Katib names trials after their experiment; the Optuna number keeps them stable."""
    return f"{experiment_name}-{number:03d}"


def threads_per_trial(cpus: int, parallel: int) -> int:
    """Split the cores between the trials that run at once, at least one thread each."""
    return max(1, cpus // parallel)


def available_cpus() -> int:
    """Cores this process may use: the trainer's own rule (affinity, capped by a CPU quota).

    Imported here, not at the top: a missing trainer is reported by the CLI's own check.
    """
    from mnist_trainer.config import available_cpus as trainer_cpus

    return trainer_cpus()


def tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """Return the last lines of a trial's output, for the person reading why it failed."""
    if not path.exists():
        return []
    text = path.read_bytes()[-16384:].decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def record_of(trial: FrozenTrial, space: list[Searched]) -> TrialRecord | None:
    """Read a finished trial back as a record; None for waiting and interrupted ones."""
    if STATE not in trial.user_attrs:
        return None
    metrics = {
        name: MetricSummary(name=name, **summary)
        for name, summary in (trial.user_attrs.get(METRICS) or {}).items()
    }
    return TrialRecord(
        number=trial.number,
        name=trial.user_attrs.get(NAME, str(trial.number)),
        state=trial.user_attrs[STATE],
        assignments=assignments(space, trial.params),
        metrics=metrics,
        message=trial.user_attrs.get(MESSAGE, ""),
        start=trial.datetime_start,
        end=trial.datetime_complete,
    )


def _die_with_parent() -> None:
    """Ask Linux to stop the trainer if this engine is killed outright (no orphans)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def workdir_lock(workdir: Path) -> Iterator[None]:
    """Hold the workdir for this run; a second run on it gets a clear refusal."""
    with (workdir / LOCK_FILE).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EngineError(
                f"another `mnist-tuning run` is using {workdir}; wait for it or pass another "
                "--workdir"
            ) from None
        yield


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise RunInterruptedError(signal.Signals(signum).name)


class Engine:
    """Runs one Experiment's trials locally until Katib's rules say it is over."""

    def __init__(
        self,
        tuning: MnistTuning,
        experiment: Mapping[str, Any],
        *,
        workdir: Path,
        data_dir: Path,
        observer: Observer,
        python: str = sys.executable,
        cpus: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        """Prepare a run; nothing starts until `run()`."""
        self.tuning = tuning
        self.experiment = experiment
        self.name: str = experiment["metadata"]["name"]
        self.workdir = workdir
        self.data_dir = data_dir
        self.observer = observer
        self.python = python
        self.extra_args = list(extra_args)
        spec = experiment["spec"]
        self.max_trials = int(spec["maxTrialCount"])
        self.parallel = int(spec["parallelTrialCount"])
        self.max_failed = int(spec["maxFailedTrialCount"])
        self.threads = threads_per_trial(cpus or available_cpus(), self.parallel)
        self.searched = search_space(experiment)
        self.space: dict[str, BaseDistribution] = distributions(self.searched)
        self.metric_names = [
            spec["objective"]["objectiveMetricName"],
            *spec["objective"].get("additionalMetricNames", []),
        ]
        job = spec["trialTemplate"]["trialSpec"]["spec"]
        self.deadline_seconds: int | None = job.get("activeDeadlineSeconds")
        self.finished: list[TrialRecord] = []
        self.running: dict[int, _Running] = {}
        self.tails: dict[str, list[str]] = {}

    # -- storage ---------------------------------------------------------------------------

    def open_study(self) -> optuna.Study:
        """Create or load the study; a workdir that holds another spec's study is refused."""
        url = f"sqlite:///{self.workdir / STUDY_FILE}"
        storage = optuna.storages.RDBStorage(url)
        existing = optuna.get_all_study_names(storage)
        if existing and self.name not in existing:
            raise EngineError(
                f"{self.workdir} holds the run of a different spec (experiment "
                f"{', '.join(existing)}, this file gives {self.name}); pass another --workdir "
                "or delete that directory to start over"
            )
        direction = self.experiment["spec"]["objective"]["type"]
        study = optuna.create_study(
            storage=storage,
            study_name=self.name,
            direction=direction,
            sampler=make_sampler(self.experiment, resolve_seed(self.tuning)),
            load_if_exists=True,
        )
        if STARTED not in study.user_attrs:
            study.set_user_attr(STARTED, now().isoformat())
        return study

    def recover(self, study: optuna.Study) -> None:
        """Set aside trials an interrupted run left RUNNING and queue them to run again."""
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number})

    def load(self, study: optuna.Study) -> None:
        """Read the counted trials and put the sampler where an unbroken run would have it."""
        trials = study.get_trials(deepcopy=False)
        self.finished = [r for t in trials if (r := record_of(t, self.searched)) is not None]
        started = [t for t in trials if t.state != TrialState.WAITING]
        if started:
            replay(study.sampler, study, started[0], self.space, sampled_count(started, RETRY_OF))

    # -- trials ----------------------------------------------------------------------------

    def start_trial(self, study: optuna.Study) -> None:
        """Ask Optuna for the next point and start the trainer on it."""
        trial = study.ask(self.space)
        name = trial_name(self.name, trial.number)
        trial.set_user_attr(NAME, name)
        folder = self.workdir / TRIALS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        metrics_file = folder / METRICS_FILE
        metrics_file.unlink(missing_ok=True)
        assigned = assignments(self.searched, trial.params)
        process = trial_process(
            self.experiment,
            assigned,
            python=self.python,
            data_dir=self.data_dir,
            metrics_file=metrics_file,
            threads=self.threads,
            extra_args=self.extra_args,
        )
        threads = str(self.threads)
        env = {**os.environ, **process.env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        output = (folder / OUTPUT_FILE).open("wb")
        popen = subprocess.Popen(
            process.argv,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the engine, which stops trials itself
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        record = TrialRecord(
            number=trial.number,
            name=name,
            state="Running",
            assignments=assigned,
            start=now(),
        )
        deadline = time.monotonic() + self.deadline_seconds if self.deadline_seconds else None
        self.running[trial.number] = _Running(trial, record, popen, output, metrics_file, deadline)

    def live_metrics(self, running: _Running) -> None:
        """Refresh a running trial's metrics from its file (half-written files are skipped)."""
        if not running.metrics_file.exists():
            return
        with contextlib.suppress(MetricsFileError, OSError):
            metrics = read_metrics_file(running.metrics_file, self.metric_names)
            running.record = replace(running.record, metrics=metrics)

    def collect(self, running: _Running, *, killed: str | None = None) -> TrialRecord:
        """Judge a finished process as Katib's trial controller would and record it."""
        running.output.close()
        code = running.process.returncode
        try:
            metrics = (
                read_metrics_file(running.metrics_file, self.metric_names)
                if running.metrics_file.exists()
                else {}
            )
            unreadable = ""
        except MetricsFileError as exc:
            metrics, unreadable = {}, f"metrics file unreadable: {exc}"
        value = katib.metric_value(metrics, self.experiment)
        state: katib.TrialState
        if killed is not None:
            state, message = "Killed", killed
        elif running.overdue:
            # What a Job's activeDeadlineSeconds does to a trial pod on the cluster.
            state, message = "Failed", f"DeadlineExceeded: ran over {self.deadline_seconds} s"
        elif code != 0 or unreadable:
            state = "Failed"
            message = unreadable or f"trainer exited with code {code}"
        elif value is None:
            state = "MetricsUnavailable"
            message = f"the trainer reported no {self.metric_names[0]}"
        else:
            state, message = "Succeeded", ""
        if state in ("Failed", "MetricsUnavailable"):
            self.tails[running.record.name] = tail(running.metrics_file.parent / OUTPUT_FILE)
        record = replace(running.record, state=state, metrics=metrics, message=message, end=now())
        trial = running.trial
        trial.set_user_attr(STATE, state)
        trial.set_user_attr(MESSAGE, message)
        trial.set_user_attr(
            METRICS,
            {n: s.model_dump(include={"min", "max", "latest"}) for n, s in metrics.items()},
        )
        if state == "Succeeded":
            trial.study.tell(trial, value)
        else:
            trial.study.tell(trial, state=TrialState.FAIL)
        return record

    def stop(self, running: _Running) -> None:
        """Stop a trial's process group: SIGTERM, then SIGKILL after a grace period."""
        if running.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(running.process.pid, signal.SIGTERM)
        try:
            running.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, signal.SIGKILL)
            running.process.wait()

    # -- the loop --------------------------------------------------------------------------

    def records(self) -> list[TrialRecord]:
        """Finished and running trials, in trial order."""
        live = [r.record for r in self.running.values()]
        return sorted([*self.finished, *live], key=lambda r: r.number)

    def progress(self, verdict: Verdict | None = None) -> Progress:
        """Take a snapshot for the observer."""
        return Progress(
            experiment=self.name,
            records=self.records(),
            max_trials=self.max_trials,
            parallel=self.parallel,
            max_failed=self.max_failed,
            threads_per_trial=self.threads,
            verdict=verdict,
            tails=dict(self.tails),
        )

    def step(self, study: optuna.Study) -> None:
        """Collect finished processes, stop overdue ones, refresh live metrics."""
        for number, running in list(self.running.items()):
            late = running.deadline is not None and time.monotonic() > running.deadline
            if late and running.process.poll() is None:
                running.overdue = True
                self.stop(running)
            if running.process.poll() is None:
                self.live_metrics(running)
                continue
            del self.running[number]
            self.finished.append(self.collect(running))
            self.write_status(study, None)

    def run(self) -> MnistTuningStatus:
        """Run until the Experiment is over; Ctrl-C or SIGTERM stop trials, then raise."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with workdir_lock(self.workdir):
            study = self.open_study()
            self.recover(study)
            self.load(study)
            previous = signal.signal(signal.SIGTERM, _raise_interrupted)
            try:
                verdict = self.loop(study)
            except (KeyboardInterrupt, RunInterruptedError):
                self.abandon(study)
                self.observer(self.progress())
                self.write_status(study, None)
                raise RunInterruptedError("stopped by a signal") from None
            finally:
                signal.signal(signal.SIGTERM, previous)
            self.observer(self.progress(verdict))
            return self.write_status(study, verdict)

    def loop(self, study: optuna.Study) -> Verdict:
        """Start trials within the budget and wait on them until a verdict."""
        while True:
            verdict = katib.verdict(self.finished, self.experiment)
            if verdict is not None:
                for running in list(self.running.values()):
                    self.stop(running)
                    self.finished.append(self.collect(running, killed=verdict.message))
                self.running.clear()
                return verdict
            while len(self.running) < self.parallel and (
                len(self.finished) + len(self.running) < self.max_trials
            ):
                self.start_trial(study)
            self.observer(self.progress())
            time.sleep(POLL_SECONDS)
            self.step(study)

    def abandon(self, study: optuna.Study) -> None:
        """Stop running trials and queue them to run again on resume; they are not counted."""
        for running in self.running.values():
            self.stop(running)
            running.output.close()
            study.tell(running.trial, state=TrialState.FAIL)
            study.enqueue_trial(running.trial.params, user_attrs={RETRY_OF: running.trial.number})
        self.running.clear()

    # -- result ----------------------------------------------------------------------------

    def write_status(self, study: optuna.Study, verdict: Verdict | None) -> MnistTuningStatus:
        """Write DIR/status.yaml through summarize(): the operator's status, from local trials."""
        attrs = study.user_attrs  # one query: each access reads the study's database
        started = datetime.fromisoformat(attrs[STARTED])
        completed = attrs.get(COMPLETED)
        if verdict is not None and not completed:
            completed = now().isoformat()
            study.set_user_attr(COMPLETED, completed)
        elif verdict is None and completed:
            completed = None
            study.set_user_attr(COMPLETED, completed)  # a larger budget reopened the run
        status_of = katib.experiment_status(
            self.experiment,
            self.records(),
            started=started,
            now=datetime.fromisoformat(completed) if completed else now(),
            over=verdict,
        )
        status = summarize(status_of, self.tuning)
        status.observed_generation = self.tuning.metadata.generation
        text = yaml.safe_dump(status.to_manifest(), sort_keys=False)
        (self.workdir / STATUS_FILE).write_text(text, encoding="utf-8")
        return status
