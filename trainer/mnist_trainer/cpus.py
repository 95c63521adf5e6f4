"""The CPUs a trial may really use: its affinity, capped by its own cgroup's CPU quota.

A pod with a CPU limit sees every core of its node; a thread per core would make torch's
threads wait for each other's time slices (under a 0.5-CPU limit an epoch took 1.7 times
as long on two threads as on one). The container runtime writes the limit into the
container's own cgroup: `cpu.max` on cgroup v2, `cpu.cfs_quota_us` / `cpu.cfs_period_us`
of the `cpu` controller on v1. Which folder that is comes from /proc/self/cgroup (the
cgroup's path) and /proc/self/mountinfo (where that hierarchy is mounted, and which of its
folders the mount shows: `/` inside a container with its own cgroup namespace, the
container's own cgroup when the host's namespace is bind-mounted in).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Final

ROOT: Final = Path("/")
# mountinfo writes a space, tab, newline or backslash in a path as a 3-digit octal escape.
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")
# The key /proc/self/cgroup gives the v2 hierarchy (`0::/path`), which lists no controllers.
_V2: Final = ""


@dataclass(frozen=True)
class _Mount:
    """One cgroup line of /proc/self/mountinfo."""

    root: PurePosixPath  # the folder of the hierarchy that the mount shows
    point: PurePosixPath  # where it is mounted
    fstype: str  # cgroup (v1) or cgroup2
    options: frozenset[str]  # the super options; on v1 they name the controllers


def _unescape(field: str) -> str:
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), field)


def _cgroup_mounts(mountinfo: str) -> list[_Mount]:
    """Return the cgroup mounts in mountinfo(5) text, in its order."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        # Fields 4 and 5 are the root and the mount point; after any optional fields, a
        # lone "-" and then the filesystem type, the source and the super options.
        try:
            separator = fields.index("-", 6)
            fstype, _, options = fields[separator + 1 : separator + 4]
        except ValueError:
            continue
        if fstype in {"cgroup", "cgroup2"}:
            mounts.append(
                _Mount(
                    root=PurePosixPath(_unescape(fields[3])),
                    point=PurePosixPath(_unescape(fields[4])),
                    fstype=fstype,
                    options=frozenset(options.split(",")),
                )
            )
    return mounts


def _cgroup_paths(proc_cgroup: str) -> dict[str, PurePosixPath]:
    """Map each v1 controller, and `_V2` for the v2 hierarchy, to the process's cgroup."""
    paths = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [_V2]:
            paths[controller] = PurePosixPath(path)
    return paths


def _folder(root: Path, mounts: list[_Mount], path: PurePosixPath | None) -> Path | None:
    """Where cgroup `path` lies under the first of these mounts that shows it, if any does.

    A cgroup outside the mount's root (`..` in its path: the process was moved out of
    its cgroup namespace) is not reachable through it.
    """
    if path is None:
        return None
    for mount in mounts:
        if ".." not in path.parts and path.is_relative_to(mount.root):
            return root / mount.point.relative_to("/") / path.relative_to(mount.root)
    return None


def _quota(folder: Path | None, files: tuple[str, ...]) -> Fraction | None:
    """Read the quota and period from these files of the folder, in CPUs; None: no limit.

    v2 keeps both in `cpu.max` ("max 100000" without a limit), v1 one per file (quota -1
    without a limit). A missing or malformed file counts as no limit: the worst outcome is
    one thread per CPU of the affinity, never a failed trial.
    """
    if folder is None:
        return None
    try:
        quota, period = " ".join((folder / name).read_text() for name in files).split()
        return None if quota in {"max", "-1"} else Fraction(int(quota), int(period))
    except (OSError, ValueError, ZeroDivisionError):
        return None


def cpu_quota(root: Path = ROOT) -> Fraction | None:
    """Return the CPU limit of this process's own cgroup in CPUs (v2 or v1); None: no limit.

    `root` is where the filesystem starts, /proc/self included, so that tests can hand
    in a fake tree.
    """
    try:
        paths = _cgroup_paths((root / "proc/self/cgroup").read_text())
        mounts = _cgroup_mounts((root / "proc/self/mountinfo").read_text())
    except (OSError, ValueError):
        return None
    v2 = [mount for mount in mounts if mount.fstype == "cgroup2"]
    v1 = [mount for mount in mounts if mount.fstype == "cgroup" and "cpu" in mount.options]
    limits = [
        _quota(_folder(root, v2, paths.get(_V2)), ("cpu.max",)),
        _quota(_folder(root, v1, paths.get("cpu")), ("cpu.cfs_quota_us", "cpu.cfs_period_us")),
    ]
    return min((limit for limit in limits if limit is not None), default=None)


def available_cpus(root: Path = ROOT) -> int:
    """Count the CPUs of the process's affinity, capped by its CPU quota rounded up; at least 1.

    Rounding up lets a 1.5-CPU trial use two threads; a quota under one CPU still gets one.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = cpu_quota(root)
    if quota is None:
        return cpus
    return max(1, min(cpus, math.ceil(quota)))
