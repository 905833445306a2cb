"""Every code block of README.md and docs/*.md is run by a named test or listed as not run."""

import ast

from conftest import REPO
from docs_blocks import MARKER, code_blocks, pages

KNOWN_LIMITS = REPO / "docs" / "known-limits.md"
NOT_RUN_SECTION = "## Code in these pages not run by the tests"


def _first_line(code):
    """The block's first statement (imports skipped), without its trailing comment."""
    lines = [line.strip() for line in code.splitlines() if line.strip()]
    first = next((line for line in lines if not line.startswith(("import ", "from "))), lines[0])
    return first.split("  #")[0].rstrip()


def _defined_names(path):
    return {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}


def test_every_code_block_is_run_by_a_test_or_listed_as_not_run():
    not_run_listing = KNOWN_LIMITS.read_text().split(NOT_RUN_SECTION, 1)[-1]
    problems = []
    for block in code_blocks():
        where = f"{block.page}:{block.line}"
        if block.marker is None:
            problems.append(
                f"{where}: no <!-- test: tests/FILE.py::TEST --> or <!-- not-run: REASON --> above the block"
            )
            continue
        kind, value = block.marker
        if kind == "test":
            path, _, name = value.partition("::")
            test_file = REPO / path
            if not test_file.is_file() or name not in _defined_names(test_file):
                problems.append(f"{where}: {value} does not exist")
            elif block.page.rsplit("/", 1)[-1] not in test_file.read_text():
                problems.append(f"{where}: {path} never reads {block.page}")
        elif _first_line(block.code) not in not_run_listing:
            problems.append(f"{where}: not run, but `{_first_line(block.code)}` is not listed in docs/known-limits.md")
    assert not problems, "\n".join(problems)


def test_every_marker_sits_on_a_code_block():
    """A marker that is not directly above a fence (a typo, a moved block) marks nothing."""
    marked = {(block.page, block.line) for block in code_blocks() if block.marker}
    strays = []
    for page in pages():
        lines = page.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if MARKER.match(line):
                fence = next((n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None)
                if (str(page.relative_to(REPO)), fence) not in marked:
                    strays.append(f"{page.relative_to(REPO)}:{number}")
    assert not strays, f"markers not directly above a python/bash block: {strays}"


def test_the_first_readme_block_is_the_usage_example():
    first = next(block for block in code_blocks() if block.page == "README.md")
    assert first.language == "python" and "load_digits" in first.code
