"""The trainer's thread count: its CPU affinity capped by its own cgroup's CPU quota.

Fake cgroup trees cover the layouts a container runtime leaves (cgroup v2 and v1, on a host
and inside a container); a real v1 cgroup with a quota on this machine checks the trainer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import pytest
from mnist_trainer.cpus import available_cpus, cpu_quota

AFFINITY = len(os.sched_getaffinity(0))

# mountinfo lines as the kernel writes them: a v1 host with one hierarchy per controller
# (this machine), a systemd v1 host with cpu and cpuacct together, and a v2-only host.
V1_MOUNTS = """\
30 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
34 30 0:31 / /sys/fs/cgroup/cpuset rw,relatime shared:2 - cgroup cgroup rw,cpuset
32 30 0:29 / /sys/fs/cgroup/cpu rw,relatime shared:3 - cgroup cgroup rw,cpu
33 30 0:30 / /sys/fs/cgroup/cpuacct rw,relatime shared:4 - cgroup cgroup rw,cpuacct
41 30 0:38 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw
"""
SYSTEMD_V1_MOUNTS = """\
25 24 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
26 24 0:23 / /sys/fs/cgroup/cpuset rw,nosuid,relatime shared:10 - cgroup cgroup rw,cpuset
"""
V2_MOUNTS = "29 23 0:26 / /sys/fs/cgroup rw,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def fake_root(tmp_path: Path, proc_cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    """A filesystem root holding /proc/self's two files and the given cgroup files."""
    for name, text in {
        "proc/self/cgroup": proc_cgroup,
        "proc/self/mountinfo": mountinfo,
        **files,
    }.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def v1_files(folder: str, quota: str, period: str = "100000") -> dict[str, str]:
    return {
        f"{folder}/cpu.cfs_quota_us": f"{quota}\n",
        f"{folder}/cpu.cfs_period_us": f"{period}\n",
    }


POD = "/kubepods/burstable/pod1/ctr"
V2_POD = "/kubepods.slice/kubepods-burstable.slice/cri-containerd-abc.scope"
HOST_V1 = f"4:cpuset:/\n3:cpu:{POD}\n2:cpuacct:{POD}\n0::/\n"
# The hierarchies' roots have limits of their own; only the process's own cgroup counts.
V1_ROOT_LIMIT = v1_files("sys/fs/cgroup/cpu", "400000")
V2_ROOT_LIMIT = {"sys/fs/cgroup/cpu.max": "400000 100000\n"}


@pytest.mark.parametrize(
    ("proc_cgroup", "mountinfo", "files", "cpus"),
    [
        *(
            pytest.param(
                HOST_V1,
                V1_MOUNTS,
                {**V1_ROOT_LIMIT, **v1_files(f"sys/fs/cgroup/cpu{POD}", quota)},
                cpus,
                id=f"v1 nested, quota {quota}",
            )
            for quota, cpus in [
                ("50000", Fraction(1, 2)),
                ("150000", Fraction(3, 2)),
                ("200000", Fraction(2)),
                ("-1", None),
            ]
        ),
        pytest.param(
            "1:cpu:/a\n",
            V1_MOUNTS,
            v1_files("sys/fs/cgroup/cpu/a", "25000", "50000"),
            Fraction(1, 2),
            id="v1, a period other than the default",
        ),
        pytest.param(
            "5:cpuset:/\n4:cpu,cpuacct:/system.slice/job.service\n1:name=systemd:/\n",
            SYSTEMD_V1_MOUNTS,
            v1_files("sys/fs/cgroup/cpu,cpuacct/system.slice/job.service", "150000"),
            Fraction(3, 2),
            id="v1, cpu and cpuacct mounted together",
        ),
        # Without a cgroup namespace a container's /proc/self/cgroup names the host's path,
        # and the runtime bind-mounts that very cgroup at /sys/fs/cgroup/cpu,cpuacct: the
        # mountinfo root field says which folder of the hierarchy the mount shows.
        pytest.param(
            f"4:cpu,cpuacct:{POD}\n",
            f"1290 1280 0:29 {POD} /sys/fs/cgroup/cpu,cpuacct ro,nosuid,relatime master:12 "
            "- cgroup cgroup rw,cpu,cpuacct\n",
            v1_files("sys/fs/cgroup/cpu,cpuacct", "50000"),
            Fraction(1, 2),
            id="v1, container in the host's cgroup namespace",
        ),
        pytest.param(
            "4:cpu,cpuacct:/\n0::/\n",
            "1290 1280 0:29 / /sys/fs/cgroup/cpu,cpuacct ro,nosuid,relatime "
            "- cgroup cgroup rw,cpu,cpuacct\n",
            v1_files("sys/fs/cgroup/cpu,cpuacct", "150000"),
            Fraction(3, 2),
            id="v1, container with its own cgroup namespace",
        ),
        pytest.param(
            "3:cpu:/my pod/ctr\n",
            "32 30 0:29 /my\\040pod /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
            v1_files("sys/fs/cgroup/cpu/ctr", "50000"),
            Fraction(1, 2),
            id="v1, an escaped space in the mount root",
        ),
        *(
            pytest.param(
                f"0::{V2_POD}\n",
                V2_MOUNTS,
                {**V2_ROOT_LIMIT, f"sys/fs/cgroup{V2_POD}/cpu.max": cpu_max},
                cpus,
                id=f"v2 nested, cpu.max {cpu_max.strip()}",
            )
            for cpu_max, cpus in [
                ("50000 100000\n", Fraction(1, 2)),
                ("150000 100000\n", Fraction(3, 2)),
                ("max 100000\n", None),
            ]
        ),
        pytest.param(
            "0::/\n",
            V2_MOUNTS,
            {"sys/fs/cgroup/cpu.max": "50000 100000\n"},
            Fraction(1, 2),
            id="v2, container with its own cgroup namespace",
        ),
        # This machine's layout: the cpu controller is on v1, the v2 hierarchy has no cpu.max.
        pytest.param(
            "3:cpu:/job\n0::/job\n",
            V1_MOUNTS,
            v1_files("sys/fs/cgroup/cpu/job", "50000"),
            Fraction(1, 2),
            id="hybrid, limit on v1",
        ),
        pytest.param(
            "3:cpu:/job\n0::/job\n",
            V1_MOUNTS,
            {
                **v1_files("sys/fs/cgroup/cpu/job", "300000"),
                "sys/fs/cgroup/unified/job/cpu.max": "150000 100000\n",
            },
            Fraction(3, 2),
            id="hybrid, limits on both: the smaller",
        ),
        pytest.param("", "", {}, None, id="no cgroups at all"),
        pytest.param(
            "3:cpu:/job\n", "", v1_files("sys/fs/cgroup/cpu/job", "50000"), None, id="no mount"
        ),
        pytest.param("3:cpuacct:/job\n", V1_MOUNTS, {}, None, id="no cpu controller"),
        pytest.param("3:cpu:/job\n", V1_MOUNTS, {}, None, id="no quota file"),
        pytest.param(
            "3:cpu:/job\n",
            V1_MOUNTS,
            v1_files("sys/fs/cgroup/cpu/job", "50000", "0"),
            None,
            id="zero period",
        ),
        pytest.param(
            "0::/../elsewhere\n",
            V2_MOUNTS,
            {"sys/fs/elsewhere/cpu.max": "50000 100000\n"},
            None,
            id="outside the cgroup namespace",
        ),
        pytest.param("garbage\n", V2_MOUNTS, V2_ROOT_LIMIT, None, id="malformed /proc/self/cgroup"),
    ],
)
def test_the_quota_is_the_processs_own_cgroups(
    tmp_path: Path, proc_cgroup: str, mountinfo: str, files: dict[str, str], cpus: Fraction | None
) -> None:
    assert cpu_quota(fake_root(tmp_path, proc_cgroup, mountinfo, files)) == cpus


def test_missing_proc_files_are_no_limit(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path) is None


@pytest.mark.parametrize(
    ("quota", "threads"),
    [
        ("50000", 1),
        ("100000", 1),
        ("150000", min(2, AFFINITY)),
        ("6400000", AFFINITY),
        ("-1", AFFINITY),
    ],
)
def test_threads_are_the_affinity_capped_by_the_quota_rounded_up(
    tmp_path: Path, quota: str, threads: int
) -> None:
    root = fake_root(tmp_path, "3:cpu:/job\n", V1_MOUNTS, v1_files("sys/fs/cgroup/cpu/job", quota))
    assert available_cpus(root) == threads


# The real thing: the trainer started inside a v1 cgroup of this machine's cpu controller.
V1_CPU = Path("/sys/fs/cgroup/cpu")


@pytest.fixture(scope="module")
def v1_cpu_controller() -> Path:
    if os.geteuid() != 0:
        pytest.skip("creating a cgroup needs root")
    if not (V1_CPU / "cpu.cfs_quota_us").is_file():
        pytest.skip(f"no cgroup v1 cpu controller at {V1_CPU}")
    if not os.access(V1_CPU, os.W_OK):
        pytest.skip(f"{V1_CPU} is read-only here (a container?)")
    return V1_CPU


@contextmanager
def v1_cgroup(controller: Path, quota_us: int | None) -> Iterator[Path]:
    """A fresh child cgroup with this quota per 100 ms period (None: no limit), then removed."""
    folder = controller / f"mnist-trainer-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        if quota_us is not None:
            (folder / "cpu.cfs_period_us").write_text("100000")
            (folder / "cpu.cfs_quota_us").write_text(str(quota_us))
        yield folder
    finally:
        folder.rmdir()


@pytest.mark.parametrize(
    ("quota_us", "threads"), [(50_000, 1), (150_000, min(2, AFFINITY)), (None, AFFINITY)]
)
def test_the_trainer_in_a_v1_cgroup_reports_threads_its_quota_allows(
    v1_cpu_controller: Path,
    mnist_root: Path,
    tmp_path: Path,
    quota_us: int | None,
    threads: int,
) -> None:
    with v1_cgroup(v1_cpu_controller, quota_us) as cgroup:
        # The shell joins the cgroup, shows that it did, then becomes the trainer.
        result = subprocess.run(
            [
                "sh",
                "-c",
                'echo $$ > "$1" && shift && cat /proc/self/cgroup && exec "$@"',
                "sh",
                str(cgroup / "cgroup.procs"),
                sys.executable,
                "-m",
                "mnist_trainer",
                "--train-limit=64",
                f"--data-dir={mnist_root}",
                f"--metrics-file={tmp_path / 'metrics.json'}",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    memberships = [
        line.split(":", 2) for line in result.stdout.splitlines() if re.match(r"\d+:", line)
    ]
    assert any(
        "cpu" in controllers.split(",") and path.endswith(f"/{cgroup.name}")
        for _, controllers, path in memberships
    ), result.stdout
    assert re.findall(r"(?:^|\s)threads=(\d+)", result.stdout) == [str(threads)]
