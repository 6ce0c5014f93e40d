"""The mlx plan against mlx itself: the KV cache mlx-lm allocates (MLA decompressed in deepseek_v2) and
the load's peak (``mx.get_peak_memory()`` in a fresh process), on small random models of published
architectures with the architecture builder's tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlx_lm")
pytest.importorskip("transformers")

import toolkit  # noqa: E402
from toolkit.builtin import architectures as A  # noqa: E402
from toolkit.facts.model_info import inspect  # noqa: E402
from toolkit.planning import memory as mem  # noqa: E402

# deepseek_v2's published config, scaled down: MLA (no q LoRA, 4 heads of 32 + 16 rope, values 32), layer 0
# dense, layer 1 with 4 routed experts; an untied vocabulary of 8192 makes the lm_head the largest weight
DEEPSEEK = {**A.published_config("deepseek-v2-lite"), "vocab_size": 8192, "hidden_size": 256,
            "intermediate_size": 512, "moe_intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2,
            "kv_lora_rank": 64, "qk_rope_head_dim": 16, "qk_nope_head_dim": 32, "v_head_dim": 32,
            "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
# Llama 3.2's, scaled down: its embedding is tied (read first, when nothing else is loaded)
LLAMA_TIED = {**A.published_config("llama-3.2-1b"), "vocab_size": 16384, "hidden_size": 256,
              "intermediate_size": 1024, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 64, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}


@pytest.fixture(scope="module")
def deepseek(tmp_path_factory):
    out = tmp_path_factory.mktemp("deepseek-v2-small")
    A._build_hf(DEEPSEEK, out)
    return out


@pytest.fixture(scope="module")
def llama_tied(tmp_path_factory):
    out = tmp_path_factory.mktemp("llama-tied")
    A._build_hf(LLAMA_TIED, out)
    return out


def test_mlx_caches_deepseek_v2_decompressed_as_planned(deepseek):
    """mlx-lm 0.32's deepseek_v2 caches keys and values per head, not the latent: the plan prices that."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    info = inspect(deepseek)
    assert not mem.caches_mla_latent(info, "mlx") and mem.caches_mla_latent(info, "llamacpp")
    with toolkit.load(deepseek, "mlx", dtype="float32", context=512) as loaded:
        cache = make_prompt_cache(loaded.model)
        loaded.model(mx.array([list(range(1, 257))]), cache=cache)  # 256 tokens: one of mlx-lm's cache steps
        held = sum(c.nbytes for c in cache)  # mlx-lm's own count of what each layer's cache holds
    assert held == mem.kv_cache_bytes(info, 256, 1, "float32", mla_latent=False)
    assert held == 256 * 2 * 4 * (32 + 16 + 32) * 4  # tokens x layers x heads x (nope + rope + v) x float32
    p = toolkit.plan(deepseek, "cpu", backend="mlx", context=256)
    assert p.memory.kv_cache_bytes == mem.kv_cache_bytes(info, 256, 1, p.kv_dtype, mla_latent=False)


LOAD_PEAK = """
import json, sys
import mlx.core as mx
import toolkit
with toolkit.load(sys.argv[1], "mlx", dtype="float32", context=256, quantization=sys.argv[2]) as m:
    print(json.dumps({"peak": mx.get_peak_memory(), "weights": m.weights_bytes()}))
"""


@pytest.mark.parametrize("model,quantization", [("deepseek", "none"), ("deepseek", "mlx-4bit"),
                                                ("llama_tied", "none")])
def test_mlx_load_peak_is_the_weights_plus_one_in_flight(model, quantization, request):
    """mlx's own peak over a float32 load of a bfloat16 checkpoint (quantized at load or not), in a fresh
    process: the planned weights plus the largest weight in flight."""
    folder = request.getfixturevalue(model)
    run = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(folder), quantization], capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    info = inspect(folder)
    planned_weights = mem.weights_bytes(info, quantization, "float32", backend="mlx")
    extra = mem.mlx_load_extras(info, quantization, "float32").get("in_flight", 0)
    assert extra > 0
    assert got["weights"] == pytest.approx(planned_weights, rel=0.02)
    assert got["peak"] == pytest.approx(planned_weights + extra, rel=0.03), (got, planned_weights, extra)


def test_no_conversion_no_load_extra(deepseek):
    info = inspect(deepseek)
    assert mem.mlx_load_extras(info, "none", "bfloat16") == {}  # loaded as stored: nothing in flight
    assert mem.mlx_load_extras(info, "none", "float32") == {"in_flight": 8192 * 256 * 2}  # the lm_head in bf16
    assert mem.mlx_load_extras(info, "mlx-4bit", "float32") == {"in_flight": 8192 * 256 * (2 + 4)}


def test_the_windowed_model_types_are_those_whose_mlx_lm_code_rotates():
    """MLX_WINDOWED against the installed mlx-lm's own model files: those that make a RotatingKVCache (llama.py
    only for configs with layer_types, left out on purpose), or delegate to one that does."""
    import mlx_lm.models

    folder = Path(mlx_lm.models.__file__).parent
    rotating = {f.stem for f in folder.glob("*.py") if "RotatingKVCache" in f.read_text()} - {"cache", "llama"}
    assert rotating <= set(mem.MLX_WINDOWED), sorted(rotating - set(mem.MLX_WINDOWED))
    for wrapper in set(mem.MLX_WINDOWED) - rotating:  # gemma3 -> gemma3_text, gemma4 -> gemma4_text
        assert f"{wrapper}_text" in rotating, wrapper


def test_mlx_keeps_phi3s_whole_context_where_transformers_keeps_the_window(tmp_path):
    from _modelfiles import make_folder

    phi3 = inspect(make_folder(tmp_path / "phi3", A.published_config("phi-3-mini-4k")))
    assert phi3.sliding_window == 2047
    full = mem.kv_bytes_per_token(phi3, "float32") * 4096
    assert mem.kv_cache_bytes(phi3, 4096, 1, "float32", backend="mlx") == full
    assert mem.kv_cache_bytes(phi3, 4096, 1, "float32", backend="hf") == full * 2047 // 4096
    gemma3 = inspect(make_folder(tmp_path / "gemma3", A.published_config("gemma-3-1b")))
    assert mem.kv_cache_bytes(gemma3, 8192, 1, "float32", backend="mlx") == \
        mem.kv_cache_bytes(gemma3, 8192, 1, "float32", backend="hf") < mem.kv_bytes_per_token(gemma3, "float32") * 8192


def test_mlx_prefill_hands_large_frees_back(llama_tied, monkeypatch):
    """The prefill (the first step only) runs inside ``large_frees_returned``, and the region is closed before
    the first token reaches the caller: decoding keeps malloc's heap (toolkit.facts.process has the why)."""
    from contextlib import contextmanager

    import toolkit.backends.mlx as backend

    events: list[str] = []

    @contextmanager
    def region():
        events.append("enter")
        yield
        events.append("exit")

    monkeypatch.setattr(backend, "large_frees_returned", region)
    with toolkit.load(llama_tied, "mlx", dtype="float32", context=256) as loaded:
        seen = [list(events) for _ in loaded.stream(list(range(300, 364)), max_tokens=4, ignore_eos=True)]
    assert len(seen) == 4 and all(s == ["enter", "exit"] for s in seen)
