"""One suite over every backend and variant that runs on this machine, on the built-in tiny model.

Each model loads once (module-scoped fixture, parametrised); pytest groups the tests by model and
unloads one before loading the next. The llama.cpp server for the openai backend is started once
for the module on ``tiny("gguf-f16")`` and stopped at the end.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.backends import GenerationConfig, LoadTarget, backend_module, load_target
from toolkit.builtin.tiny import BASE, tiny
from toolkit.errors import InvalidModel, ToolkitError
from toolkit.facts.process import release_memory, rss_bytes

PROMPT = "def add(a, b):\n"
PROMPT2 = "import os\n"
N = 16

HAS = {name: importlib.util.find_spec(mod) is not None
       for name, mod in (("llamacpp", "llama_cpp"), ("mlx", "mlx_lm"), ("bnb", "bitsandbytes"),
                         ("gptq", "gptqmodel"), ("server", "uvicorn"))}


def _needs(*names: str) -> pytest.MarkDecorator:
    missing = [n for n in names if not HAS[n]]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


# id: (backend, variant for tiny(), quantization, dtype), marks
CASES = [
    pytest.param(("hf", None, "none", "float32"), id="hf-fp32"),
    pytest.param(("hf", None, "none", "bfloat16"), id="hf-bf16"),
    pytest.param(("hf", None, "bnb-4bit", "auto"), id="hf-bnb-4bit", marks=_needs("bnb")),
    pytest.param(("hf", None, "bnb-8bit", "auto"), id="hf-bnb-8bit", marks=_needs("bnb")),
    pytest.param(("hf", "gptq-4bit", "gptq-4bit", "auto"), id="hf-gptq-4bit", marks=_needs("gptq")),
    pytest.param(("hf", "awq-4bit", "awq-4bit", "auto"), id="hf-awq-4bit", marks=_needs("gptq")),
    pytest.param(("llamacpp", "gguf-f16", "gguf-f16", "auto"), id="llamacpp-f16", marks=_needs("llamacpp")),
    pytest.param(("llamacpp", "gguf-q8_0", "gguf-q8_0", "auto"), id="llamacpp-q8_0", marks=_needs("llamacpp")),
    pytest.param(("llamacpp", "gguf-q4_k_m", "gguf-q4_k_m", "auto"), id="llamacpp-q4_k_m",
                 marks=_needs("llamacpp")),
    pytest.param(("mlx", None, "none", "auto"), id="mlx-base", marks=_needs("mlx")),
    pytest.param(("mlx", "mlx-4bit", "mlx-4bit", "auto"), id="mlx-4bit", marks=_needs("mlx")),
    pytest.param(("openai", "gguf-f16", "none", "auto"), id="openai-llamacpp-server",
                 marks=_needs("llamacpp", "server")),
]


@pytest.fixture(scope="module")
def server():
    from toolkit.backends.servers import start_llama_server

    process, base_url = start_llama_server(tiny("gguf-f16", progress=False))
    yield base_url
    process.terminate()
    try:
        process.wait(timeout=10)
    except Exception:  # noqa: BLE001 - a stuck server is killed
        process.kill()


@pytest.fixture(scope="module", params=CASES)
def model(request):
    backend, variant, quantization, dtype = request.param
    path = tiny(variant, progress=False)
    options = {}
    if backend == "openai":
        base_url = request.getfixturevalue("server")
        vocab = json.loads((BASE / "config.json").read_text())["vocab_size"]
        options = {"base_url": base_url, "vocab_size": vocab}
        path = Path(Path(path).stem)  # the server's model name (start_llama_server's alias)
    if backend != "openai":
        backend_module(backend)  # import cost is not the model's
    release_memory()
    before = rss_bytes()
    loaded = load_target(LoadTarget(path=path, backend=backend, quantization=quantization, dtype=dtype,
                                    options=options))
    loaded.rss_before_load = before  # for the unload check
    yield loaded
    loaded.unload()


@pytest.fixture(scope="module")
def reference(model):
    """A greedy generation past EOS, which the other checks compare against."""
    return model.generate(PROMPT, max_tokens=N, ignore_eos=True)


def test_stream_matches_generate(model, reference):
    chunks = list(model.stream(PROMPT, max_tokens=N, ignore_eos=True))
    assert "".join(c.text for c in chunks) == reference.text
    streamed_ids = [t for c in chunks for t in c.token_ids]
    if -1 not in streamed_ids:  # llama-cpp-python's server streams text without ids (see openai.py)
        assert streamed_ids == reference.token_ids
    assert len(streamed_ids) == reference.completion_tokens
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == reference.finish_reason
    assert chunks[-1].ttft_s > 0 and chunks[-1].elapsed_s >= chunks[-1].ttft_s


def test_max_tokens(model, reference):
    assert reference.completion_tokens == N
    assert reference.finish_reason == "length"
    assert len(reference.text) > 0
    short = model.generate(PROMPT, max_tokens=3, ignore_eos=True)
    assert short.completion_tokens == 3 and short.finish_reason == "length"
    assert reference.text.startswith(short.text)


def test_stop_sequence(model, reference):
    text = reference.text
    # A stop string that is one whole later token: base.Loaded cuts within the chunk that completes
    # the stop string (text already streamed cannot be taken back).
    offset, stop = 0, None
    for chunk in model.stream(PROMPT, max_tokens=N, ignore_eos=True):
        if offset > 0 and chunk.text.strip() and text.find(chunk.text) == offset:
            stop = chunk.text
            break
        offset += len(chunk.text)
    assert stop is not None, f"no usable stop string in {text!r}"
    result = model.generate(PROMPT, max_tokens=N, ignore_eos=True, stop=(stop,))
    assert result.finish_reason == "stop"
    assert result.text == text[:offset]


def test_generate_batch(model, reference):
    results = model.generate_batch([PROMPT, PROMPT2], GenerationConfig(max_tokens=8, ignore_eos=True))
    assert len(results) == 2
    assert reference.text.startswith(results[0].text) and results[0].completion_tokens == 8
    assert results[1].text == model.generate(PROMPT2, max_tokens=8, ignore_eos=True).text
    if model.backend == "hf":  # decoded together, left-padded
        assert [r.batch_size for r in results] == [2, 2]


def test_concurrent_async_requests_do_not_cross(model):
    """Many awaits at once: each caller gets the generation of its own prompt (batched where the
    backend batches), and two interleaved async streams keep their own text."""
    prompts = [PROMPT, PROMPT2, "class A:\n", "x = ["]
    config = GenerationConfig(max_tokens=6, ignore_eos=True)
    alone = [model.generate(p, config).text for p in prompts]

    async def together():
        return await asyncio.gather(*(model.agenerate(p, config) for p in prompts))

    async def streams():
        async def collect(prompt):
            return "".join([chunk.text async for chunk in model.astream(prompt, config)])
        return await asyncio.gather(collect(PROMPT2), collect(PROMPT))

    results = asyncio.run(together())
    assert [r.text for r in results] == alone
    if model.backend == "hf":
        assert max(r.batch_size for r in results) > 1
    assert asyncio.run(streams()) == [alone[1], alone[0]]


def test_logprobs(model, reference):
    prompt = model.encode(PROMPT)
    seq = prompt + reference.token_ids
    out = model.logprobs([seq, seq[:5], seq])
    vocab = model.vocab_size
    assert [a.shape for a in out] == [(len(seq) - 1, vocab), (4, vocab), (len(seq) - 1, vocab)]
    assert all(a.dtype == np.float32 for a in out)
    np.testing.assert_allclose(np.exp(out[0]).sum(axis=-1), 1.0, atol=1e-3)
    np.testing.assert_allclose(out[1], out[0][:4], atol=1e-5)
    # The greedy tokens are the argmax of the scored rows (allowing a near-tie or two in 4-bit variants).
    picks = out[0][len(prompt) - 1:].argmax(axis=-1)
    agree = float(np.mean(picks == np.array(reference.token_ids)))
    assert agree >= 0.8, (agree, picks.tolist(), reference.token_ids)


def test_seeded_sampling_repeats(model):
    config = GenerationConfig(max_tokens=8, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    first = model.generate(PROMPT, config)
    assert first.completion_tokens == 8
    assert model.generate(PROMPT, config).text == first.text


def test_encode_decode_and_weights(model):
    ids = model.encode(PROMPT)
    assert ids and model.decode(ids) == PROMPT
    weights = model.weights_bytes()
    if model.backend != "openai":
        assert weights and weights > 100_000
    memory = model.memory()
    assert memory["rss_bytes"] > 0
    if model.backend == "mlx":
        assert memory["mlx_peak_bytes"] > 0


def test_chat_prompt(model):
    result = model.generate([{"role": "user", "content": "hi"}], max_tokens=4, ignore_eos=True)
    assert result.completion_tokens >= 1 and result.finish_reason in ("length", "eos")


def test_unload_then_generate_raises(model):
    # Runs last for each model: pytest keeps the definition order within a parametrised group.
    weights, loaded = model.weights_bytes(), rss_bytes()
    model.unload()
    released = loaded - rss_bytes()
    if model.backend != "openai":
        # The weights leave the process: RSS drops by at least 80% of what they take (measured:
        # hf fp32 24.7 MiB for 23.0 MiB of weights; the one-time costs of a first load stay).
        assert released >= 0.8 * weights, (released, weights, model.rss_before_load)
    model.unload()  # safe twice
    with pytest.raises(ToolkitError, match="unloaded"):
        model.generate(PROMPT, max_tokens=2)
    assert "unloaded" in repr(model)


# --- across backends ------------------------------------------------------------------------------

@_needs("llamacpp", "mlx")
def test_cross_backend_greedy_ids_match():
    """The same fp32 weights decode to the same greedy ids on transformers, llama.cpp and mlx-lm."""
    targets = {"hf": (BASE, "float32"), "llamacpp": (tiny("gguf-f32", progress=False), "auto"),
               "mlx": (BASE, "auto")}
    ids: dict[str, list[int]] = {}
    chats: dict[str, list[int]] = {}
    prompt_ids = None
    for backend, (path, dtype) in targets.items():
        with load_target(LoadTarget(path=Path(path), backend=backend, dtype=dtype)) as loaded:
            prompt_ids = prompt_ids or loaded.encode(PROMPT)
            assert loaded.encode(PROMPT) == prompt_ids, backend  # same tokenizer everywhere
            chats[backend] = loaded.apply_chat_template([{"role": "user", "content": "hi"}])
            ids[backend] = loaded.generate(prompt_ids, max_tokens=N, ignore_eos=True).token_ids
    assert chats["hf"] == chats["mlx"] == chats["llamacpp"], chats  # the GGUF's template renders the same
    assert ids["hf"] == ids["mlx"], ids
    assert ids["hf"] == ids["llamacpp"], ids


@_needs("llamacpp")
def test_llamacpp_greedy_pick_is_llama_cpps_own_greedy():
    """toolkit's greedy pick (the argmax of the logits in place) gives the ids of llama-cpp-python's own
    ``Llama.generate`` at temperature 0 (llama.cpp's greedy sampler), across a second prompt that
    shares no prefix and a repeat of the first (the context's prefix reuse)."""
    with load_target(LoadTarget(path=tiny("gguf-q4_k_m", progress=False), backend="llamacpp")) as loaded:
        for prompt in (PROMPT, PROMPT2, PROMPT):
            ids = loaded.encode(prompt)
            ours = loaded.generate(ids, max_tokens=24, ignore_eos=True).token_ids
            theirs: list[int] = []
            for token in loaded.llama.generate(ids, temp=0.0, reset=True):
                theirs.append(int(token))
                if len(theirs) == len(ours):
                    break
            assert ours == theirs, (prompt, ours, theirs)


@_needs("llamacpp")
def test_llamacpp_runs_on_its_own_threadpools():
    """The context gets persistent ggml threadpools, as llama-bench's (one for decoding, one for prompts
    when the counts differ), generates what llama.cpp's own per-graph threadpool does, and frees them
    with the model."""
    import llama_cpp

    with load_target(LoadTarget(path=tiny("gguf-q4_k_m", progress=False), backend="llamacpp",
                                options={"n_threads": 1, "n_threads_batch": 2})) as loaded:
        assert len(loaded._pools) == 2 and all(loaded._pools)
        ids = loaded.encode(PROMPT)
        pooled = loaded.generate(ids, max_tokens=16, ignore_eos=True).token_ids
        lib = llama_cpp.llama_cpp._lib
        lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
        lib.llama_detach_threadpool(loaded.llama.ctx)
        loaded.llama.reset()
        assert loaded.generate(ids, max_tokens=16, ignore_eos=True).token_ids == pooled
    assert loaded._pools == []


# --- errors ---------------------------------------------------------------------------------------

@_needs("mlx", "llamacpp")
def test_wrong_file_kind_names_the_right_backend(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(InvalidModel, match="llamacpp"):
        load_target(LoadTarget(path=gguf, backend="mlx"))
    with pytest.raises(InvalidModel, match="folder"):
        load_target(LoadTarget(path=BASE, backend="llamacpp"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(InvalidModel, match="not a GGUF"):
        load_target(LoadTarget(path=bad, backend="llamacpp"))


def test_openai_unreachable_server_hides_the_key():
    secret = "sk-test-secret-123"
    with pytest.raises(ToolkitError, match="cannot reach") as info:
        load_target(LoadTarget(path=Path("m"), backend="openai",
                               options={"base_url": "http://127.0.0.1:9/v1", "api_key": secret, "timeout": 2}))
    assert secret not in str(info.value)


@_needs("llamacpp", "server")
def test_openai_key_never_shown(server):
    secret = "sk-test-secret-456"
    loaded = load_target(LoadTarget(path=Path("tiny-f16"), backend="openai",
                                    options={"base_url": server, "api_key": secret, "vocab_size": 4096}))
    assert secret not in repr(loaded) and secret not in str(vars(loaded))
    from toolkit.measuring.bench import bench

    row = bench(loaded, prompt_tokens=8, new_tokens=4, repeats=1, warmup=0).to_dict()  # what results files hold
    assert secret not in json.dumps(row, default=str)
    with pytest.raises(ToolkitError, match="does not serve"):
        load_target(LoadTarget(path=Path("nope"), backend="openai", options={"base_url": server}))
