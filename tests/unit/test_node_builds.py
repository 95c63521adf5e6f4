"""The image builds' pure parts: the build context, the cache keys, buildah's command lines."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tarfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from launcher import REPO_ROOT
from node import builds, images
from node.builds import OPERATOR, TRAINER, Buildah, IgnoreRules


def fake_repo(root: Path) -> Path:
    """A tree with our .dockerignore and Dockerfiles, sources, and what must stay out."""
    for name in (".dockerignore", "Dockerfile.trainer", "Dockerfile.operator"):
        shutil.copy(REPO_ROOT / name, root / name)
    files = {
        "pyproject.toml": "[project]\n",
        "README.md": "# readme\n",
        "operator/mnist_tuning/cli.py": "print('op')\n",
        "operator/mnist_tuning/__pycache__/cli.cpython-311.pyc": "bytecode",
        "trainer/mnist_trainer/train.py": "print('train')\n",
        "trainer/__pycache__/x.pyc": "bytecode",
        "tests/unit/test_x.py": "def test(): ...\n",
        ".venv/lib/site.py": "venv\n",
        "data/MNIST/raw/train-images-idx3-ubyte": "digits",
        "notes.txt": "scratch\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def member_json(archive: tarfile.TarFile, name: str) -> Any:
    member = archive.extractfile(name)
    assert member is not None, name
    return json.load(member)


def blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.removeprefix("sha256:")


def keys(root: Path) -> tuple[str, str]:
    return builds.image_key(TRAINER, root), builds.image_key(OPERATOR, root)


def test_the_context_is_what_our_dockerignore_lets_through(tmp_path: Path) -> None:
    assert builds.context_files(fake_repo(tmp_path)) == [
        "README.md",
        "operator/mnist_tuning/cli.py",
        "pyproject.toml",
        "trainer/mnist_trainer/train.py",
    ]


def test_the_real_context_holds_both_packages_and_no_bytecode() -> None:
    files = builds.context_files(REPO_ROOT)
    assert {"pyproject.toml", "README.md", "trainer/mnist_trainer/prepare.py"} <= set(files)
    assert any(name.startswith("operator/mnist_tuning/") for name in files)
    assert not [name for name in files if "__pycache__" in name or name.startswith("tests/")]


@pytest.mark.parametrize(
    ("text", "path", "ignored"),
    [
        ("*\n!operator/", "operator/a/b.py", False),
        ("*\n!operator/", "operators.py", True),
        ("**/__pycache__", "__pycache__/x.pyc", True),
        ("**/__pycache__", "a/b/__pycache__/x.pyc", True),
        ("**/__pycache__", "a/__pycache__x", False),
        ("# a comment\n/build", "build/out", True),
        ("*.tar", "a/b.tar", False),
        ("**/*.tar", "a/b.tar", True),
        ("doc?", "docs/x", True),
        ("doc?", "doc/x", False),
        ("*\n!docs\ndocs/private", "docs/private/key", True),
        ("", "anything", False),
    ],
)
def test_ignore_rules_read_patterns_as_docker_does(text: str, path: str, ignored: bool) -> None:
    assert IgnoreRules.parse(text).ignored(path) is ignored


@pytest.mark.parametrize(
    ("text", "directory", "descend"),
    [
        ("*\n!operator/", ".venv", False),
        ("*\n!docs/keep.md", "docs", True),
        ("*\n!docs/keep.md", "docs/sub", False),
        ("*\n!d?cs/keep.md", "docs", True),
        ("*\n!**/keep.md", "anything/deep", True),
        ("*", "operator", False),
    ],
)
def test_an_ignored_directory_is_walked_only_if_a_re_inclusion_could_reach_inside(
    text: str, directory: str, descend: bool
) -> None:
    assert IgnoreRules.parse(text).may_include_below(directory) is descend


def test_a_key_changes_with_a_context_file_and_not_with_an_ignored_one(tmp_path: Path) -> None:
    root = fake_repo(tmp_path)
    before = keys(root)
    assert keys(root) == before, "the same inputs give the same keys"

    for ignored in (
        "tests/unit/test_x.py",
        ".venv/lib/site.py",
        "notes.txt",
        "operator/mnist_tuning/__pycache__/cli.cpython-311.pyc",
        "data/MNIST/raw/train-images-idx3-ubyte",
    ):
        (root / ignored).write_text("changed")
    assert keys(root) == before

    (root / "operator/mnist_tuning/cli.py").write_text("print('changed')\n")
    changed = keys(root)
    assert changed[0] == before[0], "the trainer does not copy operator/"
    assert changed[1] != before[1]

    (root / "trainer/mnist_trainer/new.py").write_text("")
    added = keys(root)
    assert all(new != old for new, old in zip(added, changed, strict=True)), "a new file"


def test_the_copied_sources_are_read_from_copy_and_add_but_not_from_stages() -> None:
    dockerfile = (
        "FROM base AS build\n"
        "COPY pyproject.toml README.md ./\n"
        "COPY --chown=1:1 operator ./operator\n"
        "ADD ./trainer/ \\\n    /src/trainer\n"
        "FROM base\n"
        "COPY --from=build /opt/venv /opt/venv\n"
    )
    assert builds.copied_sources(dockerfile) == [
        "pyproject.toml",
        "README.md",
        "operator",
        "trainer",
    ]
    assert builds.copied_sources((REPO_ROOT / "Dockerfile.trainer").read_text()) == [
        "trainer/kernels",
        "trainer/mnist_trainer",
    ]


def test_a_key_follows_its_own_dockerfile_the_executable_bit_and_the_build_args(
    tmp_path: Path,
) -> None:
    root = fake_repo(tmp_path)
    trainer, operator = keys(root)

    with (root / "Dockerfile.trainer").open("a") as dockerfile:
        dockerfile.write("# another line\n")
    new_trainer, new_operator = keys(root)
    assert new_trainer != trainer
    assert new_operator == operator

    (root / "README.md").chmod(0o755)
    assert keys(root)[1] != operator

    other_args = dataclasses.replace(OPERATOR, build_args={"PIP_NO_INDEX": "1"})
    assert builds.image_key(other_args, root) != builds.image_key(OPERATOR, root)


def test_image_names_carry_the_key_as_their_tag() -> None:
    trainer = builds.image_name(TRAINER, REPO_ROOT)
    operator = builds.image_name(OPERATOR, REPO_ROOT)
    assert re.fullmatch(r"localhost/mnist-tuning/mnist-trainer:[0-9a-f]{12}", trainer)
    assert re.fullmatch(r"localhost/mnist-tuning/mnist-tuning-operator:[0-9a-f]{12}", operator)
    assert builds.image_name(TRAINER, REPO_ROOT) == trainer


def test_the_trainer_build_is_offline_with_wheels_and_digits_mounted_read_only() -> None:
    mounts = builds.volumes(TRAINER, Path("/cache/wheels"), Path("/repo/data/MNIST/raw"))
    argv = Buildah(Path("/cache/buildah")).argv(
        *builds.bud_args(TRAINER, Path("/repo"), "localhost/t:1", mounts)
    )
    line = " ".join(argv)

    assert argv[0] == "buildah"
    assert "--root /cache/buildah --runroot /run/mnist-tuning-buildah" in line
    assert "--storage-driver overlay bud --pull=never --isolation chroot" in line
    assert "-t localhost/t:1 -f /repo/Dockerfile.trainer" in line
    for arg in ("PIP_NO_INDEX=1", "PIP_FIND_LINKS=/wheels", "MNIST_RAW_DIR=/mnist-raw"):
        assert f"--build-arg {arg}" in line
    assert "--volume /cache/wheels:/wheels:ro" in line
    assert "--volume /repo/data/MNIST/raw:/mnist-raw:ro" in line
    assert argv[-1] == "/repo"


def test_the_operator_build_mounts_only_the_wheelhouse() -> None:
    mounts = builds.volumes(OPERATOR, Path("/w"), Path("/m"))
    argv = builds.bud_args(OPERATOR, Path("/repo"), "localhost/o:1", mounts)
    assert mounts == {Path("/w"): builds.WHEELS_MOUNT}
    assert "MNIST_RAW_DIR" not in " ".join(argv)
    assert "PIP_FIND_LINKS=/wheels" in argv


@pytest.mark.parametrize("build", [TRAINER, OPERATOR], ids=lambda b: b.dockerfile)
def test_every_build_arg_we_pass_is_declared_in_the_dockerfile(build: builds.ImageBuild) -> None:
    text = (REPO_ROOT / build.dockerfile).read_text()
    declared = set(re.findall(r"^ARG (\w+)", text, flags=re.MULTILINE))
    assert set(build.build_args) <= declared


def test_the_dockerfiles_keep_their_online_defaults() -> None:
    trainer = (REPO_ROOT / "Dockerfile.trainer").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in trainer
    assert re.search(r"^ARG PIP_NO_INDEX$", trainer, flags=re.MULTILINE), "unset by default"
    assert re.search(r"^ARG MNIST_RAW_DIR=$", trainer, flags=re.MULTILINE), "empty by default"


def test_the_push_writes_an_oci_archive_named_for_ctr() -> None:
    argv = builds.push_args("localhost/x/y:abc", Path("/c/y.partial"))
    assert argv[0] == "push"
    assert argv[-2:] == ["localhost/x/y:abc", "oci-archive:/c/y.partial:localhost/x/y:abc"]


def test_the_wheelhouse_gets_every_pin_the_images_install() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    requirements = builds.pinned_requirements(pyproject)
    extras = pyproject["project"]["optional-dependencies"]
    assert set(extras["operator"]) | set(extras["trainer"]) <= set(requirements)
    assert set(pyproject["project"]["dependencies"]) <= set(requirements)
    assert any(r.startswith("setuptools") for r in requirements), "the build backend"
    assert not set(extras["local"]) & set(requirements), "nothing the images do not install"


def test_a_multi_layer_archive_has_one_history_entry_per_layer(tmp_path: Path) -> None:
    layers = []
    for n in range(2):
        rootfs = tmp_path / f"rootfs{n}"
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / f"file{n}").write_text(str(n))
        layers.append(tmp_path / f"layer{n}.tar")
        images.write_layer(rootfs, layers[-1])
    out = tmp_path / "out.tar"

    images.write_oci_archive(layers, "localhost/two:1", builds.BASE_CONFIG, out)

    with tarfile.open(out) as archive:
        [entry] = member_json(archive, "index.json")["manifests"]
        manifest = member_json(archive, blob_name(entry["digest"]))
        config = member_json(archive, blob_name(manifest["config"]["digest"]))
    assert len(config["history"]) == len(config["rootfs"]["diff_ids"]) == 2
    assert config["config"]["Cmd"] == ["python3"]
    assert config["config"]["Env"][0].startswith("PATH=/usr/local/bin:")


def test_the_base_keys_follow_the_userland_they_are_made_of(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = builds.bases_key()
    fewer = dataclasses.replace(builds.BUILD_BASE.userland, packages=("python3.11",))
    build_base = dataclasses.replace(builds.BUILD_BASE, userland=fewer)
    assert builds.base_key(build_base) != builds.base_key(builds.BUILD_BASE)
    monkeypatch.setattr(builds, "BASES", (builds.PYTHON_BASE, build_base))
    assert builds.bases_key() != before


def test_each_stand_in_base_is_named_as_the_stage_that_uses_it() -> None:
    """Every FROM of our Dockerfiles names a stand-in; only the build one has a compiler."""
    named = {base.name.removeprefix("docker.io/library/") for base in builds.BASES}
    froms = {
        line.split()[1]
        for name in ("Dockerfile.trainer", "Dockerfile.operator")
        for line in (REPO_ROOT / name).read_text().splitlines()
        if line.startswith("FROM ")
    }
    assert froms == named
    assert "g++" in builds.BUILD_BASE.userland.packages
    assert "g++" not in builds.PYTHON_BASE.userland.packages
    assert builds.BUILD_BASE.stem() == "python-3.11.14-bookworm"
