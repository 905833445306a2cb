"""What is wrong with a damaged `.keras` file, in words a person can act on.

Keras reports a truncated or corrupt `.keras` archive as "File not found" (it cannot find the
zip directory), which is misleading when the file is right there; callers ask `keras_file_damage`
after a failed load and name the damage instead.
"""

from __future__ import annotations

import pathlib
import zipfile


def keras_file_damage(path) -> str | None:
    """Why the `.keras` file at `path` is not a complete Keras archive, or None when it looks
    whole (or is not a `.keras` file: its load error is then the one to show)."""
    path = pathlib.Path(path)
    if path.suffix != ".keras" or not path.is_file():
        return None
    size = path.stat().st_size
    if size == 0:
        return "it is empty (0 bytes)"
    if not zipfile.is_zipfile(path):
        return f"it is not a complete .keras (zip) archive: {size} bytes, truncated or corrupt"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"its zip archive is corrupt ({err})"
    if broken is not None:
        return f"its zip archive is corrupt (member {broken} fails its checksum)"
    if "config.json" not in names:
        return "it is a zip archive without config.json, not a saved Keras model"
    return None
