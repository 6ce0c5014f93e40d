"""Memory and time trackers, as context managers. No heavy imports.

The kernel's RSS high-water mark is reset on entry where Linux allows it (see
:mod:`toolkit.facts.process`); elsewhere a sampling thread polls the RSS.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from toolkit.facts.process import cuda_memory, peak_rss_bytes, reset_peak_rss, rss_bytes


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
