"""The trainer and Katib's early stopping: the marker Katib's collector writes must survive.

Katib v0.19.0 stops a trial early by writing `early-stopped` to `<metrics dir>/<shell pid>.pid`
and sending the trainer SIGTERM; its webhook wraps the trainer's command in a shell that then
writes `completed` over that marker. These tests run that shell for real, with no capabilities
and the marker's owner for its user, as a restricted trial pod with `injectSecurityContext: true`
does (its collector and trainer share one uid and drop every capability).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from mnist_trainer.early_stop import EARLY_STOPPED, keep_early_stop_marker

PR_CAPBSET_DROP = 24  # <linux/prctl.h>
LAST_CAPABILITY = 63

# Katib's wrapper (`wrapWorkerContainer` in pkg/webhook/v1beta1/pod/utils.go) after Kubernetes
# has turned its `$$$$` into `$$`: the trainer, then the early-stop check, then the mark.
KATIB_WRAPPER = (
    "{command} || if test -f {dir}/$$.pid && [ $(head -n 1 {dir}/$$.pid) = early-stopped ]; "
    "then echo Training Container was Early Stopped; "
    "else echo Training Container was Failed; exit 1; fi && echo completed > {dir}/$$.pid"
)

# A trainer stand-in: it installs (or not) the trainer's SIGTERM handling, says it is ready,
# then waits to be stopped, as a trainer mid-epoch does.
TRAINER = (
    "import os, sys, time\n"
    "from pathlib import Path\n"
    "from mnist_trainer.early_stop import end_on_sigterm\n"
    "metrics_dir = Path(sys.argv[2])\n"
    "if sys.argv[1] == 'guarded':\n"
    "    end_on_sigterm(metrics_dir / 'mnist.json')\n"
    "(metrics_dir / 'ready.tmp').write_text(str(os.getpid()))\n"
    "(metrics_dir / 'ready.tmp').rename(metrics_dir / 'ready')\n"
    "time.sleep(120)\n"
)


def without_capabilities() -> None:
    """In the child before exec: empty the bounding set, so root execs with no capabilities."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in range(LAST_CAPABILITY + 1):
        libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)  # EINVAL past the kernel's last one


def stop_early(metrics_dir: Path, mode: str) -> tuple[int, str]:
    """Run the wrapped trainer, stop it as Katib's collector does; its shell's exit and marker."""
    script = metrics_dir / "trainer.py"
    script.write_text(TRAINER)
    command = f"{sys.executable} {script} {mode} {metrics_dir}"
    shell = subprocess.Popen(
        ["sh", "-c", KATIB_WRAPPER.format(command=command, dir=metrics_dir)],
        stdout=subprocess.DEVNULL,
        preexec_fn=without_capabilities if os.geteuid() == 0 else None,
    )
    ready = metrics_dir / "ready"
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert shell.poll() is None, f"the trainer ended before it was ready: {shell.returncode}"
        assert time.monotonic() < deadline, "the trainer never said it was ready"
        time.sleep(0.05)
    # The collector, as the trainer's user: the marker first, then SIGTERM to the trainer.
    marker = metrics_dir / f"{shell.pid}.pid"
    marker.write_text(EARLY_STOPPED)
    os.kill(int(ready.read_text()), signal.SIGTERM)
    return shell.wait(timeout=60), marker.read_text()


def test_a_stopped_trainer_keeps_katibs_marker_so_the_trial_stays_early_stopped(
    tmp_path: Path,
) -> None:
    code, marker = stop_early(tmp_path, "guarded")

    assert marker == EARLY_STOPPED
    # The shell's own status: it could not write `completed` over the read-only marker.
    assert code == 2


def test_without_the_guard_katibs_shell_overwrites_the_marker(tmp_path: Path) -> None:
    """What the guard is for: the same shell, a plain trainer, and Katib's marker is lost."""
    code, marker = stop_early(tmp_path, "plain")

    assert marker.strip() == "completed"
    assert code == 0


def test_only_an_early_stop_marker_is_made_read_only(tmp_path: Path) -> None:
    (tmp_path / "7.pid").write_text("completed\n")
    (tmp_path / "8.pid").write_text(EARLY_STOPPED)

    assert not keep_early_stop_marker(tmp_path, 7)
    assert not keep_early_stop_marker(tmp_path, 9)  # no marker at all
    assert keep_early_stop_marker(tmp_path, 8)
    assert (tmp_path / "7.pid").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "8.pid").stat().st_mode & 0o777 == 0o444
