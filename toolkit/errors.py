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


class OutOfMemory(ToolkitError):
    """Memory ran out while loading or generating. The message gives the measured numbers and what
    the planner suggests for the memory free now; the memory the failed step held is released."""

    exit_code = 3

    def __init__(self, message: str, *, phase: str = "", requested_bytes: int | None = None,
                 measured: dict | None = None, suggestion: str | None = None) -> None:
        super().__init__(message)
        self.phase = phase
        self.requested_bytes = requested_bytes
        self.measured = measured or {}
        self.suggestion = suggestion


# Messages of the allocators toolkit's backends use when they run out: torch's CPU allocator
# ("DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes"), torch CUDA
# ("CUDA out of memory. Tried to allocate 2.00 GiB"), C++ std::bad_alloc (mlx, llama.cpp through
# pybind/ctypes), mlx's Metal allocator, and llama.cpp's "failed to allocate ... buffer".
_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc",
                "failed to allocate", "[metal::malloc]", "resource_exhausted")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure from Python, torch (CPU or CUDA), mlx or llama.cpp."""
    if isinstance(exc, (MemoryError, OutOfMemory)) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, (RuntimeError, ValueError, OSError)) and any(m in text for m in _OOM_MARKERS)


def requested_bytes(message: str) -> int | None:
    """The allocation size an allocator's message names, in bytes, when it names one."""
    import re

    m = re.search(r"allocate (?:memory: you tried to allocate )?(\d+) bytes", message)
    if m:
        return int(m.group(1))
    m = re.search(r"(?:tried to )?allocate ([\d.]+) ?(KiB|MiB|GiB|TiB|KB|MB|GB|B)\b", message, re.IGNORECASE)
    if m:
        scale = {"b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6,
                 "gb": 10**9}[m.group(2).lower()]
        return int(float(m.group(1)) * scale)
    return None
