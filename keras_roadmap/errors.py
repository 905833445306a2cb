"""The package's exception hierarchy: one base class, so `except KerasRoadmapError` catches
every error keras-roadmap raises on purpose.

Policy: a wrong *type* (a string where a number is expected) raises `TypeError`, a wrong
*value* (out of range, bad shape, float class ids, NaN) raises `ValueError`; the classes below
derive from the matching builtin too, so code catching `ValueError` keeps working.
"""

from __future__ import annotations


class KerasRoadmapError(Exception):
    """Base class of every error keras-roadmap raises deliberately."""


class ConfigError(KerasRoadmapError, ValueError):
    """A recipe config file or flag is invalid; the message names the file, the key and the fix."""


class DatasetFormatError(KerasRoadmapError, ValueError):
    """A dataset list file is missing or malformed; the message names the file, the line and
    what was expected."""


class CheckpointError(KerasRoadmapError, ValueError):
    """A saved run state (backup, best embedder) cannot be used; the message names the file and
    what to do (usually: delete it, or the backup folder, to start over)."""


class NonFiniteError(KerasRoadmapError, FloatingPointError):
    """Training produced a NaN or Inf embedding or loss; the message names the step."""


class OutputDirError(KerasRoadmapError, OSError):
    """An output folder cannot be created or written (e.g. it lies under a regular file)."""


class MissingDatasetFileError(DatasetFormatError, FileNotFoundError):
    """A dataset list file is absent (also a FileNotFoundError, for code that catches that)."""
