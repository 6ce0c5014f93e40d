"""Out-of-memory during load or generation, turned into a :class:`toolkit.errors.OutOfMemory`.

The allocator's exception is caught, reduced to its text, and dropped *before* the new error is
raised: its traceback holds the frames, and so the tensors, of the step that failed. Then the memory
is released (:func:`toolkit.facts.process.release_memory`) and measured again, and the planner is asked
what fits in the memory that is free now. The error carries those numbers (``measured``) and the
suggestion, so a notebook or a sweep can record it and go on.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from toolkit.errors import OutOfMemory, is_out_of_memory, requested_bytes
from toolkit.facts.process import peak_rss_bytes, release_memory, rss_bytes

MiB = 2**20


def _fmt(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / MiB:.1f} MiB"


def free_device(device: str) -> Any:
    """The planner's own probe of the device kind (the CPU when that kind is absent), or None."""
    try:
        from toolkit.facts.probe import probe

        devices = probe()
        return next((d for d in devices if d.kind == device), None) or next(d for d in devices if d.kind == "cpu")
    except Exception:  # noqa: BLE001 - a failed probe only drops one figure from the message
        return None


def suggestion(model: str, device: Any, backend: str, quantization: str, wanted_tokens: int | None,
               held_bytes: int = 0) -> str:
    """What the planner picks for the memory free now plus ``held_bytes`` (what this process holds
    and would give back to a fresh load), said in one sentence."""
    from dataclasses import replace

    try:
        from toolkit.planning.plan import plan

        budget = replace(device, free_bytes=device.free_bytes + held_bytes)
        fresh = plan(model, budget, backend=backend)
        same = plan(model, budget, backend=backend, quantization=quantization) if quantization else fresh
    except Exception as exc:  # noqa: BLE001 - NothingFits and friends carry the useful sentence
        return f"the planner, asked again for the memory free now, says: {exc}"
    parts = [f"for {_fmt(budget.free_bytes)} the planner allows max_context {same.max_context} for "
             f"{backend} {quantization or same.quantization} (predicted {_fmt(same.memory.total_bytes)})"]
    if wanted_tokens is not None and wanted_tokens > same.max_context:
        parts.append(f"this call wanted {wanted_tokens} tokens: shorten the prompt or max_tokens")
    if (fresh.quantization, fresh.backend) != (quantization, backend):
        parts.append(f"its first choice is {fresh.backend} {fresh.quantization} with max_context "
                     f"{fresh.max_context} (predicted {_fmt(fresh.memory.total_bytes)})")
    return "; ".join(parts)


def out_of_memory(kind: str, message: str, *, phase: str, model: str, device: str, backend: str,
                  quantization: str, rss_before: int | None, predicted_bytes: int | None = None,
                  wanted_tokens: int | None = None, detail: str = "") -> OutOfMemory:
    """Release memory, measure, ask the planner, and build the error. Call it outside the ``except``
    block that caught the allocator's exception, so that its traceback is already gone."""
    release_memory()
    found = free_device(device)
    after = rss_bytes()
    measured = {"rss_before_bytes": rss_before, "rss_after_release_bytes": after,
                "peak_rss_bytes": peak_rss_bytes(), "free_bytes": found.free_bytes if found else None,
                "requested_bytes": requested_bytes(message), "predicted_bytes": predicted_bytes}
    # The planner predicts a whole process (interpreter, libraries, model): on the CPU, what this
    # process holds now would be free again for a fresh one.
    held = after if found is not None and found.kind == "cpu" else 0
    advice = suggestion(model, found, backend, quantization, wanted_tokens, held) if model and found else ""
    first_line = message.strip().splitlines()[0] if message.strip() else kind
    numbers = [f"the allocator asked for {_fmt(measured['requested_bytes'])}" if measured["requested_bytes"] else "",
               f"process memory was {_fmt(rss_before)} before this step" if rss_before else "",
               f"{_fmt(measured['rss_after_release_bytes'])} after releasing it",
               f"{_fmt(measured['free_bytes'])} of {found.kind} memory is free now"
               + (f" ({found.source})" if found.source in ("cgroup", "RLIMIT_AS") else "") if found else "",
               f"the plan predicted {_fmt(predicted_bytes)} in all" if predicted_bytes else ""]
    text = (f"out of memory during {phase} of {model or 'the model'} ({backend} {quantization}){detail}: "
            f"{kind}: {first_line}. Measured: {', '.join(n for n in numbers if n)}. "
            + (f"Suggestion: {advice}." if advice else "Free memory or pick a smaller quantization."))
    return OutOfMemory(text, phase=phase, requested_bytes=measured["requested_bytes"], measured=measured,
                       suggestion=advice or None)


def guard(phase: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a ``Loaded`` method so that an allocation failure in it becomes :class:`OutOfMemory`."""

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        if getattr(method, "_oom_guarded", False):
            return method

        @functools.wraps(method)
        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            before = rss_bytes()
            failure: tuple[str, str] | None = None
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if isinstance(exc, OutOfMemory) or not is_out_of_memory(exc):
                    raise
                failure = (type(exc).__name__, str(exc))
            raise self._out_of_memory(failure, phase, before)

        guarded._oom_guarded = True  # type: ignore[attr-defined]
        return guarded

    return wrap
