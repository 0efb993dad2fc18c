"""facestream's exceptions: one root, `FacestreamError`, and a small hierarchy under it.

Callers catch `FacestreamError` for "facestream refused or failed, and said why"; `exit_code` (below,
used by pipeline/cli/runner.py) is the one place that maps the classes to exit codes. Module-specific
errors (e.g. `ImageError`, `GalleryBusyError`) subclass one of these; some keep ValueError/RuntimeError
as a second base because callers and tests catch those.
"""

from __future__ import annotations


class FacestreamError(Exception):
    """Root of every error facestream raises on purpose; the message is meant for the user."""


class InputError(FacestreamError):
    """Bad input: an unreadable or invalid file, image, video, message or request."""


class ConfigError(FacestreamError, ValueError):
    """A bad configuration value or file: the message names the key path, the value and what is allowed."""


class ModelError(FacestreamError):
    """A model file that is missing, unreadable or not what it should be."""


class BackendError(FacestreamError, RuntimeError):
    """An inference backend (ONNX Runtime, TensorRT) that cannot be used or failed."""


class PipelineError(FacestreamError, RuntimeError):
    """The process pipeline cannot start or broke (processes, sockets, sources, security)."""


class GalleryError(FacestreamError):
    """The gallery cannot be used, or refused an operation (unknown person, duplicate name, busy)."""


def exit_code(error: FacestreamError) -> int:
    """The exit code for an error facestream raised on purpose: 2 for what the user must fix before anything
    can run (configuration, model files, input, gallery, backend), 1 for a run that broke."""
    if isinstance(error, ConfigError | ModelError | InputError | GalleryError | BackendError):
        return 2
    return 1
