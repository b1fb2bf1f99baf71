"""The documentation keeps up with the code: every registered merge method is in docs/merging.md's methods table,
every relative link points to a file that exists, and the README and the benchmarks name only files of the
repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import taxcut.methods.catalog  # noqa: F401 - importing it registers the built-in methods
from taxcut.methods.registry import METHODS

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINKED_PAGES = [ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "bench" / "README.md", *DOCS]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def methods_table(text: str) -> set[str]:
    """The method names (backticked, first column) of the table under the '### Methods' heading."""
    section = text.split("### Methods", 1)[1]
    section = re.split(r"^#{1,3} ", section, maxsplit=1, flags=re.M)[0]
    names: set[str] = set()
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`([a-z_0-9]+)`", cells[1]))
    return names


def relative_links(page: Path) -> list[str]:
    """The link targets of a Markdown page outside code blocks that are neither URLs nor anchors on the page."""
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_methods_table_parser_reads_the_first_column():
    text = "### Methods\n\n| method | paper |\n|---|---|\n| `linear` | `x` |\n| `a`, `b_c` | y |\n\n## Next\n| `z` |"
    assert methods_table(text) == {"linear", "a", "b_c"}


def test_every_registered_method_is_in_the_methods_table():
    documented = methods_table((ROOT / "docs" / "merging.md").read_text())
    missing = sorted(set(METHODS) - documented)
    assert len(METHODS) >= 13
    assert not missing, f"add these registered methods to docs/merging.md's methods table: {missing}"
    unknown = sorted(documented - set(METHODS))
    assert not unknown, f"docs/merging.md's methods table lists methods that are not registered: {unknown}"


def test_link_parser_skips_urls_anchors_and_code():
    page_text = (
        "[a](docs/x.md#part) ![img](images/p.png) [web](https://example.org) [here](#top)\n"
        "```\n[code](not/a/link.md)\n```\n"
    )
    assert [
        t
        for t in LINK.findall(FENCE.sub("", page_text))
        if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")
    ] == ["docs/x.md#part", "images/p.png"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file(page):
    assert page.exists(), f"{page.relative_to(ROOT)} is missing"
    broken = [target for target in relative_links(page) if not (page.parent / target.split("#", 1)[0]).exists()]
    assert not broken, f"{page.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_readme_is_short_and_links_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    for page in DOCS:
        assert f"docs/{page.name}" in text, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("script", sorted((ROOT / "bench").glob("*.py")), ids=lambda p: p.name)
def test_bench_docstrings_name_only_files_of_the_repository(script):
    docstring = ast.get_docstring(ast.parse(script.read_text())) or ""
    assert docstring, f"{script.name} has no docstring"
    assert not re.search(r"\bissues?\b\s*(\d|:)", docstring, re.I), f"{script.name} cites an issue"
    assert "../" not in docstring, f"{script.name} names a file outside the repository"
    for name in re.findall(r"[\w./-]+\.md\b", docstring):
        assert (ROOT / name).exists() or (ROOT / "bench" / name).exists(), f"{script.name} names {name}"


def test_every_benchmark_is_in_the_bench_readme():
    listed = (ROOT / "bench" / "README.md").read_text()
    missing = [script.name for script in sorted((ROOT / "bench").glob("*.py")) if f"`{script.name}`" not in listed]
    assert not missing, f"describe these benchmarks (purpose, target, figures) in bench/README.md: {missing}"
