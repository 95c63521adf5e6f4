"""Container images without a daemon or a registry: OCI image layouts, imported into containerd.

An image here is a few layers (tars of root filesystems) plus an OCI config, manifest and index,
written as an OCI image layout inside a tar: what `ctr -n k8s.io images import` reads. Two
kinds of root filesystem: a few static binaries on an empty base, and a Debian userland made by
`debootstrap --variant=minbase`, cached by its suite and package list because it takes a minute
and a mirror to make. Every image gets the exact name and non-`latest` tag its manifest uses, and
pods run it with `imagePullPolicy: Never`: nothing is ever pulled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Left out of a Debian layer: filled at run time by the runtime, or caches of the build.
SKIPPED_IN_ROOTFS = (
    "dev/",
    "proc/",
    "sys/",
    "run/",
    "tmp/",
    "var/cache/apt/",
    "var/lib/apt/lists/",
)
EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an OCI image config a pod can rely on."""

    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""

    def as_oci(self) -> dict[str, object]:
        """The `config` object of an OCI image config."""
        env = {"PATH": DEFAULT_PATH, **self.env}
        config: dict[str, object] = {
            "Env": [f"{key}={value}" for key, value in env.items()],
            "WorkingDir": self.workdir,
        }
        if self.entrypoint is not None:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            config["Cmd"] = list(self.cmd)
        if self.user:
            config["User"] = self.user
        return config


def _skipped(relative: str) -> bool:
    """True for the contents (not the directory itself) of a skipped top-level folder."""
    return any(
        relative.startswith(prefix) and relative != prefix[:-1] for prefix in SKIPPED_IN_ROOTFS
    )


def _walk(rootfs: Path) -> Iterator[Path]:
    """Every path below rootfs in a stable order (sorted, parents before children)."""
    for directory, subdirs, files in os.walk(rootfs):
        subdirs.sort()
        for name in sorted([*subdirs, *files]):
            yield Path(directory) / name


def write_layer(rootfs: Path, out: Path, *, skip_runtime_dirs: bool = False) -> None:
    """Write rootfs as an uncompressed layer tar: owners root, modes and links kept."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(_walk(rootfs), key=lambda p: p.relative_to(rootfs).parts):
            relative = path.relative_to(rootfs).as_posix()
            if skip_runtime_dirs and _skipped(relative):
                continue
            info = tar.gettarinfo(str(path), arcname=relative)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isreg():
                with path.open("rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)


def _digest_file(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            sha.update(chunk)
    return f"sha256:{sha.hexdigest()}", path.stat().st_size


def _digest(data: bytes) -> tuple[str, int]:
    return f"sha256:{hashlib.sha256(data).hexdigest()}", len(data)


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_oci_archive(layers: Sequence[Path], name: str, config: ImageConfig, out: Path) -> str:
    """Write an OCI image layout tar of `layers` (base first) named `name`; return its digest."""
    repository, _, tag = name.rpartition(":")
    if not repository or not tag or "/" in tag or tag == "latest":
        raise ValueError(f"image name {name!r} needs an explicit tag other than latest")
    digests = [_digest_file(layer) for layer in layers]
    image_config = _json(
        {
            "created": EPOCH,
            "architecture": "amd64",
            "os": "linux",
            "config": config.as_oci(),
            "rootfs": {"type": "layers", "diff_ids": [digest for digest, _ in digests]},
            # One entry per layer: buildah (containers/image) refuses a config whose history
            # counts fewer non-empty layers than the rootfs has.
            "history": [
                {"created": EPOCH, "created_by": f"mnist-tuning node images: {name}"}
                for _ in layers
            ],
        }
    )
    config_digest, config_size = _digest(image_config)
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _descriptor(MEDIA_CONFIG, config_digest, config_size),
            "layers": [_descriptor(MEDIA_LAYER, digest, size) for digest, size in digests],
        }
    )
    manifest_digest, manifest_size = _digest(manifest)
    index = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    **_descriptor(MEDIA_MANIFEST, manifest_digest, manifest_size),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    )

    def blob_path(digest: str) -> str:
        return "blobs/sha256/" + digest.removeprefix("sha256:")

    with tarfile.open(out, "w") as archive:
        for member, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
            (blob_path(config_digest), image_config),
            (blob_path(manifest_digest), manifest),
        ):
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
        for layer, (digest, _) in zip(layers, digests, strict=True):
            archive.add(str(layer), arcname=blob_path(digest))
    return manifest_digest


def static_rootfs(directory: Path, binaries: Mapping[str, Path]) -> Path:
    """A root filesystem of static binaries (target path → source file) on an empty base."""
    shutil.rmtree(directory, ignore_errors=True)
    for sub in ("etc", "tmp"):
        (directory / sub).mkdir(parents=True)
    (directory / "tmp").chmod(0o1777)
    for target, source in binaries.items():
        destination = directory / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
        destination.chmod(0o755)
    return directory


@dataclass(frozen=True)
class DebianUserland:
    """A `debootstrap --variant=minbase` root filesystem of one suite with extra packages."""

    suite: str
    packages: tuple[str, ...]

    def key(self) -> str:
        """Cache key and image tag part: the suite and the sorted package list."""
        spec = f"{self.suite} {' '.join(sorted(self.packages))}"
        return hashlib.sha256(spec.encode()).hexdigest()[:12]

    def layer(self, cache: Path, mirror: str) -> Path:
        """The layer tar of this userland, built once into `cache` (needs root and the mirror)."""
        layer = cache / f"debian-{self.suite}-{self.key()}.tar"
        if layer.exists():
            return layer
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            rootfs = Path(scratch) / "rootfs"
            argv = ["debootstrap", "--variant=minbase"]
            if self.packages:
                argv.append("--include=" + ",".join(sorted(self.packages)))
            argv += [self.suite, str(rootfs), mirror]
            result = subprocess.run(argv, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed: {result.stdout[-1500:]}")
            partial = layer.with_suffix(".partial")
            write_layer(rootfs, partial, skip_runtime_dirs=True)
            partial.replace(layer)
        return layer


def debian_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d")) -> str:
    """The Debian mirror this machine's apt sources name (deb822 `URIs:` or a `deb` line)."""
    texts = [p.read_text() for p in sorted(sources_dir.glob("*")) if p.is_file()]
    sources_list = sources_dir.parent / "sources.list"
    if sources_list.exists():
        texts.append(sources_list.read_text())
    for text in texts:
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "URIs:" and "security" not in words[1]:
                return words[1]
            if len(words) >= 3 and words[0] == "deb" and "security" not in line:
                return next(w for w in words[1:] if "://" in w)
    raise RuntimeError(f"no Debian mirror in {sources_dir} or {sources_list}")


def import_archive(ctr: Sequence[str], archive: Path) -> None:
    """`ctr -n k8s.io images import` the archive (kubelet's namespace)."""
    subprocess.run(
        [*ctr, "-n", "k8s.io", "images", "import", str(archive)],
        capture_output=True,
        text=True,
        check=True,
    )


def image_names(ctr: Sequence[str]) -> set[str]:
    """The image names containerd's k8s.io namespace holds."""
    listing = subprocess.run(
        [*ctr, "-n", "k8s.io", "images", "ls", "-q"], capture_output=True, text=True, check=True
    )
    return set(listing.stdout.split())
