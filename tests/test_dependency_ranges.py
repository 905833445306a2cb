"""setup.py's ranges, constraints/lowest.txt (``make test-lowest``) and docs/tested-versions.md agree.

The lowest end of every range is a version ``make test-lowest`` installs and tests; a range
widened in setup.py without testing its new end, or a doc table left behind, fails here.
"""

import ast
import pathlib
import re
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "constraints"))
from check_installed import pins  # noqa: E402

# Extras whose lowest end is not installed by `make test-lowest` (the doc says why for each).
NOT_IN_LOWEST_RUN = {
    "jax",
    "tensorflow-similarity",
    "torch",
    "torchvision",
    "timm",
    "safetensors",
    # the serving, docs and wheel-check tools: only their highest end is tested
    "fastapi",
    "uvicorn",
    "python-multipart",
    "build",
    "twine",
    "pytest-xdist",
    "httpx2",
    "playwright",
    "ruff",
    "mkdocs",
    "mkdocs-material",
    "mkdocstrings",
    "mkdocstrings-python",
}


def declared():
    """``{name: [Requirement, ...]}`` of setup.py's CORE list and EXTRAS dict."""
    found = {}
    for node in ast.parse((REPO / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in ("CORE", "EXTRAS"):
            value = ast.literal_eval(node.value)
            for line in value if isinstance(value, list) else [d for deps in value.values() for d in deps]:
                req = Requirement(line)
                found.setdefault(canonicalize_name(req.name), []).append(req)
    return found


def lowest():
    return {canonicalize_name(name): Version(v) for name, v in pins(REPO / "constraints" / "lowest.txt").items()}


def lower_bound(req):
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
    assert len(bounds) == 1, f"setup.py: {req} needs one lower bound (>= or ==)"
    return bounds[0]


def doc_table():
    """``{name: (lowest, highest)}`` of the table rows of docs/tested-versions.md."""
    rows = {}
    for line in (REPO / "docs" / "tested-versions.md").read_text().splitlines():
        cells = [c.strip(" `") for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3 and re.fullmatch(r"[\d.]+", cells[2]):
            rows[canonicalize_name(cells[0])] = (cells[1], Version(cells[2]))
    return rows


def test_every_range_starts_at_its_tested_lowest_version():
    low = lowest()
    for name, reqs in declared().items():
        for req in reqs:
            if name in low:
                assert lower_bound(req) == low[name], f"setup.py {req} vs constraints/lowest.txt {name}=={low[name]}"
                assert req.specifier.contains(low[name]), f"setup.py {req} excludes its lowest {low[name]}"
            else:
                assert name in NOT_IN_LOWEST_RUN, f"{name} ({req}) is not in constraints/lowest.txt"


def test_lowest_constraints_name_only_declared_dependencies():
    declared_names = set(declared())
    for name in lowest():
        assert name in declared_names, f"constraints/lowest.txt pins {name}, which setup.py does not declare"


def test_doc_table_lists_both_ends_of_every_range():
    low, table, reqs = lowest(), doc_table(), declared()
    assert set(table) == set(reqs), f"docs/tested-versions.md rows vs setup.py: {set(table) ^ set(reqs)}"
    for name, (lowest_cell, highest) in table.items():
        expected = str(low[name]) if name in low else "not run"
        assert lowest_cell == expected, f"docs: {name} lowest {lowest_cell}, constraints/lowest.txt {expected}"
        for req in reqs[name]:
            assert req.specifier.contains(highest), f"docs: {name} highest {highest} is outside setup.py's {req}"
