"""toolkit: plan, load, benchmark and compare LLMs and their quantized variants on your hardware.

``import toolkit`` is light: torch, transformers, vllm, mlx and llama_cpp are imported only when a
function that needs them runs. The public names below resolve lazily on first use.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "probe": "toolkit.hardware",
    "Device": "toolkit.hardware",
    "ModelInfo": "toolkit.inspect",
    "Plan": "toolkit.plan",
    "load": "toolkit.backends",
    "GenerationConfig": "toolkit.backends.base",
    "perplexity": "toolkit.quality",
    "Recipe": "toolkit.recipe",
    "delete_model": "toolkit.models",
}
# Functions that share their module's name. Importing ``toolkit.plan`` (the module) rebinds the
# package attribute ``toolkit.plan`` to the module, so these modules are made callable instead:
# ``toolkit.plan(...)`` calls ``toolkit.plan.plan(...)`` however the module was first imported.
_CALLABLE_MODULES = ("inspect", "plan", "bench", "compare", "tiny", "models", "fetch")


class _CallableModule(types.ModuleType):
    """A module that, called, runs its function of the same name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def _make_callable(module_name: str) -> None:
    """Called at the end of each module in ``_CALLABLE_MODULES``."""
    sys.modules[module_name].__class__ = _CallableModule

__all__ = sorted([*_LAZY, *_CALLABLE_MODULES]) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES:
        return importlib.import_module(f"toolkit.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
