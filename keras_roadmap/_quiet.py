"""Import TensorFlow without its C++ start-up lines.

TensorFlow writes "All log messages before absl::InitializeLog() ...", the oneDNN notice and
"Could not find cuda drivers" straight to file descriptor 2 from C++, before
``TF_CPP_MIN_LOG_LEVEL`` is consulted, so neither that variable nor Python's ``sys.stderr``
can hold them back. :func:`import_tensorflow` points descriptor 2 at a temporary file during the
import and replays every line except those known start-up notices.
"""

from __future__ import annotations

import os
import sys
import tempfile

# Substrings of the C++ start-up notices that carry no information for a user of this package.
_NOISE = (
    "All log messages before absl::InitializeLog()",
    "oneDNN custom operations are on",
    "Could not find cuda drivers",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions",
    "Attempting to register factory for plugin",
)


def _is_noise(line: str) -> bool:
    return any(fragment in line for fragment in _NOISE)


def import_tensorflow():
    """Import and return ``tensorflow`` with its start-up notices dropped (other stderr kept).

    Also sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless already set, for the C++ log lines TensorFlow
    writes later (e.g. "failed call to cuInit" on a machine without GPU); Python-side errors
    are unaffected.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable descriptor 2 (embedded interpreters)
        import tensorflow

        return tensorflow
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines() if line.strip() and not _is_noise(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
    return tensorflow
