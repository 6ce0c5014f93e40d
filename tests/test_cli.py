"""The CLI contracts of DESIGN.md, and the promise that `import toolkit` stays light."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "vllm", "mlx", "mlx_lm", "llama_cpp", "bitsandbytes", "gptqmodel", "pandas",
         "matplotlib", "ipywidgets", "huggingface_hub")


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "toolkit.cli", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_import_toolkit_loads_no_heavy_library():
    code = ("import sys, toolkit; toolkit.__version__; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plan_json_contract_without_torch():
    from toolkit.tiny import BASE

    code = ("import sys, json; from toolkit.cli import main; rc = main(['plan', %r, '--memory', '8GiB', "
            "'--device', 'cpu', '--json']); print('HEAVY', [m for m in ('torch', 'transformers') if m in sys.modules])"
            % str(BASE))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    body, heavy = out.rsplit("HEAVY", 1)
    assert heavy.strip() == "[]"
    plan = json.loads(body)
    for key in ("model", "params", "backend", "quantization", "dtype", "max_context", "memory", "reasons",
                "alternatives"):
        assert key in plan
    for key in ("budget_bytes", "weights_bytes", "kv_bytes_per_token", "kv_cache_bytes", "activation_bytes",
                "overhead_bytes", "total_bytes"):
        assert isinstance(plan["memory"][key], int)
    assert plan["memory"]["weights_bytes"] == 24_126_464  # fp32 checkpoint: equals its total tensor bytes
    assert plan["memory"]["total_bytes"] <= plan["memory"]["budget_bytes"]
    assert plan["max_context"] <= 2048


def test_plan_nothing_fits_exits_nonzero_with_needed_memory():
    from toolkit.tiny import BASE

    proc = run("plan", str(BASE), "--memory", "10MiB", "--device", "cpu", check=False)
    assert proc.returncode != 0
    assert "MiB" in proc.stderr or "GiB" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiny_prints_path_last():
    from toolkit.tiny import BASE

    assert run("tiny").stdout.strip().splitlines()[-1] == str(BASE)


def test_bad_input_is_one_paragraph_not_a_traceback(tmp_path):
    proc = run("plan", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing" in proc.stderr
    proc = run("plan", "x", "--memory", "24 gigs", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_missing_backend_names_the_extra(monkeypatch):
    from toolkit import backends
    from toolkit.errors import BackendUnavailable

    spec = backends.BACKENDS["llamacpp"]
    monkeypatch.setitem(backends.BACKENDS, "llamacpp",
                        backends.BackendSpec("llamacpp", spec.module, ("llama_cpp_not_installed",), "gguf", ""))
    with pytest.raises(BackendUnavailable, match=r"pip install 'toolkit\[gguf\]'"):
        backends.backend_module("llamacpp")


def test_backend_table_names_real_modules_and_extras():
    """Each registry entry's module exists and its extra is declared in pyproject.toml."""
    import importlib.util
    import tomllib
    from pathlib import Path

    from toolkit.backends import BACKENDS

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in BACKENDS.values():
        assert importlib.util.find_spec(spec.module) is not None, spec.module
        assert spec.extra is None or spec.extra in extras, spec.extra
