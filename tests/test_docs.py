"""The README and docs/ pages point at things that exist: links, anchors and file paths.

A page that names `transforms/io/table.py` or links `crawling.md#memory` is checked against the
working tree, so a moved module or a renamed heading fails here instead of misleading a reader.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from tests.paths import REPO

ROOT = pathlib.Path(REPO)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Top-level folders and files whose paths the pages name.
TOP_DIRS = ("pipelines", "transforms", "deploy", "tests", "bench", "scripts", "docs")
TOP_FILES = ("Makefile", "Dockerfile", "setup.py", "pyproject.toml", "README.md")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# A path under a project folder; stops before a placeholder (`<job>`, `{night}`, `*`).
PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP_DIRS) + r")/[\w./-]*)(?![\w<{*./-])")
# Paths that commands create: a benchmark's work folders (gitignored), named in its figures.
CREATED_UNDER = ("bench/work/", "bench/work-")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
# Build output (gitignored) is not the project's code: `make cluster-test` leaves a whole worker
# venv under deploy/build/, whose packages name paths of their own.
BUILD_OUTPUT = ROOT / "deploy" / "build"
CODE_FILES = [
    p
    for d in ("pipelines", "transforms", "deploy")
    for p in (ROOT / d).rglob("*")
    if p.suffix in (".py", ".sh", ".mk", ".env") and BUILD_OUTPUT not in p.parents
] + [ROOT / "Makefile", ROOT / "Dockerfile"]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
    """Anchors of every heading of a markdown page (fenced and indented code skipped)."""
    found = set()
    in_fence = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and re.match(r"#{1,6} ", line):
            found.add(slug(line.lstrip("#")))
    return found


def prose(page: pathlib.Path) -> str:
    """The page without fenced code blocks (shell examples name paths of the user's machine)."""
    return re.sub(r"(?ms)^```.*?^```", "", page.read_text())


def test_pages_found():
    names = {page.name for page in PAGES}
    assert {
        "README.md",
        "architecture.md",
        "ingest.md",
        "crawling.md",
        "duplicates.md",
        "refresh.md",
        "dataflow.md",
        "performance.md",
        "progress-and-report.md",
        "testing.md",
    } <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(page):
    text = prose(page)
    named = set(PATH.findall(text))
    named |= {
        span.split(":")[0].split()[0]
        for span in CODE_SPAN.findall(text)
        if span.split(":")[0].split() and span.split(":")[0].split()[0] in TOP_FILES
    }
    missing = sorted(p for p in named if not p.startswith(CREATED_UNDER) and not (ROOT / p.rstrip(".")).exists())
    assert named, f"{page.name} names no project path: is the pattern broken?"
    assert not missing, f"{page.name} names paths that do not exist: {missing}"


def test_readme_starts_with_the_two_commands():
    lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines() if line.strip()]
    assert lines[0].startswith("# ")
    commands = [line.split("#")[0].strip() for line in lines[1:3]]
    assert commands == ["make demo", "make test"]


def test_readme_links_every_docs_page():
    linked = {pathlib.Path(t.partition("#")[0]).name for t in LINK.findall((ROOT / "README.md").read_text())}
    pages = {page.name for page in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_code_cites_docs_pages_that_exist():
    """Comments and help texts send readers to docs/<page>.md, never to a README section."""
    problems = []
    for path in CODE_FILES:
        text = path.read_text()
        for page in re.findall(r"docs/[\w-]+\.md", text):
            if not (ROOT / page).exists():
                problems.append(f"{path.relative_to(ROOT)}: {page} does not exist")
        if re.search(r"(?<![\w/-])README\.md, ", text):
            problems.append(f"{path.relative_to(ROOT)}: cites a section of README.md (now in docs/)")
    assert not problems, problems
