"""This process's memory and CPUs, read from the operating system. No heavy imports.

On Linux the process peak RSS is ``VmHWM`` in ``/proc/self/status``; writing ``5`` to
``/proc/self/clear_refs`` resets it (proc(5)), so a tracker can measure the peak of one region.
On CUDA, torch's allocator figures are read only when torch is already imported.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def status_bytes(key: str) -> int | None:
    """A ``/proc/self/status`` figure (``VmRSS``, ``VmHWM``, ``VmSize``...) in bytes, or None off Linux."""
    return _status_kib(key)


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


def _pid_status_bytes(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _children() -> list[int]:
    try:
        import psutil

        return [c.pid for c in psutil.Process().children(recursive=True)]
    except Exception:  # noqa: BLE001 - no psutil, or the children ended: no figure
        return []


def children_rss_bytes() -> int:
    """Resident memory of this process's children (an engine's worker processes), summed."""
    return sum(_pid_status_bytes(pid, "VmRSS") for pid in _children())


def children_peak_rss_bytes() -> int:
    """The RSS high-water marks (VmHWM) of this process's children, summed: the peak of an engine that
    lives in worker processes (vLLM's EngineCore). 0 off Linux or without children."""
    return sum(_pid_status_bytes(pid, "VmHWM") for pid in _children())


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


# glibc's mallopt(M_MMAP_THRESHOLD): allocations of at least this many bytes get their own mapping
_M_MMAP_THRESHOLD = -3
# glibc's own ceiling for its dynamic threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit), used after a load
_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20


def _glibc() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # musl and others: no glibc malloc to tune
        return None


@contextmanager
def large_frees_returned(threshold: int = 1 << 20) -> Iterator[None]:
    """A region whose freed large allocations go back to the operating system at once.

    glibc serves allocations above its mmap threshold with their own mapping, unmapped on free; the
    threshold starts at 128 KiB and rises to the size of each mapped block freed (up to 32 MiB), so
    a load that frees many mid-sized tensors — transformers stacks each MoE layer's per-expert
    checkpoint tensors (11 MiB each in float32 for Qwen1.5-MoE) into one 3D parameter, then frees
    them — leaves them in malloc's heaps, where fragmentation keeps them resident: the load of a
    2-layer Qwen1.5-MoE-A2.7B (6.6 GiB of float32 weights) peaked at 12.3-15.0 GiB and kept
    7.7-10.5 GiB resident, varying from run to run (8 loads). Inside this region the threshold is fixed at
    ``threshold`` bytes (1 MiB), so every such tensor is its own mapping: the same load peaked at
    11.5 GiB every time and kept 6.9 GiB. On exit the threshold is fixed at glibc's own 32 MiB
    ceiling (what the dynamic rule ends at) and free heap memory is trimmed. No-op off glibc.
    """
    libc = _glibc()
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, threshold)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)
            libc.malloc_trim(0)
