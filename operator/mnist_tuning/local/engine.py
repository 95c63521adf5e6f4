"""The local engine: an Experiment's trials as processes on this machine, Optuna as the ledger.

Optuna samples and keeps the books in SQLite under the workdir; this module only starts
processes, reads their metrics files and applies Katib's stopping rules. One run holds
a lock on the workdir, so any trial the storage does not call finished when a run starts
was left behind by an interrupted run.

Resume without a window: a trial's identity is its draw, the index of its point in the
seeded sequence, stored with the point in the one write that creates the trial. Points are
never read back (an interrupted trial may hold only some of its parameters); point k is
drawn again from a fresh seeded sampler. A trial counts once its verdict's last attribute
(STATE) is stored. So a run killed at any instant leaves every draw either counted once or
not at all; the next run tells the verdicts that were stored but not told, fails the other
unfinished trials (uncounted) and runs their draws again, in order, before new ones. Every
step of that is one write and safe to repeat. `MNIST_ENGINE_KILL_AT=POINT[:N]` kills the
process the N-th time it reaches POINT (see KillPoint): the tests' way to stop a run at
each such instant.

That replay holds for random and grid, whose point k depends on the seed alone; the other
algorithms' samplers learn from the trials told so far, so their interrupted draws are asked
of the sampler afresh. With `earlyStopping`, each trial gets Katib's median rule when it
starts and is stopped, counted EarlyStopped, at the report where the rule says so.
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
from typing import IO, Any, Literal, get_args

import optuna
import yaml
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from mnist_tuning.api.expand import resolve_seed
from mnist_tuning.api.metrics import (
    MetricsFileError,
    MetricSummary,
    read_metrics_file,
    read_metrics_series,
)
from mnist_tuning.api.spec import MnistTuning, MnistTuningStatus
from mnist_tuning.api.summarize import summarize
from mnist_tuning.local import katib
from mnist_tuning.local.command import trial_process
from mnist_tuning.local.katib import StopRule, TrialRecord, Verdict
from mnist_tuning.local.search import (
    Searched,
    algorithm,
    assignments,
    distributions,
    draw,
    grid_points,
    make_sampler,
    replayed,
    search_space,
    suggest,
)

STUDY_FILE = "study.db"
STATUS_FILE = "status.yaml"
LOCK_FILE = ".lock"
TRIALS_DIR = "trials"
OUTPUT_FILE = "output.log"
METRICS_FILE = "metrics.json"
# Trial user attributes: every trial this engine finishes carries STATE (written last of
# the verdict); a trial without it was interrupted and is not counted. DRAW is the trial's
# identity: the index of its point in the seeded sequence.
STATE = "katib_state"
METRICS = "metrics"
MESSAGE = "message"
NAME = "trial_name"
DRAW = "draw"
SERIES = "objective_series"  # the objective's reports in order, for Katib's median rule
# Study user attributes.
STARTED = "started"
COMPLETED = "completed"
TAIL_LINES = 5
POLL_SECONDS = 0.25
STOP_GRACE_SECONDS = 5.0
PR_SET_PDEATHSIG = 1
KILL_ENV = "MNIST_ENGINE_KILL_AT"
KillPoint = Literal[
    "draw",  # between two parameter draws of one point (in memory)
    "enqueued",  # the trial is stored, waiting, with its draw and point
    "asked",  # the trial is running in the storage, no parameter written yet
    "param",  # between two parameter writes of one trial
    "named",  # every parameter written, trainer not started
    "started",  # the trainer runs
    "judging",  # verdict half-written: message and metrics, no state
    "judged",  # verdict written, trial not told
    "told",  # trial told, status not written
    "status",  # the new status written beside the old one, not moved in
    "recovering",  # a resumed run between settling two interrupted trials
]
KILL_POINTS: tuple[KillPoint, ...] = get_args(KillPoint)


class EngineError(Exception):
    """Something the person running the tuning can fix; the message says what and how."""


class RunInterruptedError(Exception):
    """The run was stopped by Ctrl-C or SIGTERM; running trials will be re-run on resume."""


@dataclass
class KillSwitch:
    """Test seam: SIGKILL this process the `nth` time it reaches `point`; off by default."""

    point: KillPoint | None = None
    nth: int = 1
    seen: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> KillSwitch:
        """Read `MNIST_ENGINE_KILL_AT=POINT[:N]`; a point that does not exist is an error."""
        value = environ.get(KILL_ENV, "")
        if not value:
            return cls()
        name, _, nth = value.partition(":")
        point = next((p for p in KILL_POINTS if p == name), None)
        if point is None or not (nth or "1").isdigit():
            raise EngineError(f"{KILL_ENV}={value}: want POINT[:N], POINT one of {KILL_POINTS}")
        return cls(point, int(nth or 1))

    def reach(self, point: KillPoint) -> None:
        """Die here, as `kill -9` would kill the run at this instant, if this is the one."""
        if point != self.point:
            return
        self.seen += 1
        if self.seen == self.nth:
            os.kill(os.getpid(), signal.SIGKILL)


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
    rule: StopRule | None  # Katib's median rule, fixed when the trial started
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
    from mnist_trainer.cpus import available_cpus as trainer_cpus

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
        series=tuple(trial.user_attrs.get(SERIES) or ()),
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
        self.kill = KillSwitch.from_env(os.environ)
        self.points: list[dict[str, Any]] = []  # the seeded sequence, drawn so far
        self.replayed = replayed(experiment)
        self.grid = (
            grid_points(experiment, resolve_seed(tuning))
            if algorithm(experiment) == "grid"
            else None
        )
        self.retries: list[int] = []  # draws an interrupted run left uncounted, in order
        self.next_draw = 0

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
        """Finish the trials an interrupted run left: tell stored verdicts, fail the rest.

        One write per trial, so a run killed while recovering recovers the rest next time.
        """
        for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.tell(study.ask(), state=TrialState.FAIL)  # ask() takes the oldest waiting
            self.kill.reach("recovering")
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.tell(study, trial.number, record_of(trial, self.searched))
            self.kill.reach("recovering")

    def load(self, study: optuna.Study) -> None:
        """Read the counted trials and queue the draws that none of them ran to the end."""
        trials = study.get_trials(deepcopy=False)
        self.finished = [r for t in trials if (r := record_of(t, self.searched)) is not None]
        drawn = {t.user_attrs[DRAW] for t in trials if DRAW in t.user_attrs}
        counted = {t.user_attrs[DRAW] for t in trials if {DRAW, STATE} <= t.user_attrs.keys()}
        self.retries = sorted(drawn - counted)
        self.next_draw = max(drawn, default=-1) + 1

    def tell(self, study: optuna.Study, number: int, record: TrialRecord | None) -> None:
        """Close a trial in Optuna's books: its objective value if it succeeded, else failed.

        An early-stopped trial is pruned, as Katib's goptuna service tells its study.
        """
        value = katib.scored_value(record, self.experiment) if record is not None else None
        if record is not None and record.state == "EarlyStopped":
            study.tell(number, state=TrialState.PRUNED)
        elif value is None:
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, value)

    def point(self, study: optuna.Study, index: int) -> dict[str, Any]:
        """Point `index` of the seeded sequence (drawn once per run, in order)."""
        if self.grid is not None:
            return self.grid[index]
        while len(self.points) <= index:
            between: Callable[[], None] = lambda: self.kill.reach("draw")  # noqa: E731
            self.points.append(draw(study.sampler, study, self.space, between))
        return self.points[index]

    # -- trials ----------------------------------------------------------------------------

    def start_trial(self, study: optuna.Study) -> None:
        """Start the trainer on the next draw: an interrupted one first, else a new one."""
        if self.retries:
            index = self.retries.pop(0)
        else:
            index, self.next_draw = self.next_draw, self.next_draw + 1
        if self.replayed:
            study.enqueue_trial(self.point(study, index), user_attrs={DRAW: index})
            self.kill.reach("enqueued")
            trial = study.ask()
        else:  # the sampler learns from the trials told so far: ask it
            trial = study.ask()
            trial.set_user_attr(DRAW, index)
        self.kill.reach("asked")
        for i, (param, dist) in enumerate(self.space.items()):
            if i:
                self.kill.reach("param")
            suggest(trial, param, dist)
        name = trial_name(self.name, trial.number)
        trial.set_user_attr(NAME, name)
        self.kill.reach("named")
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
        self.kill.reach("started")
        record = TrialRecord(
            number=trial.number,
            name=name,
            state="Running",
            assignments=assigned,
            start=now(),
        )
        deadline = time.monotonic() + self.deadline_seconds if self.deadline_seconds else None
        rule = katib.stop_rule(self.finished, self.experiment)
        self.running[trial.number] = _Running(
            trial, record, popen, output, metrics_file, deadline, rule
        )

    def live_metrics(self, running: _Running) -> None:
        """Refresh a running trial's metrics from its file (half-written files are skipped)."""
        if not running.metrics_file.exists():
            return
        with contextlib.suppress(MetricsFileError, OSError):
            metrics = read_metrics_file(running.metrics_file, self.metric_names)
            running.record = replace(
                running.record, metrics=metrics, series=self.series(running.metrics_file)
            )

    def series(self, metrics_file: Path) -> tuple[float, ...]:
        """Read the objective's reports from a trial's metrics file, in order (Katib's log)."""
        objective = self.metric_names[0]
        return tuple(read_metrics_series(metrics_file, [objective]).get(objective, []))

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
            series = self.series(running.metrics_file) if metrics else ()
        except MetricsFileError as exc:
            metrics, series, unreadable = {}, (), f"metrics file unreadable: {exc}"
        value = katib.metric_value(metrics, self.experiment)
        state: katib.TrialState
        if killed is not None:
            state, message = "Killed", killed
        elif running.rule is not None and running.rule.stops(series):
            # Katib's collector stops the trial at that report, whatever its exit code.
            state, message = "EarlyStopped", running.rule.reason(series, self.metric_names[0])
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
        record = replace(
            running.record,
            state=state,
            metrics=metrics,
            series=series,
            message=message,
            end=now(),
        )
        trial = running.trial
        trial.set_user_attr(MESSAGE, message)
        trial.set_user_attr(
            METRICS,
            {n: s.model_dump(include={"min", "max", "latest"}) for n, s in metrics.items()},
        )
        trial.set_user_attr(SERIES, list(series))
        self.kill.reach("judging")
        trial.set_user_attr(STATE, state)  # last: the verdict is whole once STATE is there
        self.kill.reach("judged")
        self.tell(trial.study, trial.number, record)
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
                if running.rule is None or not running.rule.stops(running.record.series):
                    continue
                self.stop(running)  # Katib's median rule: collect() records it EarlyStopped
            del self.running[number]
            self.finished.append(self.collect(running))
            self.kill.reach("told")
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
        """Stop running trials, uncounted; a resumed run runs their draws again."""
        for running in self.running.values():
            self.stop(running)
            running.output.close()
            study.tell(running.trial, state=TrialState.FAIL)
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
        path = self.workdir / STATUS_FILE
        partial = path.with_name(f".{STATUS_FILE}.partial")
        partial.write_text(text, encoding="utf-8")
        self.kill.reach("status")
        partial.replace(path)  # readers see the old status or the new, never half of one
        return status
