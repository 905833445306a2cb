"""The markdown tables of recipes/README.md that list each recipe setting with its official
source: how a value is written in a cell, and the part of the README between two markers
(tests/test_recipes_suprank.py and tests/test_recipes_recallatk.py keep them current)."""

import pathlib

README = pathlib.Path(__file__).resolve().parents[1] / "recipes" / "README.md"


def cell(value) -> str:
    """A setting's value as the tables write it (YAML spelling: true, false, null)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cell(v) for v in value) + "]"
    return "null" if value is None else str(value).replace("True", "true").replace("False", "false")


def readme_table(start: str, end: str) -> str:
    """The text of recipes/README.md between the markers `start` and `end` (both must be there)."""
    text = README.read_text()
    assert start in text and end in text, (start, end)
    return text.split(start)[1].split(end)[0].strip()
