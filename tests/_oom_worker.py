"""Run by tests/test_memory_faults.py in a fresh interpreter (toolkit.launcher): exhaust memory
under ``ulimit -v`` (RLIMIT_AS) during a load or a generation and return what toolkit made of it.

    main(phase="generation" | "load" | "load-fallback"); probe_under_ulimit(limit_bytes)
"""

from __future__ import annotations

import resource

import toolkit
from toolkit.backends import LoadTarget, load_target
from toolkit.builtin.tiny import BASE
from toolkit.errors import LoadFailed, OutOfMemory
from toolkit.facts.process import rss_bytes

HEADROOM = 24 * 2**20  # address space left above the current mapping when the limit is set
PROMPT = "def add(a, b):\n"


def vm_size() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))


def limit(on: bool) -> None:
    soft = vm_size() + HEADROOM if on else resource.RLIM_INFINITY
    resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))


def main(phase: str) -> dict:
    plan = toolkit.plan(BASE, "cpu:8GiB", backend="hf", quantization="none", dtype="float32")
    # A first load and unload imports every module the load needs: an allocation failure inside an
    # import leaves that module half-initialised, which is not what this test is about.
    with toolkit.load(plan, fallback=False) as model:
        expected = model.generate(PROMPT, max_tokens=8, ignore_eos=True).text
    out: dict = {"phase": phase, "expected": expected}
    error: Exception | None = None
    if phase == "generation":
        model = toolkit.load(plan, fallback=False)
        # Eight prompts of 2030 tokens decoded together: each prefill activation (8 x 2030 x 688
        # floats in the MLP, 8 x 4 x 2030^2 attention scores) is far beyond HEADROOM.
        long_prompt = list(range(10, 2040))
        out["rss_before"] = rss_bytes()
        out["rss_after_each"] = []
        for _ in range(5):  # a failure that leaked would grow the process each time
            limit(True)
            try:
                model.generate_batch([long_prompt] * 8, max_tokens=4, ignore_eos=True)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                error = exc
            limit(False)
            out["rss_after_each"].append(rss_bytes())
        out["rss_after"] = out["rss_after_each"][0]
        out["again"] = model.generate(PROMPT, max_tokens=8, ignore_eos=True).text
        model.unload()
    else:
        out["rss_before"] = rss_bytes()
        limit(True)
        try:
            if phase == "load":
                toolkit.load(plan, fallback=False)
            else:  # every fitting alternative is tried, and each runs out too
                toolkit.load(BASE, device="cpu:8GiB")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            error = exc
        limit(False)
        out["rss_after"] = rss_bytes()
        with load_target(LoadTarget(path=BASE, backend="hf", dtype="float32")) as model:
            out["again"] = model.generate(PROMPT, max_tokens=8, ignore_eos=True).text
    out["error_type"] = type(error).__name__ if error else None
    out["message"] = str(error) if error else None
    if isinstance(error, OutOfMemory):
        out.update(measured=error.measured, suggestion=error.suggestion, error_phase=error.phase)
    if isinstance(error, LoadFailed):
        out["attempts"] = error.attempts
        out["exit_code"] = error.exit_code
    return out


def probe_under_ulimit(limit_bytes: int) -> dict:
    """The CPU's free memory as probed under an address-space limit."""
    from toolkit.facts.probe import probe_cpu

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, resource.RLIM_INFINITY))
    d = probe_cpu()
    return {"free": d.free_bytes, "source": d.source}
