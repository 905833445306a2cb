"""The code blocks of the user docs (README.md, docs/*.md) and the markers saying who runs them.

A ```python or ```bash block is preceded by ``<!-- test: tests/FILE.py::TEST -->`` (that test runs
it, reading it with :func:`code_for`) or ``<!-- not-run: REASON -->`` (listed in
docs/known-limits.md); ``tests/test_docs_blocks.py`` checks that every block has one.
"""

import dataclasses
import re
import textwrap

from conftest import REPO

CODE_LANGUAGES = {"python", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(test|not-run):\s*(.+?)\s*-->\s*$")


@dataclasses.dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    marker: tuple  # (kind, value) or None


def pages():
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def blocks(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    found, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        previous = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(previous)
        code = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
        found.append(Block(str(page.relative_to(REPO)), i + 1, language, code, marker.groups() if marker else None))
        i = end + 1
    return found


def code_blocks():
    return [block for page in pages() for block in blocks(page) if block.language in CODE_LANGUAGES]


def code_for(page, test_name):
    """The code of every block of ``page`` (e.g. "docs/memory.md") marked as run by ``test_name``."""
    found = [
        block.code
        for block in blocks(REPO / page)
        if block.marker and block.marker[0] == "test" and block.marker[1].endswith(f"::{test_name}")
    ]
    assert found, f"{page} has no block marked <!-- test: ...::{test_name} -->"
    return found
