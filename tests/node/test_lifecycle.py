"""The node keeps every packet on this machine, survives SIGKILL, and leaves nothing behind.

These checks look at the machine with its own tools (iptables-save, ip, /proc, the cgroup
mounts), not through the harness code that does the cleaning.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest
from node.host import NODE_PROGRAMS
from node.network import (
    ACCOUNT_CHAIN,
    CONTAINERD_CGROUP,
    CONTAINERD_GUARD_CHAIN,
    GUARD_CHAIN,
    parse_counters,
)
from node.node import Node, RunningNode
from workloads import container, pod, wait_for, wait_pod_phase


def saved_rules(table: str) -> str:
    return subprocess.run(
        ["iptables-save", "-c", "-t", table], capture_output=True, text=True, check=True
    ).stdout


@pytest.mark.reads_node_counters
def test_no_packet_of_the_node_left_through_the_outside_interface(node: RunningNode) -> None:
    filtered = saved_rules("filter")
    dropped = {
        **parse_counters(filtered, GUARD_CHAIN),
        **parse_counters(filtered, CONTAINERD_GUARD_CHAIN),
    }
    leaving = parse_counters(saved_rules("mangle"), ACCOUNT_CHAIN)

    outside = f"-o {node.plan.outside}"
    assert len(dropped) == len(leaving) == 3
    assert all(outside in rule for rule in [*dropped, *leaving])
    assert dropped == dict.fromkeys(dropped, 0), "something tried to leave and was dropped"
    assert leaving == dict.fromkeys(leaving, 0), "packets left the machine"


def containerd_packets() -> dict[str, int]:
    """Packets containerd's sockets tried to send out (dropped) and sent out (counted)."""
    leaving = parse_counters(saved_rules("mangle"), ACCOUNT_CHAIN)
    return {
        **parse_counters(saved_rules("filter"), CONTAINERD_GUARD_CHAIN),
        **{rule: count for rule, count in leaving.items() if CONTAINERD_CGROUP in rule},
    }


def test_an_image_of_an_outside_registry_fails_here_and_nothing_asks_for_it_outside(
    node: RunningNode, node_namespace: str
) -> None:
    # Katib's image for `bayesianoptimization`: no registry on this machine serves it.
    image = "ghcr.io/kubeflow/katib/suggestion-skopt:v0.19.0"
    before = containerd_packets()
    assert len(before) == 2, before
    node.apply([pod("outside", node_namespace, {"name": "outside", "image": image})])

    said: list[str] = []

    def refused() -> bool:
        events = node.kubectl(
            "get", "events", "-n", node_namespace, "-o", "json",
            "--field-selector", "involvedObject.name=outside,reason=Failed",
        )  # fmt: skip
        said[:] = [event["message"] for event in json.loads(events.stdout)["items"]]
        return any("connection refused" in message for message in said)

    wait_for("the kubelet to report the pull refused", refused)
    # containerd asked the dead endpoint on loopback, not DNS or the registry's host.
    assert any(image in message and "127.0.0.1:9" in message for message in said), said
    assert containerd_packets() == before


def traces(root: Path) -> dict[str, list[str]]:
    """What of a node is on this machine, seen with the machine's own tools."""
    processes = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            exe = os.readlink(proc / "exe")
        except OSError:
            continue
        # The node runs its own copies; a control plane of another tier may run beside it.
        ours = exe.startswith(str(root)) or Path(exe).name.startswith("containerd")
        if Path(exe).name in NODE_PROGRAMS and ours:
            processes.append(f"{proc.name} {exe}")
    mounts = [
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[1].startswith((str(root), "/run/containerd", "/run/netns"))
    ]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    rules = "".join(saved_rules(table) for table in ("filter", "nat", "mangle"))
    return {
        "processes": processes,
        "mounts": mounts,
        "links": [
            line.split(":")[1].strip()
            for line in links.splitlines()
            if "cni0" in line or "veth" in line
        ],
        "routes": subprocess.run(
            ["ip", "route", "show", "198.19.0.0/16"], capture_output=True, text=True
        ).stdout.splitlines(),
        "files": [
            str(path)
            for folder, pattern in (("/var/log/containers", "*"), ("/var/lib/cni/results", "*"))
            for path in Path(folder).glob(pattern)
        ],
        "chains": [line for line in rules.splitlines() if "KUBE-" in line or "CNI-" in line]
        + [line for line in rules.splitlines() if "MNT-NODE-" in line],
        "cgroups": [
            str(p)
            for name in ("kubepods", CONTAINERD_CGROUP)
            for p in Path("/sys/fs/cgroup").glob(f"*/{name}")
        ],
        "netns": [p.name for p in Path("/run/netns").glob("*")]
        if Path("/run/netns").exists()
        else [],
    }


def a_pod_runs(node: RunningNode) -> bool:
    namespace = f"lifecycle-{uuid.uuid4().hex[:6]}"
    node.kubectl("create", "namespace", namespace)
    token = uuid.uuid4().hex
    node.apply([pod("probe", namespace, container("probe", f"print('{token}')"))])
    wait_pod_phase(node, namespace, "probe", {"Succeeded", "Failed"})
    return node.kubectl("logs", "probe", "-n", namespace).stdout.strip() == token


@pytest.mark.destroys_node
def test_after_a_sigkill_of_every_node_process_a_new_start_works_and_down_leaves_nothing(
    node_harness: Node, node: RunningNode, ip_forward_before: str
) -> None:
    assert a_pod_runs(node)
    assert traces(node.layout.root)["processes"], "the node runs"

    for line in traces(node.layout.root)["processes"]:
        os.kill(int(line.split()[0]), signal.SIGKILL)

    restarted = node_harness.up()
    assert a_pod_runs(restarted)

    node_harness.down()
    assert traces(node.layout.root) == {
        "processes": [],
        "mounts": [],
        "links": [],
        "routes": [],
        "files": [],
        "chains": [],
        "cgroups": [],
        "netns": [],
    }
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == ip_forward_before
