"""Backend registry and :func:`load`.

One file per backend, found by name. Nothing here imports a backend's library: the module of the
chosen backend is imported on use, and a missing library raises an error naming the pip extra.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType
from typing import Any

from toolkit import capabilities as caps
from toolkit import logs
from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig, GenerationResult
from toolkit.backends.oom import out_of_memory
from toolkit.errors import (BackendUnavailable, InvalidModel, InvalidSpec, LoadFailed, ModelNotFound, OutOfMemory,
                            UnsafeCheckpoint, is_out_of_memory)
from toolkit.facts.process import rss_bytes
from toolkit.formats.safetensors import PICKLE_SUFFIXES
from toolkit.hub.ids import is_hub_id


def missing_requirements(name: str) -> list[str]:
    """Import names the backend needs that are not installed (checked without importing them)."""
    return [mod for mod in caps.backend(name).requires if importlib.util.find_spec(mod) is None]


def available() -> dict[str, bool]:
    """Which backends can be imported on this machine."""
    return {name: not missing_requirements(name) for name in caps.BACKENDS}


def backend_module(name: str) -> ModuleType:
    """Import a backend's module, or raise BackendUnavailable naming the pip extra to install."""
    record = caps.backend(name)
    missing = missing_requirements(name)
    if missing:
        raise BackendUnavailable(
            f"the {name} backend needs {', '.join(missing)}, which is not installed: "
            f"pip install 'toolkit[{record.extra}]'")
    logs.quiet()  # before the engine is imported: some of its noise is printed on import
    return importlib.import_module(record.module)


def check_quantization(target: LoadTarget) -> None:
    """Refuse a quantization the target's backend does not run, naming those it does."""
    record = caps.backend(target.backend)
    q = target.quantization or "none"
    if q in ("none", "auto") or record.runs(q):
        return
    runs = sorted({p for patterns in record.quantizations.values() for p in patterns})
    instead = record.refusal(q) or ("prequantized checkpoints carry their own quantization: pass "
                                    "quantization='none' to load one as it is")
    raise InvalidSpec(f"the {target.backend} backend does not run {q!r} (it runs {', '.join(runs)}): {instead}")


def _target_from_plan(plan: Any, trust_remote_code: bool, options: dict[str, Any]) -> LoadTarget:
    """The load a plan describes: its backend, quantization, dtype and context, and the engine settings
    its estimate assumed (the caller's options win over them)."""
    device = plan.device.get("kind", "cpu") if isinstance(plan.device, dict) else str(plan.device)
    settings = dict(getattr(plan, "settings", None) or {})
    takes = {f.name for f in dataclasses.fields(caps.backend(plan.backend).options)}
    missing = sorted(set(settings) - takes)
    if missing:  # loading without them would not be the planned load (e.g. MoE experts kept on the CPU)
        run = "; ".join(getattr(plan, "commands", None) or []) or "the engine's own server"
        raise InvalidSpec(f"this plan needs {', '.join(missing)}, which toolkit's {plan.backend} backend cannot set: "
                          f"run it with the engine's own tool instead: {run}")
    return LoadTarget(path=Path(plan.model), backend=plan.backend, quantization=plan.quantization,
                      dtype=plan.dtype or "auto", max_context=plan.max_context, device=device,
                      tensor_parallel=plan.tensor_parallel, trust_remote_code=trust_remote_code,
                      options={**settings, **options})


# Errors about the model's files or the user's wishes: every other planned option would meet them
# too, so load() raises them at once instead of trying the fallbacks.
INPUT_ERRORS = (InvalidModel, InvalidSpec, ModelNotFound, UnsafeCheckpoint)


def check_pickles(path: Path, allow_pickle: bool) -> None:
    """Refuse a model whose only weights are pickles (``*.bin``, ``*.pt``...): unpickling can run
    arbitrary code. Checked here, before any backend library is imported, for every local backend."""
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
    check_quantization(target)
    if target.backend != "openai":
        check_pickles(Path(target.path), target.options.allow_pickle)
    module = backend_module(target.backend)
    return module.load(target)


def load(model: Any, backend: str | None = None, *, quantization: str | None = None, dtype: str | None = None,
         context: int | None = None, device: Any = None, trust_remote_code: bool = False,
         fallback: bool = True, revision: str | None = None, **options: Any) -> Loaded:
    """Plan (when given a model), load, and on failure walk the plan's alternatives.

    Args:
        model: A local folder or GGUF file, a hub id, a ``Plan``, a built-in model's name (``"tiny"``,
            ``"smollm2"``: the variant ``backend``/``quantization`` ask for, built on first use), or —
            with ``backend="openai"`` — the model name a server knows. A hub id is planned from its metadata, then only the
            files the chosen backend needs are fetched (:func:`toolkit.hub.fetch.fetch`).
        revision: For a hub id: the branch, tag or commit to plan and load (pin a commit for
            reproducible results).
        backend, quantization, dtype, context, device: Wishes passed to :func:`toolkit.planning.plan.plan`.
        trust_remote_code: Allow code shipped with the model to run (off by default).
        fallback: When the planned load fails, try the alternatives that also fit, in rank order.
        **options: Backend options (e.g. ``base_url`` for openai, ``n_threads`` for llamacpp).

    Returns:
        A :class:`Loaded` model. ``loaded.attempts`` records every failed attempt before it.

    Raises:
        LoadFailed: when every attempt failed; ``error.attempts`` holds each one's error.
    """
    from toolkit.planning.plan import plan as make_plan
    from toolkit.planning.result import Plan

    if backend == "openai":
        target = LoadTarget(path=Path(str(model)), backend="openai", quantization=quantization or "none",
                            dtype=dtype or "auto", max_context=context, options=options)
        return load_target(target)
    from toolkit.builtin import is_builtin, resolve

    if is_builtin(model):
        model, quantization = resolve(model, backend, quantization)
    if isinstance(model, (str, os.PathLike)) and not Path(model).exists() and "/" not in str(model):
        raise ModelNotFound(f"model {str(model)!r} not found: pass a local folder, a .gguf file, or a hub id "
                            "like 'org/name'")
    if revision is not None and not isinstance(model, Plan) and not Path(str(model)).exists():
        from toolkit.facts.model_info import inspect

        model = inspect(str(model), revision=revision)  # plan the pinned revision's metadata
    plan = model if isinstance(model, Plan) else make_plan(
        model, device, backend=backend, quantization=quantization, dtype=dtype, context=context)

    candidates: list[Any] = [plan]
    if fallback:
        candidates += [_plan_from_alternative(plan, alt) for alt in plan.alternatives
                       if alt.get("fits") and not missing_requirements(alt["backend"])]
    attempts: list[dict[str, Any]] = []
    for i, candidate in enumerate(candidates):
        loaded = _try(candidate, attempts, first=i == 0, only=len(candidates) == 1, fallback=fallback,
                      trust_remote_code=trust_remote_code, revision=revision, options=options)
        if loaded is not None:
            loaded.plan = candidate
            loaded.attempts = attempts
            return loaded
    raise load_failed(plan.model, attempts)


def _try(candidate: Any, attempts: list[dict[str, Any]], *, first: bool, only: bool, fallback: bool,
         trust_remote_code: bool, revision: str | None, options: dict[str, Any]) -> Loaded | None:
    """Load one planned option; a failure is recorded in ``attempts`` (None returned), or raised when
    no other option could do better: an input error, a missing library with nothing to fall back to,
    or any error when ``fallback`` is off."""
    try:
        target = _target_from_plan(candidate, trust_remote_code, options)
    except InvalidSpec as exc:  # an option the planned backend does not take is the caller's error
        if first:
            raise
        attempts.append({"backend": candidate.backend, "quantization": candidate.quantization,
                         "dtype": candidate.dtype, "error": f"InvalidSpec: {exc}"})
        return None
    before = rss_bytes()
    oom: tuple[str, str] | None = None
    try:
        target.path = _local(candidate, revision, bool(options.get("allow_pickle")))
        return load_target(target)
    except Exception as exc:  # a library's error becomes an attempt (and a message), never a traceback
        if is_out_of_memory(exc) and not isinstance(exc, OutOfMemory):
            oom = (type(exc).__name__, str(exc))  # handled below, once the traceback is gone
        else:
            attempts.append(_attempt(target, f"{type(exc).__name__}: {exc}"))
            if not fallback or isinstance(exc, INPUT_ERRORS) or isinstance(exc, BackendUnavailable) and only:
                raise
            return None
    error = out_of_memory(oom[0], oom[1], phase="load", model=str(candidate.model), device=target.device,
                          backend=target.backend, quantization=target.quantization, rss_before=before,
                          predicted_bytes=candidate.memory.total_bytes)
    attempts.append(_attempt(target, f"OutOfMemory: {error}"))
    if not fallback:
        raise error
    return None


def _attempt(target: LoadTarget, error: str) -> dict[str, Any]:
    return {"backend": target.backend, "quantization": target.quantization, "dtype": target.dtype, "error": error}


def _local(plan: Any, revision: str | None, allow_pickle: bool) -> Path:
    """The local folder or file for a plan: the model itself, or the files of a hub id that its
    backend needs, fetched into the hub cache (nothing is downloaded twice)."""
    path = Path(str(plan.model))
    if path.exists():
        return path
    from toolkit.hub.fetch import fetch

    if not is_hub_id(str(plan.model)):
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

    from toolkit.planning.result import MemoryBreakdown

    memory = MemoryBreakdown(**alt["memory"]) if alt.get("memory") else plan.memory
    return replace(plan, backend=alt["backend"], quantization=alt["quantization"], dtype=alt.get("dtype"),
                   kv_dtype=alt.get("kv_dtype"), max_context=alt.get("max_context") or plan.max_context,
                   tensor_parallel=alt.get("tensor_parallel", 1), memory=memory, settings=alt.get("settings") or {},
                   reasons=[f"fallback after the planned load failed ({alt['rejected']})"], alternatives=[])


__all__ = ["GenerationConfig", "GenerationResult", "LoadTarget", "Loaded", "available",
           "backend_module", "load", "load_target", "missing_requirements"]
