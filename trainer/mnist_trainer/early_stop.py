"""Katib's early stopping, from the trainer's side: its marker must outlive the trainer.

Only the standard library, so the node tier's stand-in trainer loads this very file.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

# What Katib's collector writes into its marker file when it stops a trial early (Katib v0.19.0,
# `pkg/metricscollector/v1beta1/common`); the file is `<metrics dir>/<pid of the shell>.pid`.
EARLY_STOPPED = "early-stopped"


def keep_early_stop_marker(metrics_dir: Path, shell_pid: int) -> bool:
    """Make Katib's early-stop marker for `shell_pid` read-only; True if there was one.

    Katib stops a trial early by writing the marker, then sending the trainer SIGTERM; the shell
    Katib wraps around the trainer then writes `completed` over the marker. Where the collector
    runs as root and the trainer does not, that write fails, and the collector, still reading
    `early-stopped`, stays until it has told Katib. With `injectSecurityContext` both run as the
    trainer's user: the write succeeds, the collector may end before it tells Katib, and the
    trial stays Running. A read-only marker keeps the write failing for a user without
    CAP_DAC_OVERRIDE (our trials drop every capability).
    """
    marker = metrics_dir / f"{shell_pid}.pid"
    try:
        if marker.read_text().strip() != EARLY_STOPPED:
            return False
        marker.chmod(0o444)
    except OSError:  # no marker, or one that is not ours to change: nothing to keep
        return False
    return True


def end_on_sigterm(metrics_file: Path) -> None:
    """On SIGTERM, keep Katib's early-stop marker, then end by the signal as before."""

    def ended(signum: int, _frame: FrameType | None) -> None:
        keep_early_stop_marker(metrics_file.absolute().parent, os.getppid())
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, ended)
