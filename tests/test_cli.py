"""The CLI contracts of DESIGN.md, and the promise that `import toolkit` stays light."""

import json
import subprocess
import sys

import pytest

from toolkit.errors import BackendUnavailable

HEAVY = ("torch", "transformers", "vllm", "mlx", "mlx_lm", "llama_cpp", "bitsandbytes", "gptqmodel", "pandas",
         "matplotlib", "ipywidgets", "huggingface_hub")


def run(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_import_toolkit_loads_no_heavy_library():
    code = ("import sys, toolkit; toolkit.__version__; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plan_json_contract_without_torch():
    from toolkit.builtin.tiny import BASE

    code = ("import sys, json; from toolkit.commands import main; rc = main(['plan', %r, '--memory', '8GiB', "
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
    from toolkit.builtin.tiny import BASE

    proc = run("plan", str(BASE), "--memory", "10MiB", "--device", "cpu", check=False)
    assert proc.returncode != 0
    assert "MiB" in proc.stderr or "GiB" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tiny_prints_path_last():
    from toolkit.builtin.tiny import BASE

    assert run("tiny").stdout.strip().splitlines()[-1] == str(BASE)


def test_bad_input_is_one_paragraph_not_a_traceback(tmp_path):
    proc = run("plan", str(tmp_path / "missing"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "missing" in proc.stderr
    proc = run("plan", "x", "--memory", "24 gigs", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_missing_backend_names_the_extra(monkeypatch):
    import dataclasses

    from toolkit import backends, capabilities

    spec = capabilities.BACKENDS["llamacpp"]
    monkeypatch.setitem(capabilities.BACKENDS, "llamacpp",
                        dataclasses.replace(spec, requires=("llama_cpp_not_installed",)))
    with pytest.raises(BackendUnavailable, match=r"pip install 'toolkit\[gguf\]'"):
        backends.backend_module("llamacpp")


def test_backend_table_names_real_modules_and_extras():
    """Each registry entry's module exists and its extra is declared in pyproject.toml."""
    import importlib.util
    import tomllib
    from pathlib import Path

    from toolkit.capabilities import BACKENDS

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in BACKENDS.values():
        assert importlib.util.find_spec(spec.module) is not None, spec.module
        assert spec.extra is None or spec.extra in extras, spec.extra


# ---------------------------------------------------------------------------------------------
# help, --version, --json (issue #16)


def _subparsers():
    import argparse

    from toolkit.commands import build_parser

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_subcommand_help_lists_its_flags_and_one_example():
    from toolkit.commands import COMMANDS

    parsers = _subparsers()
    assert list(parsers) == list(COMMANDS)
    for name, parser in parsers.items():
        text = run(name, "--help").stdout
        flags = [s for action in parser._actions for s in action.option_strings]
        assert "--verbose" in flags and len(flags) > 3, name
        missing = [flag for flag in flags if flag not in text]
        assert not missing, f"toolkit {name} --help lacks {missing}"
        example = text.split("example:\n", 1)[1].strip().splitlines()
        assert len(example) == 1 and example[0].startswith(f"toolkit {name}"), (name, example)


def test_top_level_help_ends_with_three_common_invocations():
    text = run("--help").stdout
    tail = text.rstrip().split("common invocations:\n", 1)[1].splitlines()
    assert len(tail) == 3 and all(line.strip().startswith("toolkit ") for line in tail), tail
    assert "-v, --verbose" in text


def test_python_m_toolkit_version():
    from toolkit import __version__

    assert run("--version").stdout.strip() == f"toolkit {__version__}"


def test_verbose_flag_before_or_after_the_command():
    from toolkit.commands import build_parser

    parser = build_parser()
    assert parser.parse_args(["-v", "probe"]).verbose is True
    assert parser.parse_args(["probe", "--verbose"]).verbose is True
    assert parser.parse_args(["probe"]).verbose is False


def test_plan_json_is_stdout_alone():
    from toolkit.builtin.tiny import BASE

    proc = run("plan", str(BASE), "--memory", "8GiB", "--device", "cpu", "--json")
    assert json.loads(proc.stdout)["backend"] == "hf"


def test_json_stdout_keeps_c_level_and_python_writes_off_stdout():
    """What a library writes while a --json command runs — print(), a logging handler made before,
    C code writing to file descriptor 1 — lands on stderr; the document alone on stdout."""
    code = """
import ctypes, logging, os, sys
from toolkit.commands._common import json_stdout, print_json
logging.basicConfig(stream=sys.stdout, level=logging.INFO)
with json_stdout():
    print("a library's print")
    logging.getLogger("lib").info("a library's log line")
    sys.stdout.flush()
    os.write(1, b"a C library's write to fd 1\\n")
    ctypes.CDLL(None).puts(b"a C library's puts")
    ctypes.CDLL(None).fflush(None)
    print_json({"ok": True})
print("after")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[-1] == "after"
    assert json.loads(proc.stdout.rsplit("after", 1)[0]) == {"ok": True}
    for line in ("a library's print", "a library's log line", "a C library's write to fd 1", "a C library's puts"):
        assert line in proc.stderr


def test_models_memory_and_device_like_plan(tmp_path):
    from toolkit.builtin.tiny import BASE

    empty = str(tmp_path / "no-cache")
    rows = json.loads(run("models", str(BASE), "--cache-dir", empty, "--memory", "8GiB", "--device", "cpu",
                          "--json").stdout)
    assert [(r["fits"], r["plan"]) for r in rows] == [(True, "hf none float32 ctx=2048")]
    rows = json.loads(run("models", str(BASE), "--cache-dir", empty, "--memory", "10MiB", "--device", "cpu",
                          "--json").stdout)
    assert rows[0]["fits"] is False and "does not fit" in rows[0]["plan"]
    for spec in ("cpu:16GiB", "24GiB", "auto"):  # the --device specs it took before keep working
        rows = json.loads(run("models", str(BASE), "--cache-dir", empty, "--device", spec, "--json").stdout)
        assert rows[0]["fits"] is True, spec
    assert "fits" not in json.loads(run("models", str(BASE), "--cache-dir", empty, "--json").stdout)[0]
    proc = run("models", str(BASE), "--cache-dir", empty, "--memory", "lots", check=False)
    assert proc.returncode == 2 and "cannot parse memory 'lots'" in proc.stderr
