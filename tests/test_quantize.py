"""`toolkit quantize` / `toolkit.quantize` on a model toolkit has never seen (a copy of the tiny
folder under another name, in a temporary directory): every method builds with the real library and
loads on its backend; bad input gets a message, not a traceback; a killed build leaves no half folder;
`compare` on such a folder builds what it lacks and gives complete rows."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.builtin import quantize as q
from toolkit.builtin.quantize import METHODS, MANIFEST, quantize
from toolkit.capabilities import backend_for
from toolkit.data import TINY
from toolkit.errors import BackendUnavailable, InvalidModel, InvalidSpec
from toolkit.facts.model_info import inspect


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def my_model(tmp_path_factory):
    """A model folder toolkit has never seen: the tiny model's files under another name."""
    folder = tmp_path_factory.mktemp("models") / "my-model"
    shutil.copytree(TINY, folder, ignore=shutil.ignore_patterns("training.json"))
    return folder


def test_unknown_method_lists_the_valid_ones(my_model):
    with pytest.raises(InvalidSpec) as err:
        quantize(my_model, "gptq-3bit")
    for method in METHODS:
        assert method in str(err.value)
    proc = _cli("quantize", str(my_model), "--method", "int3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "gptq-4bit" in proc.stderr and "gguf-q4_k_m" in proc.stderr and "mlx-8bit" in proc.stderr


def test_a_gguf_or_a_folder_without_config_is_refused(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(InvalidModel, match="GGUF file.*Hugging Face weights"):
        quantize(gguf, "gptq-4bit")
    folder = tmp_path / "weights-only"
    folder.mkdir()
    shutil.copy(TINY / "model.safetensors", folder)
    with pytest.raises(InvalidModel, match="no config.json"):
        quantize(folder, "awq-4bit")
    proc = _cli("quantize", str(folder), "--method", "ct-gptq-4bit")
    assert proc.returncode == 2 and "no config.json" in proc.stderr and "Traceback" not in proc.stderr
    pickles = tmp_path / "pickles"
    shutil.copytree(TINY, pickles, ignore=shutil.ignore_patterns("*.safetensors"))
    (pickles / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(InvalidModel, match="pickle"):
        quantize(pickles, "gptq-4bit")


def test_a_missing_library_names_the_extra(my_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gptqmodel" else real(name, *a))
    monkeypatch.setenv("TOOLKIT_CACHE", str(my_model.parent / "empty-cache"))
    with pytest.raises(BackendUnavailable, match=r"pip install 'toolkit\[quant\]'"):
        quantize(my_model, "gptq-4bit")


def test_cache_key_follows_content_and_calibration(my_model, tmp_path):
    other = tmp_path / "renamed"
    shutil.copytree(my_model, other)
    assert q.build_key(other) == q.build_key(my_model)  # content, not the folder's name or place
    text = tmp_path / "calib.txt"
    text.write_text("def f(x):\n    return x\n" * 2000)
    assert q.build_key(my_model, text) != q.build_key(my_model)
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (other / "config.json").write_text(json.dumps(config))
    assert q.build_key(other) != q.build_key(my_model)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_each_method_builds_and_loads(my_model, method):
    from toolkit.backends import load

    path = quantize(my_model, method, progress=False)
    folder = path if path.is_dir() else path.parent
    manifest = json.loads((folder / MANIFEST).read_text())
    # cached by content: the build may have been made from an identical folder elsewhere (an earlier run)
    assert q.build_key(my_model) in folder.parts and manifest["variant"] == method
    assert Path(manifest["source"]).name == my_model.name
    assert not list(folder.parent.glob(f".{method}-*")), "no temporary folder is left"
    assert inspect(path).quantization == method
    with load(str(path), backend_for(method), fallback=False) as model:
        out = model.generate("def add(a, b):\n", max_tokens=4)
    assert out.completion_tokens == 4
    assert quantize(my_model, method, progress=False) == path  # cached: the same path, nothing rebuilt
    assert json.loads((folder / MANIFEST).read_text())["seconds"] == manifest["seconds"]


@pytest.mark.slow
def test_out_places_the_result_in_a_new_folder(my_model, tmp_path):
    path = quantize(my_model, "gguf-q8_0", out=tmp_path / "exported", progress=False)
    assert path.parent == tmp_path / "exported" and path.read_bytes()[:4] == b"GGUF"
    with pytest.raises(InvalidSpec, match="not an empty folder"):
        quantize(my_model, "gguf-q8_0", out=tmp_path / "exported", progress=False)


@pytest.mark.slow
def test_a_killed_build_leaves_no_half_folder(my_model, tmp_path):
    """Kill a build mid-way (the CLI and its builder process): no variant folder appears; the next
    build removes the killed one's temporary folder and completes."""
    cache = tmp_path / "cache"
    env = {**os.environ, "TOOLKIT_CACHE": str(cache)}
    cmd = [sys.executable, "-m", "toolkit", "quantize", str(my_model), "--method", "ct-gptq-4bit", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    root = cache / "quantized"
    deadline = time.time() + 120
    while time.time() < deadline and not list(root.glob("*/.ct-gptq-4bit-*")):
        time.sleep(0.2)
    time.sleep(3)  # the builder is running
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [builds] = list(root.iterdir())
    assert list(builds.glob(".ct-gptq-4bit-*")), "the killed build's temporary folder is there"
    assert not (builds / "ct-gptq-4bit").exists(), "no half folder in the final place"
    done = _cli("quantize", str(my_model), "--method", "ct-gptq-4bit", "--quiet", env={"TOOLKIT_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip().splitlines()[-1]) == builds / "ct-gptq-4bit"
    assert (builds / "ct-gptq-4bit" / MANIFEST).exists() and not list(builds.glob(".ct-gptq-4bit-*"))


@pytest.mark.slow
def test_compare_builds_the_variants_a_folder_lacks(my_model, tmp_path):
    """The acceptance command: `toolkit compare ./my-model --variants none,bnb-4bit,gptq-4bit,awq-4bit`."""
    proc = subprocess.run([sys.executable, "-m", "toolkit", "compare", "my-model", "--variants",
                           "none,bnb-4bit,gptq-4bit,awq-4bit", "--windows", "4", "--repeats", "1", "--prompt-tokens",
                           "16", "--new-tokens", "8", "--json"], capture_output=True, text=True, cwd=my_model.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert [r["variant"] for r in rows] == ["none", "bnb-4bit", "gptq-4bit", "awq-4bit"]
    for row in rows:
        assert row["error"] is None, row["error"]
        for key in ("weights_bytes", "peak_memory_bytes", "decode_tok_s", "perplexity", "kl_divergence",
                    "top1_agreement"):
            assert row[key] is not None, (row["variant"], key)
    for row in rows[1:]:
        assert row["kl_divergence"] > 0 and row["weights_bytes"] < rows[0]["weights_bytes"]
    assert rows[2]["build_s"] is not None and rows[2]["path"].endswith("gptq-4bit")
