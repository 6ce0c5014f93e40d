"""What the installed engine libraries implement, read from their source text without importing
them (planning imports no engine)."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

# transformers keeps its model_type -> config class table in these files (auto_mappings.py since 5.x,
# configuration_auto.py before, which still adds a few entries)
_AUTO_FILES = ("auto_mappings.py", "configuration_auto.py")
_TABLE = "CONFIG_MAPPING_NAMES"


@functools.lru_cache(maxsize=1)
def transformers_model_types() -> frozenset[str] | None:
    """The ``model_type`` names that the installed transformers implements itself (the keys of its
    ``CONFIG_MAPPING_NAMES``), or None when transformers is not installed or its table cannot be read."""
    spec = importlib.util.find_spec("transformers")  # a top-level name: found, not imported
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "models" / "auto"
    names: set[str] = set()
    for name in _AUTO_FILES:
        try:
            tree = ast.parse((folder / name).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if _names_table(node):
                names |= _keys(node)
    return frozenset(names) or None


def transformers_implements(model_type: str | None) -> bool | None:
    """Whether the installed transformers has a built-in implementation of ``model_type``; None when
    that cannot be told (no model_type, transformers missing or unreadable)."""
    known = transformers_model_types()
    if not model_type or known is None:
        return None
    return model_type in known


def _names_table(node: ast.AST) -> bool:
    """``CONFIG_MAPPING_NAMES = ...`` or ``CONFIG_MAPPING_NAMES.update(...)``."""
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == _TABLE for t in node.targets)
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
            and isinstance(node.func.value, ast.Name) and node.func.value.id == _TABLE)


def _keys(node: ast.AST) -> set[str]:
    """The model types in a table's literal: ``("llama", "LlamaConfig")`` pairs and dict keys."""
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Tuple) and len(sub.elts) == 2 and all(_is_str(e) for e in sub.elts):
            found.add(sub.elts[0].value)  # type: ignore[attr-defined]
        elif isinstance(sub, ast.Dict):
            found |= {k.value for k in sub.keys if k is not None and _is_str(k)}  # type: ignore[attr-defined]
    return found


def _is_str(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)
