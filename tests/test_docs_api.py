"""The API reference (docs/api.md) documents every public name, from the module that defines it."""

import importlib
import re

from conftest import REPO

import keras_roadmap


def test_every_public_name_has_a_directive_at_its_definition():
    directives = re.findall(r"^::: ([\w.]+)\.(\w+)$", (REPO / "docs" / "api.md").read_text(), flags=re.M)
    documented = {name: module for module, name in directives}
    assert set(documented) == set(keras_roadmap._EXPORTS), set(keras_roadmap._EXPORTS) ^ set(documented)
    for name, module in documented.items():
        defined = vars(importlib.import_module(module))
        assert name in defined and defined[name] is getattr(keras_roadmap, name), f"{module} does not define {name}"


def test_mkdocs_nav_lists_every_page():
    nav = (REPO / "mkdocs.yml").read_text()
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    assert [page for page in pages if f": {page}" not in nav] == []
