"""Quiet by default (issue #16): a load prints none of the libraries' noise, ``-v`` or
``TOOLKIT_LOG=debug`` shows it, and ``--json`` keeps stdout for the JSON alone while gptqmodel and
transformers log. Every case runs the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from toolkit import logs

# a line of each kind that a plain hf load of the tiny model printed before (see toolkit/logs.py)
NOISE = ("Failed to load", "_pytree", "Loading weights")
GPTQ_NOISE = ("GPT-QModel", "INFO ", "WARN ")


def toolkit(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != logs.ENV}
    proc = subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True,
                          env={**environ, **(env or {})}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_a_load_prints_no_library_noise():
    proc = toolkit("generate", "tiny", "--max-tokens", "4")
    for noise in NOISE:
        assert noise not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], "more than the summary line on stderr"
    assert proc.stderr.startswith("toolkit generate: 4 tokens")


@pytest.mark.parametrize("how", ["-v", "TOOLKIT_LOG=debug"])
def test_verbose_shows_the_libraries_logs(how):
    """The noise is silenced, not lost: with -v (or the env var, which the Python API reads too) it is
    printed again. Which lines appear depends on the installed libraries, so at least one of them."""
    if how == "-v":
        proc = toolkit("generate", "tiny", "--max-tokens", "4", "-v")
    else:
        proc = toolkit("generate", "tiny", "--max-tokens", "4", env={logs.ENV: "debug"})
    assert any(noise in proc.stderr for noise in NOISE), proc.stderr


def test_generate_json_is_stdout_alone():
    proc = toolkit("generate", "tiny", "--max-tokens", "4", "--json")
    doc = json.loads(proc.stdout)
    assert (doc["backend"], doc["completion_tokens"]) == ("hf", 4)


@pytest.mark.slow  # builds the gptq-4bit variant when it is not cached (~30 s)
def test_bench_json_parses_while_gptqmodel_and_transformers_log():
    from toolkit.builtin.tiny import tiny

    folder = str(tiny("gptq-4bit"))
    args = ("bench", folder, "--backend", "hf", "--json", "--repeats", "1", "--prompt-tokens", "8", "--new-tokens", "4")
    proc = toolkit(*args)
    rows = json.loads(proc.stdout)
    assert [(r["quantization"], r["batch"]) for r in rows] == [("gptq-4bit", 1)]
    for noise in NOISE + GPTQ_NOISE:
        assert noise not in proc.stderr, proc.stderr
    # with -v gptqmodel logs again (to stdout, by its own choice), and --json still moves it to stderr
    proc = toolkit(*args, "-v")
    assert json.loads(proc.stdout)[0]["quantization"] == "gptq-4bit"
    assert "GPT-QModel" in proc.stderr or "INFO" in proc.stderr, proc.stderr


def test_mlx_quantizing_at_load_prints_nothing_on_stdout():
    """mlx-lm prints "[INFO] Quantized model with ... bits per weight." to stdout: dropped, or on
    stderr with TOOLKIT_LOG=debug; stdout holds the generated text alone either way."""
    # the shipped fp32 folder itself (not the built-in name, which resolves to the prebuilt mlx-4bit
    # variant): an unquantized folder planned as mlx-4bit is quantized at load, where mlx-lm prints
    from toolkit.data import TINY

    args = ("generate", str(TINY), "--backend", "mlx", "--quantization", "mlx-4bit", "--max-tokens", "4")
    quiet = toolkit(*args)
    assert "Quantized model" not in quiet.stdout + quiet.stderr
    loud = toolkit(*args, env={logs.ENV: "debug"})
    assert "Quantized model" in loud.stderr and loud.stdout == quiet.stdout


def test_python_api_is_quiet_too():
    """A notebook gets the same: the quieting happens when a backend loads, not in the CLI."""
    code = ("import toolkit; m = toolkit.load(toolkit.tiny(), device='cpu'); print(m.generate('def f', max_tokens=2).text)")
    environ = {k: v for k, v in os.environ.items() if k != logs.ENV}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr


def test_library_bars_are_dropped_and_other_lines_kept(capsys, monkeypatch):
    import tqdm

    monkeypatch.delenv(logs.ENV, raising=False)

    print("before", file=sys.stderr)
    with logs.no_library_bars():
        for _ in tqdm.tqdm(range(3), desc="Compressing model"):
            pass
        print("a warning a library wrote", file=sys.stderr)
    err = capsys.readouterr().err
    assert "Compressing model" not in err and "it/s" not in err
    assert err == "before\na warning a library wrote\n", repr(err)
