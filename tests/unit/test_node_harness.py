"""The node harness's pure parts: the image writer, the network guard, the DNS probe, traces."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import subprocess
import tarfile
import time
import tomllib
import urllib.parse
from pathlib import Path

import pytest
import yaml
from node import __main__, configs, host, images, network, registry
from node.host import Leftovers


def read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as archive:
        return {
            member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive.getmembers()
        }


def blob(files: dict[str, bytes], digest: str) -> bytes:
    data = files["blobs/sha256/" + digest.removeprefix("sha256:")]
    assert "sha256:" + hashlib.sha256(data).hexdigest() == digest, "a blob's name is its digest"
    return data


def test_an_oci_archive_chains_index_manifest_config_and_layer_by_digest(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF not really")
    rootfs = images.static_rootfs(tmp_path / "rootfs", {"/usr/bin/tool": binary})
    (rootfs / "usr" / "bin" / "alias").symlink_to("tool")
    layer = tmp_path / "layer.tar"
    images.write_layer(rootfs, layer)
    extra = tmp_path / "extra"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc" / "tool.conf").write_text("on\n")
    top = tmp_path / "top.tar"
    images.write_layer(extra, top)
    config = images.ImageConfig(entrypoint=["/usr/bin/tool"], cmd=["--flag"], env={"A": "1"})

    digest = images.write_oci_archive(
        [layer, top], "localhost/tool:1.0", config, tmp_path / "out.tar"
    )

    files = read_archive(tmp_path / "out.tar")
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    [entry] = json.loads(files["index.json"])["manifests"]
    assert entry["digest"] == digest
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/tool:1.0"
    manifest = json.loads(blob(files, digest))
    image_config = json.loads(blob(files, manifest["config"]["digest"]))
    layer_entry, top_entry = manifest["layers"]
    assert image_config["rootfs"]["diff_ids"] == [layer_entry["digest"], top_entry["digest"]]
    with tarfile.open(fileobj=io.BytesIO(blob(files, top_entry["digest"]))) as tar:
        assert tar.getnames() == ["etc", "etc/tool.conf"]
    assert image_config["config"]["Entrypoint"] == ["/usr/bin/tool"]
    assert image_config["config"]["Cmd"] == ["--flag"]
    assert "A=1" in image_config["config"]["Env"]
    with tarfile.open(fileobj=io.BytesIO(blob(files, layer_entry["digest"]))) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["usr/bin/tool"].mode & 0o777 == 0o755
    assert members["usr/bin/tool"].uid == 0
    assert members["usr/bin/alias"].issym()
    assert members["tmp"].mode & 0o7777 == 0o1777


def test_the_same_rootfs_gives_the_same_image(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"same")
    digests = []
    for attempt in ("a", "b"):
        rootfs = images.static_rootfs(tmp_path / f"rootfs-{attempt}", {"/tool": binary})
        for path in rootfs.rglob("*"):
            os.utime(path, (0, 0))
        os.utime(rootfs, (0, 0))
        layer = tmp_path / f"layer-{attempt}.tar"
        images.write_layer(rootfs, layer)
        config = images.ImageConfig(entrypoint=["/tool"])
        digests.append(
            images.write_oci_archive([layer], "localhost/t:1", config, tmp_path / f"{attempt}.tar")
        )
    assert digests[0] == digests[1]


@pytest.mark.parametrize("name", ["localhost/tool", "localhost/tool:latest", "tool:"])
def test_an_image_needs_an_explicit_tag_other_than_latest(tmp_path: Path, name: str) -> None:
    layer = tmp_path / "layer.tar"
    images.write_layer(images.static_rootfs(tmp_path / "rootfs", {}), layer)
    with pytest.raises(ValueError, match="explicit tag"):
        images.write_oci_archive([layer], name, images.ImageConfig(), tmp_path / "out.tar")


def test_a_debian_layer_leaves_out_runtime_folders_but_keeps_them(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    for folder in ("dev", "proc", "etc", "var/lib/apt/lists", "tmp"):
        (rootfs / folder).mkdir(parents=True)
    (rootfs / "dev" / "null-copy").write_text("x")
    (rootfs / "var/lib/apt/lists" / "index").write_text("x")
    (rootfs / "etc" / "os-release").write_text("ID=debian\n")
    layer = tmp_path / "layer.tar"

    images.write_layer(rootfs, layer, skip_runtime_dirs=True)

    with tarfile.open(layer) as tar:
        names = set(tar.getnames())
    assert {"dev", "proc", "tmp", "etc/os-release", "var/lib/apt/lists"} <= names
    assert not names & {"dev/null-copy", "var/lib/apt/lists/index"}


def test_the_userland_cache_key_follows_the_package_list_not_its_order() -> None:
    a = images.DebianUserland("bookworm", ("python3", "procps"))
    b = images.DebianUserland("bookworm", ("procps", "python3"))
    c = images.DebianUserland("bookworm", ("python3",))
    assert a.key() == b.key() != c.key()


def test_the_debian_mirror_comes_from_the_apt_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list.d"
    sources.mkdir()
    (sources / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm\n"
    )
    assert images.debian_mirror(sources) == "http://mirror.invalid/debian"


def test_the_guard_drops_and_counts_the_node_ranges_on_the_outside_interface_only() -> None:
    plan = network.NetworkPlan(node_ip="203.0.113.7", outside="ens5")
    rules = network.guard_rules(plan)

    drops = [r for r in rules if r[-2:] == ["-j", "DROP"]]
    counts = [r for r in rules if r[-2:] == ["-j", "RETURN"]]
    for group in (drops, counts):
        assert {tuple(r[r.index("-o") - 2 : r.index("-o")]) for r in group} == {
            ("-s", network.POD_RANGE),
            ("-d", network.BOTH_RANGES),
            ("--path", network.CONTAINERD_CGROUP),
        }
        assert all(r[r.index("-o") + 1] == "ens5" for r in group)
    hooks = [(r[1], r[3], r[-1]) for r in rules if "-I" in r]
    assert sorted(hooks) == [
        ("filter", "FORWARD", network.GUARD_CHAIN),
        ("filter", "OUTPUT", network.CONTAINERD_GUARD_CHAIN),
        ("filter", "OUTPUT", network.GUARD_CHAIN),
        ("mangle", "POSTROUTING", network.ACCOUNT_CHAIN),
    ]
    assert all(r[4] == "1" for r in rules if "-I" in r), "the guard runs before anything else"
    # The kernel refuses a cgroup match in a chain reached from FORWARD.
    forwarded = [r for r in rules if "-A" in r and r[r.index("-A") + 1] == network.GUARD_CHAIN]
    assert not any("cgroup" in r for r in forwarded)


def test_containerd_joins_its_cgroup_before_it_runs_and_the_unified_hierarchy_is_found(
    tmp_path: Path,
) -> None:
    hybrid = "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\nnone /sys/fs/cgroup/unified cgroup2 rw 0 0\n"
    assert host.unified_hierarchy(hybrid) == Path("/sys/fs/cgroup/unified")
    assert host.unified_hierarchy("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n") == Path(
        "/sys/fs/cgroup"
    )
    with pytest.raises(host.HostError, match="mount -t cgroup2"):
        host.unified_hierarchy("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n")

    # A real shell, a stand-in cgroup folder: the pid the program runs as is the one written.
    argv = host.in_cgroup(tmp_path, ["sh", "-c", "echo $$"])
    ran = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert (tmp_path / "cgroup.procs").read_text().strip() == ran.stdout.strip()


def test_every_registry_but_those_named_goes_to_a_dead_port_on_loopback(tmp_path: Path) -> None:
    layout = configs.Layout(tmp_path)
    config = tomllib.loads(configs.containerd_config(layout))
    registry = config["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
    assert registry == {"config_path": str(layout.registry_hosts)}
    hosts = tomllib.loads(configs.default_registry_hosts())
    # containerd 1.6 ignores a file without a host table: the endpoint is the server and a host.
    assert list(hosts["host"]) == [hosts["server"]]
    assert hosts["host"][hosts["server"]]["capabilities"] == ["pull", "resolve"]
    server = urllib.parse.urlsplit(hosts["server"])
    assert ipaddress.ip_address(server.hostname or "").is_loopback
    assert server.port == 9


def test_the_private_registry_listens_on_loopback_over_tls_with_a_login_containerd_trusts(
    tmp_path: Path,
) -> None:
    files = [tmp_path / n for n in ("storage", "registry.crt", "registry.key", "htpasswd")]
    settings = yaml.safe_load(registry.config(5443, *files))
    assert settings["http"] == {
        "addr": "127.0.0.1:5443",
        "tls": {"certificate": str(files[1]), "key": str(files[2])},
    }
    assert settings["auth"] == {"htpasswd": {"realm": registry.REALM, "path": str(files[3])}}
    assert settings["storage"]["filesystem"] == {"rootdirectory": str(files[0])}
    assert "notifications" not in settings  # it sends nothing anywhere
    hosts = tomllib.loads(registry.containerd_hosts("127.0.0.1:5443", tmp_path / "ca.crt"))
    assert hosts["server"] == "https://127.0.0.1:5443"
    assert hosts["host"] == {
        "https://127.0.0.1:5443": {
            "capabilities": ["pull", "resolve"],
            "ca": str(tmp_path / "ca.crt"),
        }
    }


def test_the_address_ranges_are_benchmarking_space_only() -> None:
    block = ipaddress.ip_network("198.18.0.0/15")
    for cidr in (network.POD_RANGE, network.SERVICE_RANGE, network.NODE_POD_RANGE):
        assert ipaddress.ip_network(cidr).subnet_of(block)
    service = ipaddress.ip_network(network.SERVICE_RANGE)
    assert ipaddress.ip_address(network.DNS_SERVICE_IP) in service
    assert ipaddress.ip_address(network.API_SERVICE_IP) == next(service.hosts())


def test_the_node_dns_is_not_starved_by_trial_pods_and_waits_out_a_slow_answer() -> None:
    """Trial pods (Burstable by Katib's collector) fill both cores; CoreDNS must still answer."""
    [deployment] = [m for m in configs.coredns_manifests() if m["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert container["resources"]["requests"]["cpu"] == "100m"  # Burstable, not BestEffort
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["timeoutSeconds"] >= 5
        assert container[probe]["timeoutSeconds"] * container[probe]["failureThreshold"] >= 25


def test_counters_are_read_per_rule_of_one_chain() -> None:
    saved = (
        "*mangle\n"
        ":MNT-NODE-ACCOUNT - [0:0]\n"
        "[0:0] -A POSTROUTING -j MNT-NODE-ACCOUNT\n"
        "[3:180] -A MNT-NODE-ACCOUNT -s 198.18.0.0/16 -o ens5 -j RETURN\n"
        "[0:0] -A MNT-NODE-ACCOUNT -d 198.18.0.0/15 -o ens5 -j RETURN\n"
        "COMMIT\n"
    )
    assert network.parse_counters(saved, network.ACCOUNT_CHAIN) == {
        "-A MNT-NODE-ACCOUNT -s 198.18.0.0/16 -o ens5 -j RETURN": 3,
        "-A MNT-NODE-ACCOUNT -d 198.18.0.0/15 -o ens5 -j RETURN": 0,
    }


def test_the_default_route_names_the_outside_interface_and_node_address() -> None:
    route = "default via 203.0.113.1 dev ens5 proto dhcp metric 100\n"
    addresses = "2: ens5    inet 203.0.113.7/24 brd 203.0.113.255 scope global ens5\n"
    assert network.parse_default_route(route, addresses) == ("ens5", "203.0.113.7")
    with pytest.raises(ValueError, match="no default route"):
        network.parse_default_route("", "")


def test_a_dns_answer_with_a_compressed_name_gives_its_addresses() -> None:
    query = network.dns_query_packet("kubernetes.default.svc.cluster.local")
    answer = (
        query[:2]
        + b"\x85\x00\x00\x01\x00\x02\x00\x00\x00\x00"
        + query[12:]
        + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\xc6\x13\x00\x01"
        + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x1e\x00\x04\xc6\x13\x00\x02"
    )
    assert query[12:].startswith(b"\x0akubernetes\x07default\x03svc\x07cluster\x05local\x00")
    assert network.dns_answer_addresses(answer) == ["198.19.0.1", "198.19.0.2"]


def test_leftovers_describe_only_what_is_left() -> None:
    assert Leftovers().empty()
    left = Leftovers(links=["cni0"], cgroups=["/sys/fs/cgroup/cpu/kubepods"])
    assert not left.empty()
    assert left.describe().splitlines() == ["links: cni0", "cgroups: /sys/fs/cgroup/cpu/kubepods"]


def test_the_value_before_any_node_is_the_one_a_killed_run_saved(tmp_path: Path) -> None:
    saved = host.Sysctls(tmp_path / "sysctls")
    live = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    assert saved.original("net.ipv4.ip_forward") == live

    other = "1" if live == "0" else "0"
    saved.saved_to.write_text(
        f"net.ipv4.ip_forward={other}\nnet.bridge.bridge-nf-call-iptables=0\n"
    )
    assert saved.saved() == {
        "net.ipv4.ip_forward": other,
        "net.bridge.bridge-nf-call-iptables": "0",
    }
    assert saved.original("net.ipv4.ip_forward") == other


@pytest.mark.parametrize(
    ("argv", "parts"),
    [(["down"], []), (["up", "--gitops"], []), (["stop", "kubelet", "containerd"],
                                                 ["kubelet", "containerd"])],
)  # fmt: skip
def test_the_command_line_takes_parts_for_stop_and_start_only(
    argv: list[str], parts: list[str]
) -> None:
    assert __main__.parse(argv).parts == parts


@pytest.mark.parametrize("argv", [["stop"], ["start"], ["up", "kubelet"], ["stop", "kubelett"]])
def test_a_command_line_without_parts_or_with_a_wrong_one_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        __main__.parse(argv)
    assert exited.value.code == 2


def test_an_exited_child_not_yet_reaped_no_longer_runs() -> None:
    child = subprocess.Popen(["true"])
    assert host.running(os.getpid())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.05)
    assert not host.running(child.pid)  # a zombie: /proc still has it
    child.wait()
    assert not host.running(child.pid)
