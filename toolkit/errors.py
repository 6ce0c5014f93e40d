"""Errors toolkit raises on purpose. Each message says what is wrong and how to fix it.

The CLI prints ``str(error)`` and exits with ``error.exit_code`` instead of a traceback.
"""

from __future__ import annotations


class ToolkitError(Exception):
    """Base class: a problem with the user's input or environment, explained in the message."""

    exit_code = 2


class ModelNotFound(ToolkitError):
    """A path or hub id that does not resolve to a model."""


class InvalidModel(ToolkitError):
    """A model folder or file that is incomplete, corrupt or of an unsupported kind."""


class UnsafeCheckpoint(ToolkitError):
    """A pickle checkpoint or model code that would run, refused unless explicitly allowed."""


class InvalidSpec(ToolkitError):
    """A memory size, device spec, quantization name or option value that does not parse."""


class NothingFits(ToolkitError):
    """No backend/quantization/context combination fits the memory budget."""

    exit_code = 3

    def __init__(self, message: str, *, needed_bytes: int | None = None) -> None:
        super().__init__(message)
        self.needed_bytes = needed_bytes


class BackendUnavailable(ToolkitError):
    """A backend whose library is not installed; the message names the pip extra."""


class LoadFailed(ToolkitError):
    """A backend failed to load a model; ``attempts`` lists each tried option and its error."""

    def __init__(self, message: str, *, attempts: list[dict] | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts or []
