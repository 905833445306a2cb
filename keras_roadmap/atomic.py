"""Crash-safe file writes: write a temporary file next to the target, flush it to disk, then
rename it into place (``os.replace`` is atomic on POSIX and Windows), so a reader sees either
the old file or the complete new one, never a torn one, whenever the writer is killed.

``KERAS_ROADMAP_TEST_STALL_IN`` is a test-only hook: ``"<point>[:<n>]"`` makes the n-th (default
first) write through ``stall_point(<point>)`` stop there (after creating
``$KERAS_ROADMAP_TEST_STALL_MARK`` when set, and with a half-written temporary file when the
point is inside a write) and sleep, so that a test can kill the process at that exact moment.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import time

STALL_ENV = "KERAS_ROADMAP_TEST_STALL_IN"
STALL_MARK_ENV = "KERAS_ROADMAP_TEST_STALL_MARK"
_stall_counts: dict = {}


def stall_point(point: str, partial=None) -> None:
    """Test-only: stall here when ``$KERAS_ROADMAP_TEST_STALL_IN`` names ``point`` (see module).

    ``partial``: a file being written; it is cut to half its size first, as a kill in the
    middle of writing it would leave it."""
    wanted = os.environ.get(STALL_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _stall_counts[point] = _stall_counts.get(point, 0) + 1
    if _stall_counts[point] != int(nth or 1):
        return
    if partial is not None and os.path.exists(partial):
        with open(partial, "r+b") as handle:
            handle.truncate(os.path.getsize(partial) // 2)
    mark = os.environ.get(STALL_MARK_ENV)
    if mark:
        pathlib.Path(mark).write_text(point)
    time.sleep(600)  # the test kills the process meanwhile


def partial_name(path) -> pathlib.Path:
    """The temporary name used while writing ``path``: hidden, same folder (same file system,
    so the rename is atomic), same suffixes (writers that pick the format from the name, e.g.
    ``.weights.h5``, ``.keras``, ``.png``, keep working)."""
    path = pathlib.Path(path)
    return path.with_name(f".partial-{os.getpid()}-{path.name}")


def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, stall: str | None = None):
    """Yield a temporary path to write ``path``'s new content to; on a normal exit it is
    flushed and renamed to ``path``; on an exception it is removed and ``path`` is untouched.

    ``stall``: name of the test-only stall point inside this write (see module docstring)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        yield tmp
        if stall:
            stall_point(stall, partial=tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path, text: str, stall: str | None = None) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path, stall=stall) as tmp:
        tmp.write_text(text, encoding="utf-8")


# `partial_name`'s pattern: only our own temporary files are ever removed.
_PARTIAL = re.compile(r"\.partial-\d+-.+")


def remove_partials(folder) -> None:
    """Delete temporary files left in ``folder`` (not its subfolders) by writers killed
    mid-write: the ``.partial-<pid>-<name>`` files of ``partial_name``, nothing else."""
    folder = pathlib.Path(folder)
    if folder.is_dir():
        for stale in folder.glob(".partial-*"):
            if _PARTIAL.fullmatch(stale.name) and stale.is_file():
                stale.unlink()
