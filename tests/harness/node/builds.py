"""Our two images, built here from our own Dockerfiles with buildah: no daemon, no network.

Both Dockerfiles start `FROM python:3.11.14-slim-bookworm`, and the trainer's kernels compile
in a stage `FROM python:3.11.14-bookworm`; neither can be pulled here. Stand-ins made of
Debian's own python3.11 (debootstrap, with a venv at /usr/local so that `python` and `pip`
behave as in the official images; the build one adds g++ and Python's headers, as the full
official image has them) are imported into buildah's storage under those exact names.
`buildah bud` then runs each Dockerfile with its offline build arguments: pip reads a wheelhouse
that the host filled from PyPI with the versions pyproject.toml pins, and the trainer copies
`make data`'s raw MNIST files instead of downloading them. Each image is pushed to an OCI
archive named by a hash of everything that went into it, so an unchanged tree builds nothing;
`images.import_archive` loads an archive into the node's containerd.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node import host, images
from node.node import cache_dir


@dataclass(frozen=True)
class StandInBase:
    """A stand-in for an official Python image: its exact name and the Debian userland."""

    name: str
    userland: images.DebianUserland

    def stem(self) -> str:
        """The archive's file name without the key: the tag, `python-3.11.14-bookworm`."""
        return "python-" + self.name.rpartition(":")[2]


# python3-distutils provides the virtual python3.11-distutils that python3.11-venv depends on:
# debootstrap resolves no virtual packages, so it is named here.
_PYTHON_PACKAGES = ("ca-certificates", "python3-distutils", "python3.11", "python3.11-venv")
PYTHON_BASE = StandInBase(
    "docker.io/library/python:3.11.14-slim-bookworm",
    images.DebianUserland("bookworm", _PYTHON_PACKAGES),
)
# The full image's compiler and headers, for the stage that builds the trainer's kernels.
BUILD_BASE = StandInBase(
    "docker.io/library/python:3.11.14-bookworm",
    images.DebianUserland("bookworm", (*_PYTHON_PACKAGES, "g++", "python3.11-dev")),
)
BASES = (PYTHON_BASE, BUILD_BASE)
# The official image's PATH (its Python lives in /usr/local/bin), LANG and CMD.
BASE_CONFIG = images.ImageConfig(
    cmd=["python3"],
    env={"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
)
# A venv over Debian's interpreter: python, python3, pip in /usr/local/bin, and pip installs
# there without Debian's "externally managed" refusal, as in the official image.
BASE_VENV = ("/usr/bin/python3.11", "-m", "venv", "/usr/local")
BASE_PYTHON = (3, 11)
BUILD_PACKAGES = {name: host.PACKAGES[name] for name in ("buildah", "debootstrap")}
BUILDAH_RUNROOT = Path("/run/mnist-tuning-buildah")
# overlay works here as root; vfs copies every layer whole (the operator: 60 s and 790 MB of
# storage, against 52 s on overlay sharing the base).
STORAGE_DRIVER = "overlay"
WHEELS_MOUNT = "/wheels"
MNIST_MOUNT = "/mnist-raw"
OFFLINE_ARGS = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": WHEELS_MOUNT}
# The files Dockerfile.trainer copies from MNIST_RAW_DIR: `make data`'s uncompressed idx files.
MNIST_RAW_GLOB = "*-ubyte"


@dataclass(frozen=True)
class ImageBuild:
    """One of our images: its Dockerfile, its repository name and its offline build arguments."""

    dockerfile: str
    repository: str
    build_args: Mapping[str, str]
    reads_mnist: bool = False

    def stem(self) -> str:
        """The archive's file name without the key: the repository's last part."""
        return self.repository.rpartition("/")[2]


TRAINER = ImageBuild(
    "Dockerfile.trainer",
    "localhost/mnist-tuning/mnist-trainer",
    {**OFFLINE_ARGS, "MNIST_RAW_DIR": MNIST_MOUNT},
    reads_mnist=True,
)
OPERATOR = ImageBuild(
    "Dockerfile.operator", "localhost/mnist-tuning/mnist-tuning-operator", OFFLINE_ARGS
)
BUILDS = (TRAINER, OPERATOR)


# --- what goes in: the build context and the keys ----------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker reads it: `*` and `?` within a name, `**` across names."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _could_match_below(names: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether a pattern (split into names) could match a path strictly inside `parts`."""
    for name, part in zip(names, parts, strict=False):
        if "**" in name:
            return True
        if not _pattern_regex(name).fullmatch(part):
            return False
    return len(names) > len(parts)


@dataclass(frozen=True)
class IgnoreRules:
    """The rules of a .dockerignore: the last pattern matching a path or a parent of it wins."""

    rules: tuple[tuple[bool, str, re.Pattern[str]], ...]  # (a `!` re-inclusion, pattern, regex)

    @classmethod
    def parse(cls, text: str) -> IgnoreRules:
        """Read a .dockerignore: one pattern a line, `#` comments, `!` re-includes."""
        rules = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            pattern = os.path.normpath(line.removeprefix("!").strip()).lstrip("/")
            rules.append((line.startswith("!"), pattern, _pattern_regex(pattern)))
        return cls(tuple(rules))

    def ignored(self, relative: str) -> bool:
        """True when the path (posix, relative to the context) stays out of the context."""
        parts = relative.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for negated, _, regex in self.rules:
            if any(regex.fullmatch(candidate) for candidate in candidates):
                excluded = not negated
        return excluded

    def may_include_below(self, directory: str) -> bool:
        """True when a `!` pattern could re-include something inside an ignored directory."""
        parts = directory.split("/")
        return any(
            negated and _could_match_below(pattern.split("/"), parts)
            for negated, pattern, _ in self.rules
        )


def context_files(context: Path) -> list[str]:
    """The files a build of `context` sends (its .dockerignore applied), sorted, posix paths."""
    ignore_file = context / ".dockerignore"
    rules = IgnoreRules.parse(ignore_file.read_text() if ignore_file.exists() else "")
    found: list[str] = []
    for directory, subdirs, files in os.walk(context):
        base = Path(directory).relative_to(context).as_posix()
        prefix = "" if base == "." else base + "/"
        subdirs[:] = sorted(
            name
            for name in subdirs
            if not rules.ignored(prefix + name) or rules.may_include_below(prefix + name)
        )
        found += [prefix + name for name in files if not rules.ignored(prefix + name)]
    return sorted(found)


def _file_digest(path: Path) -> str:
    with path.open("rb") as data:
        return hashlib.file_digest(data, "sha256").hexdigest()


def _short_hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def base_key(base: StandInBase) -> str:
    """Hash of what makes a stand-in base: its name, userland, the venv command, the config."""
    return _short_hash([base.name, base.userland.key(), BASE_VENV, BASE_CONFIG.as_oci()])


def bases_key() -> str:
    """Hash of both stand-in bases, which every image build may start from."""
    return _short_hash([base_key(base) for base in BASES])


def copied_sources(dockerfile: str) -> list[str]:
    """The context paths a Dockerfile's COPY/ADD instructions read (not `--from` stage copies)."""
    sources: list[str] = []
    for line in dockerfile.replace("\\\n", " ").splitlines():
        words = line.split()
        if not words or words[0].upper() not in ("COPY", "ADD"):
            continue
        if any(word.startswith("--from") for word in words[1:]):
            continue
        paths = [word for word in words[1:] if not word.startswith("--")]
        sources += [path.removeprefix("./").rstrip("/") for path in paths[:-1]]
    return sources


def _read_by(name: str, sources: Sequence[str]) -> bool:
    return any(source in (".", name) or name.startswith(source + "/") for source in sources)


def image_key(build: ImageBuild, repo_root: Path) -> str:
    """Hash of every input of a build: Dockerfile, the context files it copies, base, arguments.

    Only what the Dockerfile copies counts, so an operator change does not rebuild the trainer.
    """
    dockerfile = (repo_root / build.dockerfile).read_text()
    sources = copied_sources(dockerfile)
    context = [
        (name, _file_digest(repo_root / name), os.access(repo_root / name, os.X_OK))
        for name in context_files(repo_root)
        if _read_by(name, sources)
    ]
    return _short_hash([dockerfile, context, bases_key(), sorted(build.build_args.items())])


def image_name(build: ImageBuild, repo_root: Path) -> str:
    """The image's name; its tag is the build's key."""
    return f"{build.repository}:{image_key(build, repo_root)}"


def pinned_requirements(pyproject: Mapping[str, Any]) -> list[str]:
    """What the images' pip installs: the core, operator and trainer pins, the build backend."""
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    return [
        *project["dependencies"],
        *extras["operator"],
        *extras["trainer"],
        *pyproject["build-system"]["requires"],
    ]


# --- how: buildah's command lines ----------------------------------------------------------------


@dataclass(frozen=True)
class Buildah:
    """buildah on storage of our own: graphroot in the cache, runroot in /run, overlay driver."""

    graphroot: Path
    runroot: Path = BUILDAH_RUNROOT

    def argv(self, *args: str) -> list[str]:
        """A buildah command line on this storage."""
        storage = ["--root", str(self.graphroot), "--runroot", str(self.runroot)]
        return ["buildah", *storage, "--storage-driver", STORAGE_DRIVER, *args]


def volumes(build: ImageBuild, wheels: Path, mnist_raw: Path) -> dict[Path, str]:
    """Host directory → where a build of `build` reads it (read-only)."""
    mounts = {wheels: WHEELS_MOUNT}
    if build.reads_mnist:
        mounts[mnist_raw] = MNIST_MOUNT
    return mounts


def bud_args(
    build: ImageBuild, repo_root: Path, name: str, mounts: Mapping[Path, str]
) -> list[str]:
    """`buildah bud` arguments: the base only from storage, chroot isolation, offline inputs."""
    argv = ["bud", "--pull=never", "--isolation", "chroot", "-t", name]
    argv += ["-f", str(repo_root / build.dockerfile)]
    for key, value in sorted(build.build_args.items()):
        argv += ["--build-arg", f"{key}={value}"]
    for source, target in mounts.items():
        argv += ["--volume", f"{source}:{target}:ro"]
    return [*argv, str(repo_root)]


def push_args(name: str, archive: Path) -> list[str]:
    """`buildah push` to an OCI archive that names the image for `ctr import`.

    buildah 1.28 gzips layers for oci-archive even with --disable-compression; level 1 halves
    the time of the default level for the trainer (100 s, not 195 s) at 5% more bytes.
    """
    return ["push", "--quiet", "--compression-level", "1", name, f"oci-archive:{archive}:{name}"]


# --- doing it --------------------------------------------------------------------------------


def _run_logged(argv: Sequence[str], log: Path) -> None:
    """Run a long command with its output in `log`; a HostError with its last lines if it fails."""
    with log.open("w") as out:
        result = subprocess.run(list(argv), stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-25:])
        raise host.HostError(f"`{' '.join(argv[:8])} …` failed (log {log}):\n{tail}")


def base_archive(base: StandInBase, cache: Path, mirror: str) -> Path:
    """A stand-in base as an OCI archive: Debian's userland, then the /usr/local venv layer."""
    archive = cache / f"{base.stem()}-{base_key(base)}.tar"
    if archive.exists():
        return archive
    userland = base.userland.layer(cache, mirror)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        rootfs, top = Path(scratch) / "rootfs", Path(scratch) / "top"
        with tarfile.open(userland) as tar:
            tar.extractall(rootfs, filter="fully_trusted")
        host.run(["chroot", str(rootfs), *BASE_VENV])
        # The official image has no activate scripts on its PATH.
        for script in (rootfs / "usr/local/bin").glob("[Aa]ctivate*"):
            script.unlink()
        (top / "usr").mkdir(parents=True)
        (rootfs / "usr/local").rename(top / "usr/local")
        venv_layer = Path(scratch) / "venv.tar"
        images.write_layer(top, venv_layer)
        partial = archive.with_suffix(".partial")
        images.write_oci_archive([userland, venv_layer], base.name, BASE_CONFIG, partial)
        partial.replace(archive)
    return archive


def require_image_python(what: str) -> None:
    """Refuse to fetch wheels for an image unless this interpreter is the images' Python: pip
    picks the wheels that fit the Python it runs under."""
    if sys.version_info[:2] != BASE_PYTHON:
        raise host.HostError(
            f"{what} needs Python {BASE_PYTHON[0]}.{BASE_PYTHON[1]} (the images' "
            f"Python), not {sys.version.split()[0]}: run this from the project's .venv"
        )


def fill_wheelhouse(repo_root: Path, wheels: Path) -> None:
    """Wheels of every pinned requirement and its dependencies (sdists built), from the index.

    Runs this interpreter's pip, so the wheels fit the images' Python only if this is 3.11. A
    stamp holding the requirement list makes a second call with the same pins a no-op.
    """
    require_image_python("the wheelhouse")
    requirements = pinned_requirements(tomllib.loads((repo_root / "pyproject.toml").read_text()))
    stamp = wheels / ".requirements"
    if stamp.exists() and stamp.read_text().splitlines() == requirements:
        return
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--progress-bar", "off", "--wheel-dir"]
    _run_logged([*pip, str(wheels), *requirements], wheels.parent / "wheels.log")
    stamp.write_text("\n".join(requirements) + "\n")


def _wanted(repo_root: Path, cache: Path) -> Iterator[tuple[ImageBuild, str, Path]]:
    for build in BUILDS:
        name = image_name(build, repo_root)
        yield build, name, cache / f"{build.stem()}-{name.rpartition(':')[2]}.tar"


def build_archives(repo_root: Path, data_dir: Path) -> dict[str, Path]:
    """Image name → OCI archive of both images, building only those not in the cache.

    `data_dir` is `make data`'s root: the trainer reads data_dir/MNIST/raw. Needs root.
    """
    cache = cache_dir() / "images"
    wanted = list(_wanted(repo_root, cache))
    if not all(archive.exists() for _, _, archive in wanted):
        cache.mkdir(parents=True, exist_ok=True)
        with (cache / ".build.lock").open("w") as lock:
            # One build at a time on this machine: buildah's storage and the archives are shared.
            fcntl.flock(lock, fcntl.LOCK_EX)
            _build_missing(repo_root, data_dir, cache, wanted)
    return {name: archive for _, name, archive in wanted}


def _build_missing(
    repo_root: Path, data_dir: Path, cache: Path, wanted: Sequence[tuple[ImageBuild, str, Path]]
) -> None:
    """The base, the wheelhouse, then each image still missing (another build may have run)."""
    missing = [(build, name, archive) for build, name, archive in wanted if not archive.exists()]
    if not missing:
        return
    host.require_root("building images with buildah")
    host.ensure_packages(BUILD_PACKAGES)
    mnist_raw = data_dir / "MNIST" / "raw"
    if any(build.reads_mnist for build, _, _ in missing) and not any(
        mnist_raw.glob(MNIST_RAW_GLOB)
    ):
        raise host.HostError(f"no MNIST raw files in {mnist_raw}: run `make data` first")
    wheels = cache_dir() / "wheels"
    fill_wheelhouse(repo_root, wheels)
    buildah = Buildah(cache_dir() / "buildah")
    mirror = images.debian_mirror()
    for base in BASES:
        archive = base_archive(base, cache, mirror)
        base_id = host.run(buildah.argv("pull", "--quiet", f"oci-archive:{archive}")).split()[-1]
        host.run(buildah.argv("tag", base_id, base.name))
    host.run(buildah.argv("rmi", "--prune"))  # earlier bases, untagged by the lines above
    for build, name, archive in missing:
        _build_one(buildah, build, repo_root, name, archive, volumes(build, wheels, mnist_raw))


def _build_one(
    buildah: Buildah,
    build: ImageBuild,
    repo_root: Path,
    name: str,
    archive: Path,
    mounts: Mapping[Path, str],
) -> None:
    """bud, push to the archive (tmp + rename), then drop the image and every container."""
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    log = archive.with_suffix(".log")
    try:
        _run_logged(buildah.argv(*bud_args(build, repo_root, name, mounts)), log)
        host.run(buildah.argv(*push_args(name, partial)))
        partial.replace(archive)
    finally:
        host.run(buildah.argv("rm", "--all"), check=False)
        host.run(buildah.argv("rmi", name), check=False)
        partial.unlink(missing_ok=True)
    # One archive (and log) per image: an older key's archive is gigabytes of nothing.
    for old in archive.parent.glob(f"{build.stem()}-*"):
        if old not in (archive, log):
            old.unlink()
