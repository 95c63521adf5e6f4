"""What a person sees while the local tuning runs, and the result table at the end.

On a terminal a rich live table is redrawn as trials progress; anywhere else (CI logs,
pipes) one line is printed per trial state change, so the log reads top to bottom.
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from mnist_tuning.api.spec import MnistTuningStatus
from mnist_tuning.local.engine import Progress, now
from mnist_tuning.local.katib import DONE_STATES, TrialRecord, count

STATE_STYLES = {
    "Running": "cyan",
    "Succeeded": "green",
    "Failed": "red",
    "MetricsUnavailable": "red",
    "Killed": "yellow",
    "EarlyStopped": "magenta",
}
MAX_ROWS = 30  # a long run shows its newest trials; the plots show them all


def duration(record: TrialRecord, at: datetime) -> str:
    """Format how long a trial ran (or has been running) as m:ss."""
    if record.start is None:
        return ""
    seconds = int(((record.end or at) - record.start).total_seconds())
    return f"{seconds // 60}:{seconds % 60:02d}"


def metric_names(progress: Progress) -> list[str]:
    """Every metric any trial reported, in first-seen order."""
    names: dict[str, None] = {}
    for record in progress.records:
        names.update(dict.fromkeys(record.metrics))
    return list(names)


def headline(progress: Progress) -> Text:
    """Summarize the run in one line: budget use, failures, threads, and the verdict if any."""
    records = progress.records
    done = count(records, *DONE_STATES)
    failed = count(records, "Failed", "MetricsUnavailable")
    stopped = count(records, "EarlyStopped")
    text = Text.assemble(
        (progress.experiment, "bold"),
        f"  trials {done}/{progress.max_trials}",
        f"  running {count(records, 'Running')}/{progress.parallel}",
        (f"  failed {failed}", "red" if failed else ""),
        f" (stops at {max(progress.max_failed, 1)})",
        (f"  early stopped {stopped}", STATE_STYLES["EarlyStopped"]) if stopped else "",
        f"  {progress.threads_per_trial} thread(s) per trial",
    )
    if progress.verdict is not None:
        style = "green" if progress.verdict.type == "Succeeded" else "red"
        text.append(f"\n{progress.verdict.type}: {progress.verdict.message}", style=style)
    return text


def trial_table(progress: Progress, at: datetime) -> Table:
    """One row per trial: parameters, state, latest metrics, duration."""
    params = list(progress.records[0].assignments) if progress.records else []
    metrics = metric_names(progress)
    table = Table(expand=False, show_edge=False, pad_edge=False)
    table.add_column("trial", justify="right")
    for name in params:
        table.add_column(name, justify="right")
    table.add_column("state")
    for name in metrics:
        table.add_column(name, justify="right")
    table.add_column("time", justify="right")
    for record in progress.records[-MAX_ROWS:]:
        values = [short_value(record.assignments[name]) for name in params]
        latest = [f"{record.metrics[n].latest:.4f}" if n in record.metrics else "" for n in metrics]
        state = Text(record.state, style=STATE_STYLES[record.state])
        table.add_row(str(record.number), *values, state, *latest, duration(record, at))
    return table


def short_value(value: str) -> str:
    """Show a sampled float with four significant digits; leave other values as they are."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def failures(progress: Progress) -> list[RenderableType]:
    """Show the last output lines of failed trials, newest first, at most three panels."""
    panels: list[RenderableType] = []
    for record in reversed(progress.records):
        lines = progress.tails.get(record.name)
        if record.state in ("Failed", "MetricsUnavailable") and lines is not None:
            body = "\n".join([record.message, *lines]) if lines else record.message
            panels.append(Panel(body, title=f"trial {record.number} {record.state}", style="red"))
    return panels[:3]


def render(progress: Progress, at: datetime) -> RenderableType:
    """Draw the whole live view for one snapshot."""
    done = count(progress.records, *DONE_STATES)
    bar = ProgressBar(total=progress.max_trials, completed=done, width=40)
    return Group(headline(progress), bar, trial_table(progress, at), *failures(progress))


class LiveView:
    """Redraw the view in place on a terminal; print one line per trial event elsewhere."""

    def __init__(self, console: Console) -> None:
        """Choose the live table on a terminal, plain lines otherwise."""
        self.console = console
        self.live = Live(console=console, refresh_per_second=4) if console.is_terminal else None
        self.seen: dict[int, str] = {}

    def __enter__(self) -> LiveView:
        """Start redrawing."""
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        """Leave the last frame on screen."""
        if self.live is not None:
            self.live.stop()

    def __call__(self, progress: Progress) -> None:
        """Show a new snapshot."""
        if self.live is not None:
            self.live.update(render(progress, now()))
            return
        for record in progress.records:
            if self.seen.get(record.number) == record.state:
                continue
            self.seen[record.number] = record.state
            self.console.print(event_line(record, progress), highlight=False)
            lines = progress.tails.get(record.name)
            for line in lines or []:
                self.console.print(f"    | {line}", highlight=False, markup=False)
        if progress.verdict is not None:
            self.console.print(headline(progress))


def event_line(record: TrialRecord, progress: Progress) -> str:
    """One log line for a trial that changed state."""
    params = " ".join(f"{k}={short_value(v)}" for k, v in record.assignments.items())
    metrics = " ".join(f"{k}={s.latest:.4f}" for k, s in record.metrics.items())
    done = count(progress.records, *DONE_STATES)
    parts = [f"[{done}/{progress.max_trials}] trial {record.number} {record.state}", params]
    if metrics and record.state != "Running":
        parts.append(metrics)
    if record.message:
        parts.append(f"({record.message})")
    return "  ".join(parts)


def result_table(status: MnistTuningStatus) -> Table:
    """Tabulate the best trial's hyperparameters and metrics, for the end of the run."""
    table = Table(title="best trial", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    if status.best is None:
        table.add_row("none", "no trial reported its objective")
        return table
    table.add_row("trial", status.best.trial)
    for name, value in status.best.hyperparameters.items():
        table.add_row(name, f"{value:.6g}" if isinstance(value, float) else str(value))
    for name, number in status.best.metrics.items():
        table.add_row(name, f"{number:.4f}")
    return table
