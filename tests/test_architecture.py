"""The package's layers, checked on its source (AST, nothing imported).

Data flows one way: facts -> planning -> backends -> measuring -> reporting / widgets. The rules:

* planning imports no engine library and nothing from measuring, reporting or widgets;
* backends import nothing from measuring, reporting or widgets;
* reporting reads results, never a live engine: no backends, no engine library;
* the light layers (errors, units, capabilities, launcher, data, formats, facts) import no engine
  at module level;
* no import cycles between modules, counting every import (function-local ones too).

Each test also runs the checker on a copy of the package with one forbidden import added, to show
that the rule can fail.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "toolkit"
ENGINES = ("torch", "transformers", "vllm", "mlx", "mlx_lm", "llama_cpp", "bitsandbytes", "gptqmodel",
           "llmcompressor", "compressed_tensors", "optimum", "peft", "safetensors", "accelerate")
LIGHT = ("toolkit.errors", "toolkit.units", "toolkit.capabilities", "toolkit.launcher", "toolkit.data",
         "toolkit.formats", "toolkit.facts", "toolkit.hub.ids")
# layer -> prefixes it must not import
FORBIDDEN = {
    "toolkit.planning": ("toolkit.measuring", "toolkit.reporting", "toolkit.widgets", "toolkit.backends",
                         "toolkit.commands", *ENGINES),
    "toolkit.backends": ("toolkit.measuring", "toolkit.reporting", "toolkit.widgets", "toolkit.commands"),
    "toolkit.reporting": ("toolkit.backends", "toolkit.widgets", "toolkit.commands", *ENGINES),
}


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    """module -> [(imported module, line, at module level)] for every import in the package."""
    graph: dict[str, list[tuple[str, int, bool]]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path)
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(n) for n in tree.body}
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno, id(node) in top) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # ``from pkg import name`` may import the module pkg.name: keep the longer name, which
                # resolves to the module when there is one (see _resolve)
                found += [(f"{node.module}.{a.name}", node.lineno, id(node) in top) for a in node.names]
        graph[name] = found
    return graph


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(root: Path) -> list[str]:
    graph = imports(root)
    out = []
    for module, found in graph.items():
        for target, line, at_top in found:
            for layer, banned in FORBIDDEN.items():
                if _within(module, layer):
                    out += [f"{module}:{line} imports {target} ({layer} must not import {b})"
                            for b in banned if _within(target, b)]
            if at_top and any(_within(module, light) for light in LIGHT):
                out += [f"{module}:{line} imports {target} at module level (a light module imports no engine)"
                        for e in ENGINES if _within(target, e)]
    return out + cycles(graph)


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    """Import cycles between toolkit modules (a package import counts as importing its __init__)."""
    modules = set(graph)
    edges = {m: sorted({_resolve(t, modules) for t, _, _ in found} - {None, m}) for m, found in graph.items()}
    found: list[str] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in edges.get(m, ()):
            if state.get(n) == 1:
                found.append("cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
    return found


def _resolve(target: str, modules: set[str]) -> str | None:
    """The toolkit module an import names (``from toolkit.x import y`` may name module x.y)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target if target and target != "toolkit" else None


def test_the_package_keeps_its_layers():
    assert violations(ROOT) == []


def _copy(tmp_path: Path) -> Path:
    copy = tmp_path / "toolkit"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return copy


@pytest.mark.parametrize("file, line, expected", [
    ("planning/memory.py", "import torch", "toolkit.planning.memory:1 imports torch"),
    ("planning/plan.py", "from toolkit.measuring.bench import bench", "planning must not import toolkit.measuring"),
    ("backends/hf.py", "from toolkit.reporting import plots", "backends must not import toolkit.reporting"),
    ("reporting/report.py", "from toolkit.backends import load", "reporting must not import toolkit.backends"),
    ("facts/devices.py", "import transformers", "a light module imports no engine"),
    ("facts/devices.py", "from toolkit.facts import probe", "toolkit.facts.devices -> toolkit.facts.probe"),
])
def test_a_forbidden_import_is_caught(tmp_path, file, line, expected):
    copy = _copy(tmp_path)
    path = copy / file
    path.write_text(line + "\n" + path.read_text())
    found = violations(copy)
    assert any(expected in v for v in found), found
