"""Memory and time trackers, as context managers. No heavy imports.

On Linux the process peak RSS is ``VmHWM`` in ``/proc/self/status``; writing ``5`` to
``/proc/self/clear_refs`` resets it (proc(5)), so a tracker can measure the peak of one region.
On CUDA, torch's allocator peak and NVML's per-process usage are read when torch is already loaded.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Resident set size of this process now."""
    value = _status_kib("VmRSS")
    if value is not None:
        return value
    import psutil

    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """High-water mark of the RSS since start or since the last :func:`reset_peak_rss`."""
    value = _status_kib("VmHWM")
    if value is not None:
        return value
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux). Returns False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cuda_memory() -> dict[str, int] | None:
    """torch's allocated/reserved (now and peak) on the current CUDA device, if torch uses CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return {
        "cuda_allocated_bytes": int(torch.cuda.memory_allocated()),
        "cuda_reserved_bytes": int(torch.cuda.memory_reserved()),
        "cuda_peak_allocated_bytes": int(torch.cuda.max_memory_allocated()),
        "cuda_peak_reserved_bytes": int(torch.cuda.max_memory_reserved()),
    }


def process_memory() -> dict[str, Any]:
    """A snapshot of this process's memory: RSS now and peak, and CUDA figures when in use."""
    info: dict[str, Any] = {"rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes()}
    info.update(cuda_memory() or {})
    return info


@dataclass
class MemoryTracker:
    """Measure the peak memory of a region, relative to where it started.

    >>> with MemoryTracker() as mem:
    ...     work()
    >>> mem.peak_bytes, mem.delta_peak_bytes

    The kernel high-water mark is reset on entry; where it cannot be (non-Linux), a sampling thread
    polls the RSS every ``interval_s``.
    """

    interval_s: float = 0.005
    start_bytes: int = 0
    peak_bytes: int = 0
    end_bytes: int = 0
    cuda: dict[str, int] = field(default_factory=dict)
    _sampler: threading.Thread | None = None
    _stop: threading.Event | None = None
    _sampled: int = 0

    def __enter__(self) -> "MemoryTracker":
        self.start_bytes = rss_bytes()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if not reset_peak_rss():
            self._stop = threading.Event()
            self._sampled = self.start_bytes
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        assert self._stop is not None
        while not self._stop.wait(self.interval_s):
            self._sampled = max(self._sampled, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()
        self.end_bytes = rss_bytes()
        if self._sampler is not None and self._stop is not None:
            self._stop.set()
            self._sampler.join()
            self.peak_bytes = max(self._sampled, self.end_bytes)
        else:
            self.peak_bytes = max(peak_rss_bytes(), self.end_bytes)
        self.cuda = cuda_memory() or {}

    @property
    def delta_peak_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"start_bytes": self.start_bytes, "peak_bytes": self.peak_bytes, "end_bytes": self.end_bytes,
                "delta_peak_bytes": self.delta_peak_bytes, **self.cuda}


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``; synchronises CUDA before reading the clock."""

    def __enter__(self) -> "Timer":
        _sync()
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        _sync()
        self.seconds = time.perf_counter() - self.start


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def release_memory() -> None:
    """Give freed memory back: collect garbage, return the C heap's free pages to the system
    (glibc ``malloc_trim``), and empty torch's CUDA cache and mlx's buffer cache when in use."""
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    mx = sys.modules.get("mlx.core")
    if mx is not None and hasattr(mx, "clear_cache"):
        mx.clear_cache()
