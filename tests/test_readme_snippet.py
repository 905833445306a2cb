"""The README's first code block (the digits usage snippet) runs as written and learns."""

import contextlib
import io
import re

from conftest import REPO


def test_readme_digits_snippet_runs_and_learns():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "load_digits" in code and "ROADMAPLoss" in code
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    map_at_r = float(printed.getvalue().strip().splitlines()[-1])
    assert map_at_r > 0.7  # untrained: ~0.4
