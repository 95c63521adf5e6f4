"""The README and the guides in docs/: every link between them lands on a file and a heading.

Anchors follow GitHub's rule for heading ids: lower case, punctuation dropped, spaces as
hyphens, a repeated heading numbered from -1. Code and messages that send people to a guide
(e.g. a docstring naming docs/troubleshooting.md) must name one that exists.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6} +(.+?) *#* *$", flags=re.MULTILINE)
GUIDE = re.compile(r"docs/[\w-]+\.md")
# Where the product and its harness send people to a guide (tests/unit holds look-alike paths).
SOURCES = ("operator", "trainer", "crds", "deploy", "benchmarks", "tests/harness", ".ci", ".github")


def prose(path: Path) -> str:
    """The file without its fenced code blocks."""
    return FENCE.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    """The ids GitHub gives the headings of a Markdown file."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(prose(path)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def links(path: Path) -> list[str]:
    """Relative link targets in the prose of a Markdown file (web links left out)."""
    return [target for target in LINK.findall(prose(path)) if not re.match(r"^[a-z]+:", target)]


def test_github_anchor_rule(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Run on a cluster\n## What `kubectl get mnisttunings` shows\n"
        "## A: `make x`\n```\n# not a heading\n```\n## A: make x\n"
    )
    assert anchors(page) == {
        "run-on-a-cluster",
        "what-kubectl-get-mnisttunings-shows",
        "a-make-x",
        "a-make-x-1",
    }


def test_there_are_guides() -> None:
    names = {path.name for path in DOCS}
    assert {"README.md", "local-tuning.md", "cluster.md", "troubleshooting.md"} <= names
    assert {"development.md", "gitops.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_lands_on_a_file_and_heading(path: Path) -> None:
    broken = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert broken == []


def test_every_guide_is_linked_from_the_readme() -> None:
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    assert [path for path in DOCS if path.parent.name == "docs" and path not in linked] == []


def test_guides_named_by_the_product_and_its_harness_exist() -> None:
    files = [ROOT / "Makefile", ROOT / "pyproject.toml"] + [
        path
        for folder in SOURCES
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and path.suffix in {".py", ".yaml", ".yml", ".sh", ".go", ""}
    ]
    named = {
        (name, str(path.relative_to(ROOT)))
        for path in files
        for name in GUIDE.findall(path.read_text(errors="replace"))
    }
    assert named, "nothing names a guide: the pattern is wrong"
    assert sorted((name, where) for name, where in named if not (ROOT / name).exists()) == []
