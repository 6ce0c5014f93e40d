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
from toolkit.backends.oom import out_of_memory
from toolkit.errors import (BackendUnavailable, InvalidModel, InvalidSpec, LoadFailed, ModelNotFound, OutOfMemory,
                            UnsafeCheckpoint, is_out_of_memory)
from toolkit.trackers import rss_bytes


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


# Errors about the model's files or the user's wishes: every other planned option would meet them
# too, so load() raises them at once instead of trying the fallbacks.
INPUT_ERRORS = (InvalidModel, InvalidSpec, ModelNotFound, UnsafeCheckpoint)


def check_pickles(path: Path, allow_pickle: bool) -> None:
    """Refuse a model whose only weights are pickles (``*.bin``, ``*.pt``...): unpickling can run
    arbitrary code. Checked here, before any backend library is imported, for every local backend."""
    from toolkit.inspect import PICKLE_SUFFIXES

    if allow_pickle or not path.exists():
        return
    if path.is_file():
        pickles = [path.name] if path.suffix in PICKLE_SUFFIXES else []
    elif any(path.glob("*.safetensors")) or any(path.glob("*.gguf")):
        pickles = []
    else:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES
                         and not p.name.startswith("training_args"))
    if pickles:
        raise UnsafeCheckpoint(
            f"{path} holds only pickle weights ({', '.join(pickles[:3])}), and loading them unpickles them, which "
            "can run arbitrary code: convert them to safetensors, or pass --allow-pickle (allow_pickle=True in "
            "Python) if you trust their source")


def load_target(target: LoadTarget) -> Loaded:
    """Load exactly this target with its backend: no planning, no fallback."""
    if target.backend != "openai":
        check_pickles(Path(target.path), bool(target.options.get("allow_pickle")))
    module = backend_module(target.backend)
    return module.load(target)


def load(model: Any, backend: str | None = None, *, quantization: str | None = None, dtype: str | None = None,
         context: int | None = None, device: Any = None, trust_remote_code: bool = False,
         fallback: bool = True, revision: str | None = None, **options: Any) -> Loaded:
    """Plan (when given a model), load, and on failure walk the plan's alternatives.

    Args:
        model: A local folder or GGUF file, a hub id, a ``Plan``, or — with ``backend="openai"`` —
            the model name a server knows. A hub id is planned from its metadata, then only the
            files the chosen backend needs are fetched (:func:`toolkit.fetch.fetch`).
        revision: For a hub id: the branch, tag or commit to plan and load (pin a commit for
            reproducible results).
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
    if revision is not None and not isinstance(model, Plan) and not Path(str(model)).exists():
        from toolkit.inspect import inspect

        model = inspect(str(model), revision=revision)  # plan the pinned revision's metadata
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
        before = rss_bytes()
        oom: tuple[str, str] | None = None
        try:
            target.path = _local(candidate, revision, bool(options.get("allow_pickle")))
            loaded = load_target(target)
        except Exception as exc:  # a library's error becomes an attempt (and a message), never a traceback
            if is_out_of_memory(exc) and not isinstance(exc, OutOfMemory):
                oom = (type(exc).__name__, str(exc))  # handled below, once the traceback is gone
            else:
                attempts.append(_attempt(target, f"{type(exc).__name__}: {exc}"))
                if (not fallback or isinstance(exc, INPUT_ERRORS)
                        or isinstance(exc, BackendUnavailable) and len(candidates) == 1):
                    raise
                continue
        if oom is not None:
            error = out_of_memory(oom[0], oom[1], phase="load", model=str(candidate.model), device=target.device,
                                  backend=target.backend, quantization=target.quantization, rss_before=before,
                                  predicted_bytes=candidate.memory.total_bytes)
            attempts.append(_attempt(target, f"OutOfMemory: {error}"))
            if not fallback:
                raise error
            continue
        loaded.plan = candidate  # type: ignore[attr-defined]
        loaded.attempts = attempts
        return loaded
    raise load_failed(plan.model, attempts)


def _attempt(target: LoadTarget, error: str) -> dict[str, Any]:
    return {"backend": target.backend, "quantization": target.quantization, "dtype": target.dtype, "error": error}


def _local(plan: Any, revision: str | None, allow_pickle: bool) -> Path:
    """The local folder or file for a plan: the model itself, or the files of a hub id that its
    backend needs, fetched into the hub cache (nothing is downloaded twice)."""
    path = Path(str(plan.model))
    if path.exists():
        return path
    from toolkit.fetch import HUB_ID, fetch

    if not HUB_ID.fullmatch(str(plan.model)):
        return path  # the backend says what is wrong with it
    quantization = plan.quantization if str(plan.quantization).startswith("gguf-") else None
    return fetch(str(plan.model), revision=revision, backend=plan.backend, quantization=quantization,
                 allow_pickle=allow_pickle)


def load_failed(model: str, attempts: list[dict[str, Any]]) -> LoadFailed:
    """One paragraph: each option tried and its error (a repeated error said once), then what to do."""
    said: set[str] = set()
    parts = []
    for a in attempts:
        error = " ".join(str(a["error"]).split())  # libraries' messages span lines; keep one paragraph
        option = f"{a['backend']} {a['quantization']} {a['dtype']}"
        parts.append(f"{option} failed the same way" if error in said else f"{option} failed with {error}")
        said.add(error)
    if attempts and all(str(a["error"]).startswith("OutOfMemory") for a in attempts):
        error = LoadFailed(f"could not load {model}: every option ran out of memory: {'; '.join(parts)}. Fix: free "
                           "memory (unload other models, close other programs), or load a smaller quantization or "
                           "a shorter context", attempts=attempts)
        error.exit_code = 3  # a memory problem, like NothingFits
        return error
    return LoadFailed(f"could not load {model}: {'; '.join(parts)}. Fix: check the files with `toolkit inspect "
                      f"{model}`, install or upgrade the backend's library, or choose another option with --backend/"
                      "--quantization (backend=/quantization= in Python)", attempts=attempts)


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
