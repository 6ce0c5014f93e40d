"""The memory one planned option needs at a given context: a candidate (backend, quantization,
dtypes, engine settings) priced by the backend's own accounting.

llama.cpp on a GGUF is priced buffer by buffer as the engine allocates them
(:mod:`toolkit.planning.llamacpp`); the other backends by the formulas of
:mod:`toolkit.planning.memory`. Each candidate also carries the engine settings a load must apply
for the estimate to hold (llama.cpp's KV types and flash attention, for instance).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from toolkit.facts.devices import Device
from toolkit.facts.model_info import ModelInfo
from toolkit.planning import llamacpp
from toolkit.planning import memory as mem
from toolkit.planning.result import MemoryBreakdown


@dataclass
class Candidate:
    """One way to run the model: what the planner prices, ranks and, when chosen, loads."""

    backend: str
    quantization: str
    dtype: str | None = None
    kv_dtype: str | None = None
    tensor_parallel: int = 1
    problem: str | None = None
    budget: int = 0
    settings: dict[str, Any] = field(default_factory=dict)  # engine settings the load applies


def llamacpp_settings(kv_dtype: str | None, context: int, batch: int) -> llamacpp.Settings:
    kv = llamacpp.KV_TYPES.get(mem.normalize_dtype(kv_dtype) or "float16", "f16")
    return llamacpp.Settings(n_ctx=context, type_k=kv, type_v=kv, n_seq_max=batch)


def engine_settings(c: Candidate, context: int, batch: int) -> dict[str, Any]:
    """The settings a load of ``c`` at ``context`` applies, as the backend's options take them."""
    if c.backend == "llamacpp":
        s = llamacpp_settings(c.kv_dtype, context, batch)
        settings: dict[str, Any] = {"n_batch": s.n_batch, "n_ubatch": s.n_ubatch}
        if s.type_k != "f16":
            settings.update(type_k=s.type_k, type_v=s.type_v)
        if s.flash_attn:
            settings["flash_attn"] = True
        return settings
    if c.backend == "vllm" and c.kv_dtype and c.kv_dtype.startswith("fp8"):
        return {"kv_cache_dtype": c.kv_dtype}
    return {}


def estimate(info: ModelInfo, device: Device, c: Candidate, context: int, batch: int) -> MemoryBreakdown:
    """The predicted memory of ``c`` at ``context`` tokens for ``batch`` sequences."""
    if c.backend == "llamacpp" and info.gguf:
        return _llamacpp(info, device, c, context, batch)
    w = mem.weights_bytes(info, c.quantization, c.dtype, backend=c.backend, device_kind=device.kind)
    latent = mem.caches_mla_latent(info, c.backend)
    kvt = mem.kv_bytes_per_token(info, c.kv_dtype, mla_latent=latent)
    kv = mem.kv_cache_bytes(info, context, batch, c.kv_dtype, mla_latent=latent, backend=c.backend)
    act = mem.activation_bytes(info, context, batch, c.dtype, c.backend, device_kind=device.kind)
    dev = device if c.backend in ("vllm", "hf") else replace(device, count=1) if device.kind != "cuda" else device
    ovh = mem.overhead_bytes(c.backend, dev, weights_bytes=w, quantization=c.quantization)
    if c.backend in ("hf", "mlx") and device.kind in ("cpu", "mps"):  # transformers' tokenizer grows with the vocabulary
        ovh += mem.HF_TOKENIZER_BYTES_PER_TOKEN * max(0, info.vocab_size - mem.HF_TINY_VOCAB)
    engine = None
    if c.backend == "mlx" and device.kind == "cpu":  # mlx allocates more than becomes resident (activation_bytes)
        allocated = mem.activation_bytes(info, context, batch, c.dtype, "mlx", device_kind="cpu", allocated=True)
        engine = {"model": w, "kv": kv, "compute": allocated, "output": 0}
    running = w + kv + act + ovh
    load = ovh + w + sum(load_extras(info, device, c).values())
    if load > running:
        return MemoryBreakdown(c.budget, w, kvt, kv, act, ovh, load, engine, load_peak_bytes=load)
    return MemoryBreakdown(c.budget, w, kvt, kv, act, ovh, running, engine)


def load_extras(info: ModelInfo, device: Device, c: Candidate) -> dict[str, int]:
    """What loading ``c`` holds besides the loaded weights until the load ends, by cause (hf on the CPU,
    mlx anywhere; see :func:`~toolkit.planning.memory.hf_load_extras`, :func:`~toolkit.planning.memory.mlx_load_extras`)."""
    if c.backend == "hf" and device.kind == "cpu":
        return mem.hf_load_extras(info, c.quantization, c.dtype)
    if c.backend == "mlx":
        return mem.mlx_load_extras(info, c.quantization, c.dtype)
    return {}


def _llamacpp(info: ModelInfo, device: Device, c: Candidate, context: int, batch: int) -> MemoryBreakdown:
    s = llamacpp_settings(c.kv_dtype, context, batch)
    cpu = device.kind == "cpu"
    b = llamacpp.buffers(info, s, repack=cpu)  # the AVX2 CPU backend repacks; GPU weights are plain copies
    weights = b.weights if cpu else info.checkpoint_bytes
    per_token = llamacpp.kv_bytes(info, llamacpp.Settings(n_ctx=256, type_k=s.type_k, type_v=s.type_v,
                                                          flash_attn=s.flash_attn, swa_full=True))[0] // 256
    ovh = mem.overhead_bytes("llamacpp", replace(device, count=1), weights_bytes=weights)
    if not cpu:  # device memory is taken when reserved
        act = b.compute + b.output
        return MemoryBreakdown(c.budget, weights, per_token, b.kv, act, ovh, weights + b.kv + act + ovh)
    # RAM: only the pages a generation writes are resident; llama.cpp's vocabulary tables grow with the vocab
    act = llamacpp.resident_compute_bytes(info, s) + b.output
    ovh += mem.LLAMACPP_VOCAB_BYTES_PER_TOKEN * info.gguf["n_vocab"]
    engine = {"model": b.weights, "kv": b.kv, "compute": b.compute, "output": b.output}
    return MemoryBreakdown(c.budget, weights, per_token, b.kv, act, ovh, weights + b.kv + act + ovh, engine)


def kv_candidates(backend: str, dtype: str | None, wanted: str | None, device_kind: str) -> list[str]:
    """KV cache dtypes to try for a backend, most precise first (just ``wanted`` when given)."""
    if wanted:
        return [mem.normalize_dtype(wanted)]
    if backend == "llamacpp":
        return ["float16", "q8_0", "q4_0"]  # llama.cpp's --cache-type-k/-v (quantized V needs flash attention)
    if backend == "vllm" and device_kind == "cuda":
        return [dtype or "bfloat16", "fp8"]  # vLLM --kv-cache-dtype fp8
    return [dtype or "bfloat16"]
