"""toolkit: plan, load, benchmark and compare LLMs and their quantized variants on your hardware.

``import toolkit`` is light: torch, transformers, vllm, mlx and llama_cpp are imported only when a
function that needs them runs. The public names below resolve lazily on first use.

The flow, one package a step (see README "Architecture")::

    facts (probe, inspect) -> planning (plan) -> backends (load) -> measuring (bench, compare)
                                                                  -> reporting, widgets
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "probe": "toolkit.facts.probe",
    "Device": "toolkit.facts.devices",
    "inspect": "toolkit.facts.model_info",
    "ModelInfo": "toolkit.facts.model_info",
    "plan": "toolkit.planning.plan",
    "Plan": "toolkit.planning.result",
    "load": "toolkit.backends",
    "GenerationConfig": "toolkit.backends.generation",
    "bench": "toolkit.measuring.bench",
    "compare": "toolkit.measuring.compare",
    "perplexity": "toolkit.measuring.quality",
    "tiny": "toolkit.builtin.tiny",
    "smollm2": "toolkit.builtin.smollm2",
    "quantize": "toolkit.builtin.quantize",
    "models": "toolkit.hub.models",
    "delete_model": "toolkit.hub.models",
    "fetch": "toolkit.hub.fetch",
    "Recipe": "toolkit.hub.recipe",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
