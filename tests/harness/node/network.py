"""The node's addresses and the firewall that keeps every packet of it on this machine.

Pods and Services live in the benchmarking block 198.18.0.0/15 (RFC 2544): outside private and
public space, so nothing on any network answers there. Pods get 198.18.0.0/24 on the bridge,
Services 198.19.0.0/16. Four guards, all set up before the first pod starts:

- the service range is routed to the loopback device, so a packet to a ClusterIP that kube-proxy
  has not programmed yet dies here (the kernel never forwards what it received on loopback)
  instead of following the default route out, while kube-proxy's DNAT still reroutes the
  programmed ones (this VM's kernel has no dummy links);
- the bridge does not masquerade, and a filter chain drops anything from the pod range, or to the
  pod or service range, that would leave through the outside interface;
- containerd runs in the machine's own network namespace, where an image pull's DNS query or
  registry connection looks like any other program's: it runs in a cgroup of its own, and a
  filter chain at OUTPUT drops whatever a socket of that cgroup would send out (its registry
  configuration already sends every pull to a dead endpoint on loopback, `configs`);
- a mangle chain at POSTROUTING counts what does leave with such an address or from such a
  socket: the test tier asserts its counters, and the drop chains', stay at zero.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

POD_RANGE = "198.18.0.0/16"
NODE_POD_RANGE = "198.18.0.0/24"
SERVICE_RANGE = "198.19.0.0/16"
# kube-apiserver takes the first address of the service range for `kubernetes.default`.
API_SERVICE_IP = "198.19.0.1"
DNS_SERVICE_IP = "198.19.0.10"
BOTH_RANGES = "198.18.0.0/15"
GUARD_CHAIN = "MNT-NODE-GUARD"
# Its own chain: the kernel accepts a cgroup match at OUTPUT and POSTROUTING, never at FORWARD.
CONTAINERD_GUARD_CHAIN = "MNT-NODE-CONTAINERD"
# containerd's cgroup, relative to the unified (v2) hierarchy's root, as `-m cgroup --path` reads.
CONTAINERD_CGROUP = "mnt-node-containerd"
ACCOUNT_CHAIN = "MNT-NODE-ACCOUNT"
# Chains a node leaves behind: kube-proxy's, the CNI plugins', ours.
CHAIN_PREFIXES = ("KUBE-", "CNI-", "MNT-NODE-")


@dataclass(frozen=True)
class NetworkPlan:
    """Where the node's traffic goes on this machine."""

    node_ip: str
    outside: str
    bridge: str = "cni0"

    @property
    def gateway(self) -> str:
        """The bridge's address, the pods' default route."""
        return str(next(ipaddress.ip_network(NODE_POD_RANGE).hosts()))


def parse_default_route(route: str, addresses: str) -> tuple[str, str]:
    """(interface, its address) from `ip -4 route show default` and `ip -4 -o addr show dev`."""
    words, address_words = route.split(), addresses.split()
    try:
        interface = words[words.index("dev") + 1]
        address = address_words[address_words.index("inet") + 1].split("/")[0]
    except (ValueError, IndexError):
        raise ValueError(f"no default route with an address: {route.strip()!r}") from None
    return interface, address


def guard_rules(plan: NetworkPlan) -> list[list[str]]:
    """iptables argument lists that install the three chains and hook them in first."""
    out = ["-o", plan.outside]
    leaving = [
        ["-s", POD_RANGE, *out],
        ["-d", BOTH_RANGES, *out],
    ]
    from_containerd = ["-m", "cgroup", "--path", CONTAINERD_CGROUP, *out]
    rules: list[list[str]] = [
        ["-t", "filter", "-N", GUARD_CHAIN],
        *(["-t", "filter", "-A", GUARD_CHAIN, *match, "-j", "DROP"] for match in leaving),
        ["-t", "filter", "-N", CONTAINERD_GUARD_CHAIN],
        ["-t", "filter", "-A", CONTAINERD_GUARD_CHAIN, *from_containerd, "-j", "DROP"],
        ["-t", "filter", "-I", "FORWARD", "1", "-j", GUARD_CHAIN],
        ["-t", "filter", "-I", "OUTPUT", "1", "-j", GUARD_CHAIN],
        ["-t", "filter", "-I", "OUTPUT", "1", "-j", CONTAINERD_GUARD_CHAIN],
        ["-t", "mangle", "-N", ACCOUNT_CHAIN],
        *(
            ["-t", "mangle", "-A", ACCOUNT_CHAIN, *match, "-j", "RETURN"]
            for match in (*leaving, from_containerd)
        ),
        ["-t", "mangle", "-I", "POSTROUTING", "1", "-j", ACCOUNT_CHAIN],
    ]
    return rules


# `ip route add|del|show` arguments of the route that keeps the service range on this machine.
SERVICE_ROUTE = [SERVICE_RANGE, "dev", "lo"]


def parse_counters(saved: str, chain: str) -> dict[str, int]:
    """Rule → packet count of `chain` from `iptables-save -c` output."""
    counters: dict[str, int] = {}
    for line in saved.splitlines():
        head, _, rule = line.partition(" ")
        if head.startswith("[") and rule.startswith(f"-A {chain} "):
            counters[rule] = int(head.strip("[]").split(":")[0])
    return counters


def dns_query_packet(name: str, query_id: int = 0x4D4E) -> bytes:
    """A recursive DNS query for the A record of `name`."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    header = query_id.to_bytes(2, "big") + b"\x01\x00" + b"\x00\x01" + b"\x00" * 6
    return header + labels + b"\x00" + b"\x00\x01\x00\x01"


def _skip_name(message: bytes, offset: int) -> int:
    """The offset just past a (possibly compressed) domain name."""
    while message[offset]:
        if message[offset] & 0xC0 == 0xC0:
            return offset + 2
        offset += message[offset] + 1
    return offset + 1


def dns_answer_addresses(message: bytes) -> list[str]:
    """The IPv4 addresses in the answer section of a DNS response."""
    answers = int.from_bytes(message[6:8], "big")
    offset = _skip_name(message, 12) + 4
    addresses = []
    for _ in range(answers):
        offset = _skip_name(message, offset)
        record_type = int.from_bytes(message[offset : offset + 2], "big")
        length = int.from_bytes(message[offset + 8 : offset + 10], "big")
        data = message[offset + 10 : offset + 10 + length]
        if record_type == 1 and length == 4:
            addresses.append(str(ipaddress.IPv4Address(data)))
        offset += 10 + length
    return addresses


def resolve(server: str, name: str, timeout: float = 1.0) -> list[str]:
    """Ask the DNS server at `server`:53 (a ClusterIP on this machine) for `name`'s A records."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(dns_query_packet(name), (server, 53))
        reply, _ = sock.recvfrom(4096)
    return dns_answer_addresses(reply)
