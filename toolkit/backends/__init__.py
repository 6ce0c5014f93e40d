"""Backend registry and :func:`load`.

One file per backend, found by name. Nothing here imports a backend's library: the module of the
chosen backend is imported on use, and a missing library raises an error naming the pip extra.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from toolkit.backends.base import GenerationConfig, GenerationResult, Loaded, LoadTarget
from toolkit.errors import BackendUnavailable, InvalidSpec, LoadFailed, ToolkitError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str
    requires: tuple[str, ...]  # import names that must be importable
    extra: str | None  # pip extra that installs them
    description: str


BACKENDS: dict[str, BackendSpec] = {
    "hf": BackendSpec("hf", "toolkit.backends.hf", ("torch", "transformers"), "hf",
                      "transformers (+ bitsandbytes, GPTQ, AWQ, compressed-tensors)"),
    "llamacpp": BackendSpec("llamacpp", "toolkit.backends.llamacpp", ("llama_cpp",), "gguf", "llama.cpp on GGUF files"),
    "mlx": BackendSpec("mlx", "toolkit.backends.mlx", ("mlx", "mlx_lm"), "mlx", "mlx-lm (Apple silicon, or mlx[cpu] on Linux)"),
    "vllm": BackendSpec("vllm", "toolkit.backends.vllm", ("vllm",), "vllm", "vLLM engine"),
    "openai": BackendSpec("openai", "toolkit.backends.openai", (), None,
                          "any OpenAI-compatible server (vLLM serve, llama.cpp server, Ollama, SGLang)"),
}


def missing_requirements(name: str) -> list[str]:
    """Import names the backend needs that are not installed (checked without importing them)."""
    spec = backend_spec(name)
    return [mod for mod in spec.requires if importlib.util.find_spec(mod) is None]


def backend_spec(name: str) -> BackendSpec:
    try:
        return BACKENDS[name]
    except KeyError:
        raise InvalidSpec(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}") from None


def available() -> dict[str, bool]:
    """Which backends can be imported on this machine."""
    return {name: not missing_requirements(name) for name in BACKENDS}


def backend_module(name: str) -> ModuleType:
    """Import a backend's module, or raise BackendUnavailable naming the pip extra to install."""
    spec = backend_spec(name)
    missing = missing_requirements(name)
    if missing:
        raise BackendUnavailable(
            f"the {name} backend needs {', '.join(missing)}, which is not installed: "
            f"pip install 'toolkit[{spec.extra}]'")
    return importlib.import_module(spec.module)


def _target_from_plan(plan: Any, trust_remote_code: bool, options: dict[str, Any]) -> LoadTarget:
    device = plan.device.get("kind", "cpu") if isinstance(plan.device, dict) else str(plan.device)
    return LoadTarget(path=Path(plan.model), backend=plan.backend, quantization=plan.quantization,
                      dtype=plan.dtype or "auto", max_context=plan.max_context, device=device,
                      tensor_parallel=plan.tensor_parallel, trust_remote_code=trust_remote_code, options=options)


def load_target(target: LoadTarget) -> Loaded:
    """Load exactly this target with its backend: no planning, no fallback."""
    module = backend_module(target.backend)
    return module.load(target)


def load(model: Any, backend: str | None = None, *, quantization: str | None = None, dtype: str | None = None,
         context: int | None = None, device: Any = None, trust_remote_code: bool = False,
         fallback: bool = True, **options: Any) -> Loaded:
    """Plan (when given a model), load, and on failure walk the plan's alternatives.

    Args:
        model: A local folder or GGUF file, a hub id, a ``Plan``, or — with ``backend="openai"`` —
            the model name a server knows.
        backend, quantization, dtype, context, device: Wishes passed to :func:`toolkit.plan.plan`.
        trust_remote_code: Allow code shipped with the model to run (off by default).
        fallback: When the planned load fails, try the alternatives that also fit, in rank order.
        **options: Backend options (e.g. ``base_url`` for openai, ``n_threads`` for llamacpp).

    Returns:
        A :class:`Loaded` model. ``loaded.attempts`` records every failed attempt before it.

    Raises:
        LoadFailed: when every attempt failed; ``error.attempts`` holds each one's error.
    """
    from toolkit.plan import Plan, plan as make_plan

    if backend == "openai":
        target = LoadTarget(path=Path(str(model)), backend="openai", quantization=quantization or "none",
                            dtype=dtype or "auto", max_context=context, options=options)
        return load_target(target)
    if isinstance(model, (str, os.PathLike)) and not Path(model).exists() and "/" not in str(model):
        from toolkit.errors import ModelNotFound

        raise ModelNotFound(f"model {str(model)!r} not found: pass a local folder, a .gguf file, or a hub id "
                            "like 'org/name'")
    plan = model if isinstance(model, Plan) else make_plan(
        model, device, backend=backend, quantization=quantization, dtype=dtype, context=context)

    candidates: list[Any] = [plan]
    if fallback:
        for alt in plan.alternatives:
            if alt.get("fits") and not missing_requirements(alt["backend"]):
                candidates.append(_plan_from_alternative(plan, alt))
    attempts: list[dict[str, Any]] = []
    for candidate in candidates:
        target = _target_from_plan(candidate, trust_remote_code, options)
        try:
            loaded = load_target(target)
        except (ToolkitError, ImportError, RuntimeError, ValueError, OSError, MemoryError) as exc:
            attempts.append({"backend": target.backend, "quantization": target.quantization,
                             "dtype": target.dtype, "error": f"{type(exc).__name__}: {exc}"})
            if not fallback or isinstance(exc, (BackendUnavailable,)) and len(candidates) == 1:
                raise
            continue
        loaded.plan = candidate  # type: ignore[attr-defined]
        loaded.attempts = attempts
        return loaded
    lines = "\n".join(f"  - {a['backend']} {a['quantization']} {a['dtype']}: {a['error']}" for a in attempts)
    raise LoadFailed(f"could not load {plan.model}; every planned option failed:\n{lines}", attempts=attempts)


def _plan_from_alternative(plan: Any, alt: dict[str, Any]) -> Any:
    from dataclasses import replace

    from toolkit.plan import MemoryBreakdown

    memory = MemoryBreakdown(**alt["memory"]) if alt.get("memory") else plan.memory
    return replace(plan, backend=alt["backend"], quantization=alt["quantization"], dtype=alt.get("dtype"),
                   kv_dtype=alt.get("kv_dtype"), max_context=alt.get("max_context") or plan.max_context,
                   tensor_parallel=alt.get("tensor_parallel", 1), memory=memory,
                   reasons=[f"fallback after the planned load failed ({alt['rejected']})"], alternatives=[])


__all__ = ["BACKENDS", "GenerationConfig", "GenerationResult", "LoadTarget", "Loaded", "available",
           "backend_module", "load", "load_target", "missing_requirements"]
