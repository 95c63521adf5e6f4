"""The node harness's pure parts: the image writer, the network guard, the DNS probe, traces."""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import os
import tarfile
from pathlib import Path

import pytest
from node import images, network
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
        }
        assert all(r[r.index("-o") + 1] == "ens5" for r in group)
    hooks = [r for r in rules if "-I" in r]
    assert {(r[1], r[3]) for r in hooks} == {
        ("filter", "FORWARD"),
        ("filter", "OUTPUT"),
        ("mangle", "POSTROUTING"),
    }
    assert all(r[4] == "1" for r in hooks), "the guard runs before anything else"


def test_the_address_ranges_are_benchmarking_space_only() -> None:
    block = ipaddress.ip_network("198.18.0.0/15")
    for cidr in (network.POD_RANGE, network.SERVICE_RANGE, network.NODE_POD_RANGE):
        assert ipaddress.ip_network(cidr).subnet_of(block)
    service = ipaddress.ip_network(network.SERVICE_RANGE)
    assert ipaddress.ip_address(network.DNS_SERVICE_IP) in service
    assert ipaddress.ip_address(network.API_SERVICE_IP) == next(service.hosts())


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
