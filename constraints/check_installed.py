"""Fails unless every ``name==version`` of a constraints file is the version installed here.

``python constraints/check_installed.py constraints/lowest.txt`` (``make test-lowest`` runs it
after the install): a constraint only caps what pip installs, so this proves the tests that follow
ran on the lowest versions, and prints them.
"""

import importlib.metadata
import sys


def pins(path):
    """``{name: version}`` of the ``name==version`` lines of ``path`` (comments and blanks skipped)."""
    found = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[name.strip()] = version.strip()
    return found


def main(path):
    wrong = []
    for name, version in pins(path).items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        print(f"{name}=={installed}")
        if installed != version:
            wrong.append(f"{name}: {path} says {version}, installed {installed}")
    if wrong:
        sys.exit("check_installed: error: " + "; ".join(wrong))


if __name__ == "__main__":
    main(sys.argv[1])
