"""Random-initialised models of published architectures (toolkit.builtin.architectures).

Fast: the stored configs are the published ones, depth changes only the depth, the cache key, and
llama.cpp's log of an iSWA model (two KV caches) is summed. Slow (one real-shape build, ~1 min):
Qwen2.5-0.5B with 1 layer, its folder and GGUF inspected, the weights identical over two builds, and
the plan's llama.cpp buffers equal to the engine's dry run for its shapes (the tiny model's variants
are checked the same way in tests/test_engine_memory.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolkit.builtin import architectures as A

FIXTURES = Path(__file__).parent / "fixtures" / "configs"
MiB = 2**20
# the same published configs, transcribed independently as test fixtures
SAME_AS_FIXTURE = {"qwen2.5-0.5b": "qwen2.5-0.5b", "phi-3-mini-4k": "phi-3-mini-4k",
                   "qwen1.5-moe-a2.7b": "qwen1.5-moe-a2.7b", "deepseek-v2-lite": "deepseek-v2-lite"}
# (layers, hidden, heads, KV heads, head_dim, vocab, tied) of the published models
PUBLISHED = {
    "llama-3.2-1b": (16, 2048, 32, 8, 64, 128256, True),
    "qwen2.5-0.5b": (24, 896, 14, 2, 64, 151936, True),
    "qwen2.5-1.5b": (28, 1536, 12, 2, 128, 151936, True),
    "gemma-3-1b": (26, 1152, 4, 1, 256, 262144, True),
    "phi-3-mini-4k": (32, 3072, 32, 32, 96, 32064, False),
    "qwen1.5-moe-a2.7b": (24, 2048, 16, 16, 128, 151936, False),
    "deepseek-v2-lite": (27, 2048, 16, 16, 128, 102400, False),
}


def pad256(n: int) -> int:
    return -(-n // 256) * 256


def kv_formula_bytes(n_layers: int, n_kv_heads: int, head_dim: int, n_ctx: int) -> int:
    """llama.cpp's KV cache for a plain (non-SWA) model with f16 K and V, one sequence: K and V of
    row_size(f16, head_dim * n_kv_heads) bytes per cell, n_ctx padded to 256 cells, every layer."""
    return n_layers * 2 * (2 * head_dim * n_kv_heads) * pad256(n_ctx)


def test_every_record_names_its_source_and_has_the_published_shapes():
    assert sorted(PUBLISHED) == A.names()
    for name, (layers, hidden, heads, kv, head_dim, vocab, tied) in PUBLISHED.items():
        s = A.spec(name)
        assert s["name"] == name and "huggingface.co" in s["source"] and s["comment"]
        c = s["config"]  # Gemma 3 configs omit tie_word_embeddings: transformers defaults it to true
        got_head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        if c.get("model_type") == "deepseek_v2":
            got_head_dim = c["v_head_dim"]
        assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"],
                got_head_dim, c["vocab_size"], c.get("tie_word_embeddings", c["model_type"].startswith("gemma"))) == \
            (layers, hidden, heads, kv, head_dim, vocab, tied), name
    gemma = A.published_config("gemma-3-1b")
    assert (gemma["sliding_window"], gemma["sliding_window_pattern"]) == (512, 6)


@pytest.mark.parametrize("name, fixture", sorted(SAME_AS_FIXTURE.items()))
def test_the_stored_config_is_the_published_one(name, fixture):
    published = json.loads((FIXTURES / f"{fixture}.config.json").read_text())
    for key in A.spec(name).get("dropped_keys", []):
        published.pop(key)
    assert A.published_config(name) == published


@pytest.mark.parametrize("name", A.names())
def test_a_depth_changes_only_the_depth(name):
    published = A.published_config(name)
    cfg = A.config_for(name, layers=1)
    assert cfg["num_hidden_layers"] == 1
    assert {k: v for k, v in cfg.items() if k != "num_hidden_layers"} == \
        {k: v for k, v in published.items() if k != "num_hidden_layers"}
    assert A.config_for(name)["num_hidden_layers"] == A.default_layers(name)
    assert A.cache_key(name, 1) != A.cache_key(name, 2) and A.cache_key(name, 1) == A.cache_key(name, 1)
    assert A.cache_key(name, 1).startswith("L1-bf16-")


def test_default_depths_are_real_except_the_moe_models():
    for name in A.names():
        expected = 2 if name in ("qwen1.5-moe-a2.7b", "deepseek-v2-lite") else A.real_layers(name)
        assert A.default_layers(name) == expected


def test_bad_requests_are_refused():
    from toolkit.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match="unknown architecture"):
        A.build_random("llama-9000")
    with pytest.raises(InvalidSpec, match="unknown format"):
        A.build_random("qwen2.5-0.5b", layers=1, formats=("gguf-q2_k",))
    with pytest.raises(InvalidSpec, match="at least 1"):
        A.config_for("qwen2.5-0.5b", layers=0)


def test_log_parsing_sums_both_caches_of_an_iswa_model():
    pytest.importorskip("llama_cpp")
    from toolkit.backends.llamacpp import _LlamaLog

    log = _LlamaLog()
    log.lines = [  # Gemma-3-1B at 32k, swa_full=False: one cache for the global layers, one for the windowed
        "llama_kv_cache: size =  128.00 MiB ( 32768 cells,   4 layers,  1/1 seqs), K (f16):   64.00 MiB, V (f16):   64.00 MiB",
        "llama_kv_cache: size =   22.00 MiB (  1024 cells,  22 layers,  1/1 seqs), K (f16):   11.00 MiB, V (f16):   11.00 MiB",
        "sched_reserve:        CPU compute buffer size =   559.25 MiB",
        "llama_context:        CPU  output buffer size =     1.00 MiB",
        "load_tensors:   CPU_Mapped model buffer size =  1907.39 MiB",
    ]
    got = log.buffers()
    assert got["kv_bytes"] == 150 * MiB and got["kv_caches"] == [(32768, 4), (1024, 22)]
    assert (got["compute_bytes"], got["output_bytes"]) == (round(559.25 * MiB), MiB)
    assert got["model"] == {"CPU_Mapped": round(1907.39 * MiB)}


# --- one real-shape build -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen_1_layer(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TOOLKIT_CACHE")
    os.environ["TOOLKIT_CACHE"] = str(cache)
    try:
        yield A.build_random("qwen2.5-0.5b", layers=1, formats=("hf", "gguf-f16"), progress=False)
    finally:
        if old is None:
            os.environ.pop("TOOLKIT_CACHE")
        else:
            os.environ["TOOLKIT_CACHE"] = old


@pytest.mark.slow
def test_a_one_layer_build_has_the_published_shapes(qwen_1_layer):
    from toolkit.facts.model_info import inspect

    hf, gguf = qwen_1_layer["hf"], qwen_1_layer["gguf-f16"]
    assert json.loads((hf / "config.json").read_text()) == A.config_for("qwen2.5-0.5b", 1)
    assert str(hf).startswith(str(A.cache_root() / "random" / "qwen2.5-0.5b-L1-bf16-"))
    for info in (inspect(hf), inspect(gguf)):
        assert (info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads, info.head_dim,
                info.vocab_size, info.tied_embeddings) == (1, 896, 14, 2, 64, 151936, True), info.format
    tok = json.loads((hf / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) + len(tok["added_tokens"]) == 151936


@pytest.mark.slow
def test_two_builds_give_the_same_weights(qwen_1_layer):
    first = A.weights_sha256(qwen_1_layer["hf"])
    again = A.build_random("qwen2.5-0.5b", layers=1, formats=("hf",), rebuild=True, progress=False)
    assert A.weights_sha256(again["hf"]) == first


@pytest.mark.slow
def test_the_plan_of_a_real_shape_is_the_dry_runs_figure(qwen_1_layer):
    """Qwen2.5-0.5B's real widths (vocab 151936, 14/2 heads): the planner's KV and compute + output
    buffers are llama.cpp's own (its no_alloc dry run), and the KV is the closed form."""
    pytest.importorskip("llama_cpp")
    import toolkit
    from toolkit.backends.llamacpp import dry_run
    from toolkit.planning.llamacpp import model_buffers

    gguf = qwen_1_layer["gguf-f16"]
    for n_ctx in (2048, 8192):
        p = toolkit.plan(gguf, "cpu", backend="llamacpp", context=n_ctx)
        dry = dry_run(gguf, n_ctx=n_ctx, n_batch=p.settings["n_batch"], n_ubatch=p.settings["n_ubatch"])
        assert dry["kv_bytes"] == kv_formula_bytes(1, 2, 64, n_ctx) == p.memory.kv_cache_bytes
        engine = p.memory.engine_buffers  # what llama.cpp allocates; activation_bytes is what becomes resident
        assert engine["kv"] == dry["kv_bytes"]
        assert engine["output"] == pytest.approx(dry["output_bytes"], abs=0.005 * 2**20)  # logged as "0.58 MiB"
        assert engine["compute"] == pytest.approx(dry["compute_bytes"], rel=0.05)
        assert p.memory.activation_bytes <= engine["compute"] + engine["output"] + 2 * n_ctx * 512 * 14
    mapped, repacked = model_buffers(toolkit.inspect(gguf))
    assert repacked == 0  # f16 is never repacked
    assert mapped == pytest.approx(dry["tensor_bytes"], rel=1e-3)
