"""Memory formulas: weights per format, KV cache, activations and runtime overheads.

Pure functions of a ``ModelInfo`` and a few choices; no hardware access, no heavy imports. Every
constant names its source. Constants marked "to calibrate" are first estimates that the benchmark
will refine.
"""

from __future__ import annotations

from toolkit.facts.devices import Device
from toolkit.facts.model_info import ModelInfo
from toolkit.formats.safetensors import DTYPE_BYTES
from toolkit.units import MiB

DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPE_ALIASES = {"fp32": "float32", "f32": "float32", "float": "float32", "bf16": "bfloat16", "fp16": "float16",
                 "f16": "float16", "half": "float16", "auto": "auto"}
# KV cache element sizes: fp8 is vLLM's --kv-cache-dtype fp8 (1 byte); q8_0/q4_0 are llama.cpp's
# --cache-type-k/v, whose blocks are 34 and 18 bytes per 32 values (ggml-common.h).
KV_DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0,
                  "q8_0": 34 / 32, "q4_0": 18 / 32}

# bitsandbytes LLM.int8 (bitsandbytes/nn/modules.py Int8Params): int8 weight + one fp32 absmax
# (SCB) per output row -> 8 + 32/in_features bits per weight.
BNB_INT8_BITS = 8.0
# bitsandbytes 4-bit (nf4/fp4), blocksize 64 (bnb.functional.quantize_4bit default):
#   4 bits + fp32 absmax per 64 weights = 4 + 32/64 = 4.5 bits/weight;
#   with double quant the absmax is stored as 8 bits per 64 weights plus one fp32 per 256 blocks:
#   4 + 8/64 + 32/(64*256) = 4.127 bits/weight. transformers' BitsAndBytesConfig defaults to
#   bnb_4bit_use_double_quant=False, but toolkit's hf backend loads bnb-4bit with double quant
#   (toolkit/backends/hf.py), so planned bnb-4bit weights use 4.127.
BNB_4BIT_DOUBLE_QUANT = True
BNB_4BIT_BLOCK = 64
BNB_4BIT_BITS = 4 + 32 / BNB_4BIT_BLOCK
BNB_4BIT_DQ_BITS = 4 + 8 / BNB_4BIT_BLOCK + 32 / (BNB_4BIT_BLOCK * 256)
# GPTQ/AWQ group size default (AutoGPTQ/AutoAWQ/transformers GPTQConfig default group_size=128).
DEFAULT_GROUP_SIZE = 128
# MLX affine quantization: mlx.core.quantize default group_size=64, one fp16 scale and one fp16
# bias per group -> bits + 32/64 bits/weight.
MLX_GROUP_SIZE = 64
# GGUF: exact bits/weight of the block types (ggml-common.h block sizes: bytes*8/weights), and
# approximate whole-model averages of llama.cpp's mixes (tools/quantize README table of sizes for
# Llama-2-7B / Llama-3-8B: mixes keep some tensors, e.g. output and attn_v, at higher types).
GGUF_BITS = {
    "f32": 32.0, "f16": 16.0, "bf16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "q4_1": 5.0, "q5_0": 5.5, "q5_1": 6.0,
    "q2_k": 2.625, "q3_k": 3.4375, "q4_k": 4.5, "q5_k": 5.5, "q6_k": 6.5625, "iq4_nl": 4.5, "iq4_xs": 4.25,
    # mixes (approximate, from llama.cpp's quantize README: size / params)
    "q2_k_s": 2.97, "q3_k_s": 3.50, "q3_k_m": 3.91, "q3_k_l": 4.27, "q4_k_s": 4.58, "q4_k_m": 4.89,
    "q5_k_s": 5.54, "q5_k_m": 5.70,
}
# Lossiness ranking is by effective bits; these are the nominal bits of the toolkit names.
NOMINAL_BITS = {"none": 16.0, "bnb-8bit": 8.0, "bnb-4bit": 4.0, "gptq-8bit": 8.0, "gptq-4bit": 4.0,
                "awq-4bit": 4.0, "ct-gptq-4bit": 4.0, "ct-awq-4bit": 4.0, "mlx-8bit": 8.0, "mlx-4bit": 4.0,
                "mlx-6bit": 6.0, "mlx-3bit": 3.0}

# Runtime overheads ----------------------------------------------------------------------------
# CUDA context + cuBLAS/cuDNN workspaces: PyTorch's CUDA semantics notes put the context at
# "hundreds of MB" (300-500 MiB on recent GPUs with lazy module loading, CUDA >= 11.7). To calibrate.
CUDA_CONTEXT_BYTES = 500 * MiB
# PyTorch caching allocator keeps freed blocks and rounds allocations (to 512 B / 2 MiB segments):
# reserve-vs-allocated slack of a few percent of the live tensors. To calibrate.
TORCH_ALLOCATOR_SLACK = 0.05
# vLLM: --gpu-memory-utilization default 0.9 (vllm/config EngineArgs); vLLM pre-allocates that
# fraction of *total* GPU memory (other processes' usage included) for weights+activations+KV.
VLLM_GPU_MEMORY_UTILIZATION = 0.9
# vLLM CUDA graph capture: the "Graph capturing finished ... took 0.3-0.6 GiB" log line for 7-8B
# models at default capture sizes. To calibrate.
VLLM_CUDA_GRAPH_BYTES = 512 * MiB
# vLLM chunked prefill: max_num_batched_tokens default 8192 in the V1 engine (vllm/config).
VLLM_MAX_BATCHED_TOKENS = 8192
VLLM_BLOCK_SIZE = 16  # vLLM's default KV cache block size (tokens per block)
# llama.cpp: physical micro-batch n_ubatch default 512 (common/common.h); compute buffers scale
# with it. The CUDA backend still needs a CUDA context (~300 MiB).
LLAMACPP_UBATCH = 512
LLAMACPP_CUDA_CONTEXT_BYTES = 300 * MiB
# mlx-lm prefill_step_size default 2048 (mlx_lm/generate.py); activations scale with it.
MLX_PREFILL_STEP = 2048
# CPU process RSS of the runtime itself: the whole process at its peak (python + toolkit + the
# backend's libraries imported + first-forward kernel/thread-pool buffers), minus the
# model-size-dependent terms (weights, KV cache, activations), which stay formulas below.
# All CPU runtime figures: measured on this machine by benchmarks/planner_accuracy.py on
# 2026-12-02 (python 3.11.7, torch 2.13.0 CPU, transformers 5.17.0, bitsandbytes 0.50.2, gptqmodel
# 7.6.0, compressed-tensors 0.19.0, llama-cpp-python 0.3.36, mlx 0.32.4 cpu, mlx-lm 0.32.2; tiny
# ~6M-param Llama, a 2032-token prompt + 16 new tokens, peak VmHWM of a fresh process), rounded up
# by ~2 % so that the prediction errs above the measurement. The same script measured the hf figure
# 100 MiB higher in an earlier environment of the same versions (the libraries' transitive
# dependencies differed): runtime constants hold for one environment, which the README says.
# hf, fp32, no quantization: peak 446.0 MiB - weights 23.0 - KV 8.0 - activations 24.0 = 391 MiB.
CPU_RUNTIME_HF_BYTES = 400 * MiB
# Extra on top of CPU_RUNTIME_HF_BYTES per quantization library (import + its CPU kernels):
# bitsandbytes: bnb-8bit peak minus its weights/KV/activations 488 MiB (+97), bnb-4bit 466 (+75);
# the int8 CPU matmul path adds transient buffers during the prefill.
CPU_RUNTIME_BNB_8BIT_BYTES = 100 * MiB
CPU_RUNTIME_BNB_4BIT_BYTES = 78 * MiB
# gptqmodel (GPTQ and AWQ checkpoints load through it; it imports optimum, bitsandbytes and more):
# gptq-4bit 605 MiB, awq-4bit 598 MiB of runtime: +214 / +207 over hf.
CPU_RUNTIME_GPTQMODEL_BYTES = 215 * MiB
# compressed-tensors (ct-gptq-4bit / ct-awq-4bit, 420 / 418 MiB of runtime): +29 / +27 over hf.
CPU_RUNTIME_COMPRESSED_TENSORS_BYTES = 30 * MiB
# `import llama_cpp` + ggml CPU backend + python/toolkit: peak 107.7/102.6/102.2 MiB for the tiny model's
# gguf-f16/q8_0/q4_k_m minus what the plan counts as llama.cpp's resident memory (model span, KV f16,
# the compute pages a generation writes, output): 61 MiB (benchmarks/planner_accuracy.py, 2026-12-02).
CPU_RUNTIME_LLAMACPP_BYTES = 61 * MiB
# vLLM on CPU imports torch + vllm: ~ 1 GB RSS (estimate; not measured by planner_accuracy.py).
CPU_RUNTIME_VLLM_BYTES = 1000 * 10**6
# mlx[cpu] on Linux: mlx_lm imports transformers (tokenizers), which imports torch when installed,
# so the runtime is close to hf's: mlx none 499.8 MiB / mlx-4bit 481.3 MiB peak minus weights, KV
# and 101 MiB of activations (the MLP's 32 MiB and the 69 MiB of attention scores mlx[cpu]
# materialises, see MLX_CPU_SCORES_COPIES): 368 / 369 MiB.
CPU_RUNTIME_MLX_BYTES = 376 * MiB
# llama.cpp's heap for the vocabulary (token texts, scores, the BPE merge table), per vocabulary entry:
# RSS after Llama() beyond the mapped file, minus the import, on four architectures (vocab 32k-262k):
# 65-390 B/entry; the middle of that range (benchmarks/planner_accuracy.py --suite architectures).
LLAMACPP_VOCAB_BYTES_PER_TOKEN = 250
# transformers' tokenizer (the Rust tokenizers object: vocabulary, merges, added tokens) per vocabulary
# entry beyond the built-in tiny model's 4096 (already in CPU_RUNTIME_HF_BYTES): RSS of
# AutoTokenizer.from_pretrained in a fresh process, 780 B/entry for the BPE vocabularies of Qwen2.5,
# Llama 3.2 and Gemma 3 (151936-262144 entries), 1150-1220 for DeepSeek-V2 and Phi-3; 600 is what
# the whole-process peaks of the architectures suite leave room for.
HF_TOKENIZER_BYTES_PER_TOKEN = 600
HF_TINY_VOCAB = 4096
# `import mlx, mlx_lm` on Apple silicon ~ 200 MB (estimate; to calibrate on a Mac).
MLX_RUNTIME_BYTES = 200 * 10**6

def normalize_dtype(dtype: str | None) -> str | None:
    """Map ``"bf16"``/``"fp16"``/``"fp32"`` and friends to torch-style names."""
    if dtype is None:
        return None
    d = str(dtype).lower().replace("torch.", "")
    return DTYPE_ALIASES.get(d, d)


def bits_per_weight(quantization: str, *, group_size: int | None = None, dtype: str = "bfloat16",
                    in_features: int = 4096, out_features: int = 4096, double_quant: bool = False) -> float:
    """Effective stored bits per quantized weight, metadata included.

    Args:
        quantization: A toolkit quantization name (``none``, ``bnb-4bit``, ``gptq-4bit``, ``gguf-q4_k_m``...).
        group_size: GPTQ/AWQ/MLX group size (defaults 128 / 128 / 64).
        dtype: Storage dtype for ``none``.
        in_features: Typical input width (for per-row metadata).
        out_features: Typical output width (for GPTQ's g_idx, one int32 per input row).
        double_quant: bnb 4-bit with double quantization.

    Returns:
        Bits per weight.
    """
    q = quantization.lower()
    if q == "none":
        return 8.0 * DTYPES.get(normalize_dtype(dtype) or "bfloat16", 2)
    if q == "bnb-8bit":
        return BNB_INT8_BITS + 32 / in_features
    if q == "bnb-4bit":
        return BNB_4BIT_DQ_BITS if double_quant else BNB_4BIT_BITS
    if q.startswith(("gptq-", "awq-", "ct-gptq-", "ct-awq-")):
        bits = int(q.rsplit("-", 1)[1].removesuffix("bit"))
        g = group_size or DEFAULT_GROUP_SIZE
        # packed weight + fp16 scale per group per column + packed zero point per group per column
        b = bits + 16 / g + bits / g
        if q.startswith(("gptq-", "ct-gptq-")):
            b += 32 / out_features  # g_idx: one int32 per input row
        return b
    if q.startswith("mlx-"):
        # one scale and one bias per group, in the dtype the weights were quantized from (fp16/bf16: 32 bits)
        bits = int(q[4:].removesuffix("bit"))
        return bits + 2 * 8 * DTYPES.get(normalize_dtype(dtype) or "bfloat16", 2) / (group_size or MLX_GROUP_SIZE)
    if q.startswith("gguf-"):
        name = q[5:]
        if name in GGUF_BITS:
            return GGUF_BITS[name]
    raise ValueError(f"unknown quantization {quantization!r}")


def lossiness_bits(quantization: str) -> float:
    """Nominal bits for ranking (higher = less lossy)."""
    q = quantization.lower()
    if q.startswith("gguf-"):
        return GGUF_BITS.get(q[5:], 4.0)
    return NOMINAL_BITS.get(q, 4.0)


def _qcfg_group(info: ModelInfo) -> int | None:
    q = info.quantization_config or {}
    g = q.get("group_size", q.get("q_group_size"))
    return int(g) if g and int(g) > 0 else None


def weights_bytes(info: ModelInfo, quantization: str = "none", dtype: str | None = None, *,
                  backend: str | None = None, device_kind: str | None = None) -> int:
    """Resident bytes of the weights in a given format.

    Which parts stay in 16-bit: bnb (transformers keeps ``lm_head`` unconverted via
    ``get_keys_to_not_convert`` and never converts ``nn.Embedding``), GPTQ/AWQ (only decoder
    ``nn.Linear`` layers are quantized; embeddings and lm_head stay fp16), compressed-tensors
    (recipes ignore ``lm_head``). MLX quantizes embeddings and lm_head too (``nn.quantize`` covers
    Linear and Embedding). GGUF bits are whole-file averages. Norms and biases always stay 16-bit.

    Args:
        info: The model.
        quantization: Target format; the model's own prequantized format returns its checkpoint size.
        dtype: Dtype of the unquantized parts (default: the checkpoint's dtype).
        backend, device_kind: Where it runs. compressed-tensors checkpoints (``ct-*``) in hf on the
            CPU are decompressed to dense weights in ``dtype``: transformers' compressed-tensors
            integration keeps them packed (``run_compressed``) only where compressed kernels exist
            (CUDA), and decompresses otherwise (measured: 12.1 MB resident for the tiny model's
            packed checkpoint, i.e. params x 2 bytes in fp16).

    Returns:
        Bytes. For ``none`` in the checkpoint's own dtype this is exactly ``info.checkpoint_bytes``.
    """
    q = quantization.lower()
    ckpt_dtype = normalize_dtype(info.checkpoint_dtype)
    dtype = normalize_dtype(dtype) or (ckpt_dtype if ckpt_dtype in DTYPES else "bfloat16")
    if q.startswith("ct-") and backend == "hf" and device_kind == "cpu":
        return info.params * DTYPES.get(dtype, 2)  # decompressed to dense (see the docstring)
    if q == info.quantization and info.checkpoint_bytes and (q != "none" or dtype == ckpt_dtype):
        return int(info.checkpoint_bytes)
    half = DTYPES.get(dtype, 2)
    if q == "none":
        if info.quantization == "none" and info.checkpoint_bytes and ckpt_dtype in DTYPE_BYTES:
            # scale the exact checkpoint size (keeps any stored buffers in the count)
            return int(info.checkpoint_bytes * half // DTYPE_BYTES[ckpt_dtype])
        return info.params * half
    if q.startswith("gguf-"):
        return int(info.params * bits_per_weight(q) / 8)
    linear = info.linear_params or max(0, info.params - info.embedding_params - info.lm_head_params)
    rest = max(0, info.params - linear)
    in_f = info.hidden_size or 4096
    out_f = info.intermediate_size or in_f
    if q.startswith("mlx-"):
        # everything with a matrix is quantized; norms (~2*h per layer) stay in the dtype, which the scales
        # and biases are in too (toolkit's mlx backend casts before it quantizes: float32 on the CPU)
        norms = 2 * info.hidden_size * info.num_layers + info.hidden_size
        quantized = max(0, info.params - norms)
        return int(quantized * bits_per_weight(q, group_size=_qcfg_group(info), dtype=dtype) / 8) + norms * half
    bpw = bits_per_weight(q, group_size=_qcfg_group(info), in_features=in_f, out_features=out_f,
                          double_quant=BNB_4BIT_DOUBLE_QUANT)
    return int(linear * bpw / 8) + rest * half


# transformers model types whose MLP projects gate and up with one matrix (gate_up_proj), then splits it
HF_FUSED_GATE_UP = ("phi3", "phi4_multimodal", "glm", "glm4", "glm4v", "zamba2")  # modeling_*.py, transformers 5.17
# transformers 5.17 models whose MLA attention caches decompressed keys and values (their modeling files
# call past_key_values.update(key_states, value_states)); the other MLA models cache the latent.
HF_MLA_DECOMPRESSED = ("deepseek_v32", "glm_moe_dsa", "glm5_next", "hy_v4", "axk2")
# mlx-lm 0.32.2 models whose attention caches decompressed keys (heads x (qk_nope + qk_rope)) and values
# (heads x v_head_dim): models/deepseek_v2.py, minicpm3.py and youtu_llm.py call
# cache.update_and_fetch(keys, values); its other MLA models cache (kv_latent, k_pe). Measured on
# DeepSeek-V2-Lite with 2 layers at 2k tokens: mlx's prompt cache held 80 MiB, the decompressed size
# (the latent would be 9 MiB).
MLX_MLA_DECOMPRESSED = ("deepseek_v2", "minicpm3", "youtu_llm")


def caches_mla_latent(info: ModelInfo, backend: str) -> bool:
    """Whether ``backend`` caches MLA's compressed latent (vLLM, llama.cpp, SGLang and most transformers
    and mlx-lm models) rather than decompressed keys and values (:data:`HF_MLA_DECOMPRESSED`,
    :data:`MLX_MLA_DECOMPRESSED`)."""
    decompressed = {"hf": HF_MLA_DECOMPRESSED, "mlx": MLX_MLA_DECOMPRESSED}.get(backend, ())
    return info.model_type not in decompressed


# transformers 5.17 model types whose checkpoints hold one tensor per expert, stacked at load into one
# 3D parameter per projection (conversion_mapping.py: the mixtral and qwen2_moe patterns and the model
# types mapped to them)
HF_STACKED_EXPERTS = ("mixtral", "minimax", "minimax_m2", "qwen2_moe", "afmoe", "deepseek_v2", "deepseek_v3",
                      "deepseek_v32", "dots1", "ernie4_5_moe", "glm4_moe", "glm4_moe_lite", "glm_moe_dsa",
                      "glm4v_moe", "longcat_flash", "solar_open", "mellum", "qwen3_moe", "qwen3_omni_moe",
                      "qwen3_next", "hunyuan_v1_moe", "flex_olmo", "olmoe", "exaone_moe", "cohere2_moe")


def hf_load_extras(info: ModelInfo, quantization: str, dtype: str | None) -> dict[str, int]:
    """What an hf load on the CPU holds besides the loaded weights while it loads, by cause
    (``mapped``, ``stacked``; zeros are left out).

    * Converting an unquantized checkpoint to another dtype (bf16 -> float32, the CPU default): the
      checkpoint's mapped pages stay resident until the load ends, next to the converted copy
      (measured on Qwen2.5-0.5B with 2 layers: load peak 1402 MiB = runtime + 633 MiB float32 + 316
      MiB bf16 file, 1093 MiB after the load). Loaded in its own dtype, the weights *are* those pages.
    * Stacking experts (:data:`HF_STACKED_EXPERTS`): one MoE layer's gate and up experts, each
      stacked into a tensor of their own, live together while they are concatenated into the fused
      gate_up parameter: ``2 x experts x moe_intermediate x hidden`` in the load dtype (the hf
      backend loads with freed blocks returned to the OS, ``large_frees_returned``; measured on
      Qwen1.5-MoE-A2.7B with 2 layers in float32: load peak 11775 MiB against 10575 without this
      term, 11895 with it).
    """
    if info.quantization != "none" or (quantization or "none") != "none":
        return {}
    ckpt_dtype = normalize_dtype(info.checkpoint_dtype)
    mapped = int(info.checkpoint_bytes) if info.checkpoint_bytes and normalize_dtype(dtype) not in (
        None, ckpt_dtype) else 0
    stacked = 0
    if info.model_type in HF_STACKED_EXPERTS and info.num_experts and info.moe_layers:
        b = DTYPES.get(normalize_dtype(dtype) or ckpt_dtype or "bfloat16", 2)
        inter = info.moe_intermediate_size or info.intermediate_size or 4 * info.hidden_size
        stacked = 2 * info.num_experts * inter * info.hidden_size * b
    return {k: v for k, v in (("mapped", mapped), ("stacked", stacked)) if v}


def mlx_load_extras(info: ModelInfo, quantization: str, dtype: str | None) -> dict[str, int]:
    """What an mlx load holds besides the loaded weights while it loads (``in_flight``; empty when nothing).

    toolkit's mlx backend loads lazily and evaluates one weight at a time (``toolkit/backends/mlx.py``
    ``_materialize``): the weight in flight is alive in the checkpoint's dtype next to its cast copy and,
    when quantized at load, its cast copy next to the quantized one, until that weight is done. The
    largest weight sets the peak: the embedding or untied ``lm_head`` (vocab x hidden), a stacked expert
    projection (mlx-lm's ``sanitize`` stacks each layer's experts: experts x moe_intermediate x hidden) or
    an MLP projection. A tied embedding is read first, when nothing else is loaded yet, so it counts only
    where its two copies exceed all the weights plus the next largest. Measured with ``mx.get_peak_memory()``
    after a float32 load of bfloat16 checkpoints (2 layers, random weights): Qwen1.5-MoE-A2.7B 7676 MB =
    weights 7054 + lm_head 622 in bfloat16; DeepSeek-V2-Lite 4761 = 4341 + 419; Llama-3.2-1B (tied)
    1576 = its embedding in bfloat16 + float32; Qwen1.5-MoE quantized to mlx-4bit at load 2969 = 1102 +
    the lm_head in bfloat16 and float32 (1867).
    """
    if info.quantization != "none":
        return {}
    ckpt = normalize_dtype(info.checkpoint_dtype)
    ckpt_b = DTYPES.get(ckpt or "", 2)
    b = DTYPES.get(normalize_dtype(dtype) or ckpt or "bfloat16", ckpt_b)
    cast = b != ckpt_b
    quantize = (quantization or "none").startswith("mlx-")
    if not (cast or quantize):
        return {}
    per_param = ckpt_b + (b if cast and quantize else 0)  # the copies alive while one weight is in flight
    h = info.hidden_size or 0
    others = [(info.intermediate_size or 0) * h]
    if info.num_experts and info.moe_layers:
        others.append(info.num_experts * (info.moe_intermediate_size or info.intermediate_size or 0) * h)
    embedding = info.vocab_size * h
    if info.tied_embeddings:
        first = embedding * (ckpt_b + b)  # nothing else loaded yet
        weights = weights_bytes(info, quantization, dtype, backend="mlx")
        extra = max(max(others) * per_param, first - weights)
    else:
        extra = max(others + [embedding]) * per_param
    return {"in_flight": int(extra)} if extra > 0 else {}


def kv_bytes_per_token(info: ModelInfo, kv_dtype: str = "bfloat16", *, mla_latent: bool = True) -> int:
    """KV cache bytes per token for one sequence, every layer counted.

    GQA/MQA use the KV head count. MLA caches the compressed latent (``kv_lora_rank`` +
    ``qk_rope_head_dim`` per layer) in vLLM/llama.cpp/SGLang and in most of transformers 5.17's MLA
    models (``past_key_values.update(k_nope, k_pe)`` in deepseek_v2/v3, minicpm3, kimi_linear, ...);
    ``mla_latent=False`` prices decompressed keys and values (:data:`HF_MLA_DECOMPRESSED`).
    """
    b = KV_DTYPE_BYTES[normalize_dtype(kv_dtype) or "bfloat16"]
    if info.attention == "MLA" and info.kv_lora_rank:
        rope = info.qk_rope_head_dim or 64
        if mla_latent:
            return int(info.num_layers * (info.kv_lora_rank + rope) * b)
        nope_plus_v = (info.head_dim or 128) + (info.v_head_dim or 128)
        return int(info.num_layers * info.num_heads * (nope_plus_v + rope) * b)
    return int(info.num_layers * 2 * info.num_kv_heads * info.head_dim * b)


# mlx-lm 0.32.2 model types whose make_cache gives the windowed layers a RotatingKVCache (the model files
# that use it, and the multimodal wrappers of gemma3/gemma4 that delegate to them). Every other mlx-lm
# model keeps the whole context in a KVCache whatever its config's sliding_window says: phi3, gemma2,
# mistral (llama.py keeps a window only for configs with layer_types, left out here: the plan then
# errs high). Measured on Phi-3-mini-4k (window 2047) at 4k: mlx held 4096 tokens, transformers 2047.
MLX_WINDOWED = ("gemma3", "gemma3_text", "gemma3n", "gemma4", "gemma4_text", "cohere2", "gpt_oss", "olmo3", "exaone4",
                "exaone_moe", "baichuan_m1", "mimo_v2_flash", "plamo2", "plamo3", "afmoe", "step3p5", "ministral3",
                "recurrent_gemma", "mellum", "laguna", "gear", "muse_glimmer", "muse_spark", "spark2_5",
                "iquestloopcoder")


def windowed_layers(info: ModelInfo, backend: str = "hf") -> int:
    """The layers whose KV cache ``backend`` caps at the model's sliding window (transformers honours every
    config's window; mlx-lm only in :data:`MLX_WINDOWED`; llama.cpp is priced from the GGUF elsewhere)."""
    if not info.sliding_window or (backend == "mlx" and info.model_type not in MLX_WINDOWED):
        return 0
    return info.num_sliding_layers


def kv_cache_bytes(info: ModelInfo, context: int, batch: int = 1, kv_dtype: str = "bfloat16", *,
                   mla_latent: bool = True, backend: str = "hf") -> int:
    """KV cache bytes for ``batch`` sequences of ``context`` tokens; windowed layers cap at the window
    where ``backend`` keeps one (:func:`windowed_layers`)."""
    per_layer = kv_bytes_per_token(info, kv_dtype, mla_latent=mla_latent) / max(1, info.num_layers)
    sliding = windowed_layers(info, backend)
    full = info.num_layers - sliding
    tokens = full * context + sliding * min(context, info.sliding_window or context)
    return int(per_layer * tokens * batch)


# torch's scaled_dot_product_attention on the CPU takes its math path when the value heads are not the
# size of the query/key heads (MLA without padding: qk_nope + qk_rope = 192 vs v_head_dim = 128 in
# DeepSeek-V2/V3), which materialises one layer's attention scores at a time: heads x L x L float32 in
# this many copies (the scores and their softmax, plus the float mask), fitted to the VmHWM rise of a
# float32 forward of DeepSeek-V2-Lite (2 layers, random weights) measured at 1k-8k tokens (291, 840,
# 2576, 5991, 10276 MiB at 1k, 2k, 4k, 6k, 8k): the 6k/8k pair gives 2.24 copies plus 140 KB per token;
# with activation_bytes' 164 KB per token this predicts +7%, +14%, +3%, +2% at 2k, 4k, 6k, 8k.
HF_MATH_ATTENTION_COPIES = 2.25


def hf_math_attention_bytes(info: ModelInfo, context: int, batch: int = 1) -> int:
    """The attention scores an hf forward over ``context`` prompt tokens materialises on the CPU (see
    :data:`HF_MATH_ATTENTION_COPIES`); 0 where query, key and value heads have one size (SDPA's flash
    kernel never materialises them)."""
    if info.attention != "MLA" or not info.kv_lora_rank:
        return 0
    qk = (info.head_dim or 128) + (info.qk_rope_head_dim or 64)
    if qk == (info.v_head_dim or qk):
        return 0
    return int(HF_MATH_ATTENTION_COPIES * batch * info.num_heads * context * context * 4)


# transformers 5.17 with SDPA on the CPU, for a model whose layers keep a sliding window: a prompt longer than
# the window cannot use SDPA's is_causal, so masking_utils builds one boolean mask of prompt x keys for the
# windowed layers (1 byte an entry, held through the forward), and torch's CPU SDPA turns a boolean mask into
# an additive one in the query's dtype for each call (aten's convert_boolean_attn_mask). Measured alone
# (torch 2.13 CPU, float32, 4 heads x 256, a 512-token window; 2026-12-06): SDPA's peak rose 293 MiB above
# the held mask at 8k and 1094 MiB at 16k, 4 bytes an entry plus the output. Full-attention layers with no
# padding skip the mask (is_causal). Gemma-3-1B's hf 32k row read -35.7 % without this term.
def hf_sliding_mask_bytes(info: ModelInfo, context: int, batch: int = 1, dtype: str = "float32") -> int:
    """The sliding-window attention mask an hf forward over ``context`` prompt tokens holds on the CPU, and
    SDPA's additive copy of it; 0 when no layer keeps a window or the prompt fits in it."""
    if not windowed_layers(info, "hf") or context <= (info.sliding_window or context):
        return 0
    b = DTYPES.get(normalize_dtype(dtype) or "float32", 4)
    return int(batch * context * context * (1 + b))


# mlx[cpu]: mx.fast.scaled_dot_product_attention has no fused kernel on the CPU and materialises each
# layer's scores, heads x chunk x keys in the activation dtype, once: measured alone (mlx 0.32.4 cpu,
# Phi-3's 32 heads x 96, float32, causal; 2026-12-06) mx.get_peak_memory() rose by the scores plus the
# scaled queries, the output and the boolean causal mask (chunk x keys bytes), to the MiB: 2047 x 2047
# 563 MiB, 2046 x 4094 1078, 1024 x 3072 411. (Until 2026-12-06 the term was 1.08 x the scores, a fit
# on square shapes that over-counted by 0.66 GiB at 32k.) The prefill's last chunk holds the most
# (chunk = prefill_step_size tokens attending to the whole prompt). Metal's fused kernel does not
# materialise them (not verified here: no Mac), so the term is for device kind "cpu" only.
MLX_CPU_SCORES_COPIES = 1.0


def mlx_cpu_scores_bytes(info: ModelInfo, context: int, batch: int = 1, dtype: str = "bfloat16") -> int:
    """The attention scores mlx[cpu] materialises in the prefill's last chunk, with what its attention
    fallback holds beside them: the scaled queries, the output and the causal mask (see
    :data:`MLX_CPU_SCORES_COPIES`)."""
    b = DTYPES.get(normalize_dtype(dtype) or "bfloat16", 2)
    chunk = min(context, MLX_PREFILL_STEP)
    heads, _, qk_head, v_head = _attention_heads(info)
    scores = MLX_CPU_SCORES_COPIES * heads * chunk * context * b
    return int(batch * (scores + chunk * heads * (qk_head + v_head) * b + chunk * context))


def _attention_heads(info: ModelInfo) -> tuple[int, int, int, int]:
    """(query heads, key/value heads, query/key head size, value head size); MLA's decompressed heads."""
    heads, kv_heads = info.num_heads, info.num_kv_heads or info.num_heads
    head = info.head_dim or (info.hidden_size // max(heads, 1))
    if info.attention == "MLA" and info.kv_lora_rank:
        return heads, heads, (info.head_dim or 128) + (info.qk_rope_head_dim or 64), info.v_head_dim or 128
    return heads, kv_heads, head, head


def mlx_cpu_attention_bytes(info: ModelInfo, context: int, batch: int = 1, dtype: str = "bfloat16") -> int:
    """What one layer's attention holds in the prefill's last chunk on mlx[cpu]: the scores
    (:func:`mlx_cpu_scores_bytes`), the q/k/v projections and the rotated copies of q and k; and, when
    the prompt spans more than one chunk, one layer's cache grown by concatenation (mlx-lm's ``KVCache``
    concatenates zeros onto the old keys and values, and the old, the zeros and the grown arrays are
    alive together: measured alone on Phi-3's widths growing 2048 -> 4096 tokens, mlx's peak rose by one
    layer's grown cache). Fitted on nothing: each piece is an array mlx-lm's forward makes; against
    mx.get_peak_memory() of the 20 mlx cases of ``benchmarks/planner_accuracy.py --suite architectures``
    (2-12 layers, 2k-32k, float32) the buffers (what mlx allocates: :func:`activation_bytes` with
    ``allocated=True``) err -2.5 % ... +2.0 % with this term (re-measured 2026-12-06 22:15), -7.8 % ... +5.2 %
    with the scores alone at 1.08 x."""
    b = DTYPES.get(normalize_dtype(dtype) or "bfloat16", 2)
    chunk = min(context, MLX_PREFILL_STEP)
    heads, kv_heads, qk_head, v_head = _attention_heads(info)
    projections = chunk * (heads * qk_head + kv_heads * (qk_head + v_head)) * b
    rotated = chunk * (heads + kv_heads) * qk_head * b
    grown = 0
    if context > MLX_PREFILL_STEP and info.num_layers:
        one_layer = kv_bytes_per_token(info, dtype, mla_latent=caches_mla_latent(info, "mlx")) / info.num_layers
        grown = int(one_layer * context)
    return mlx_cpu_scores_bytes(info, context, batch, dtype) + batch * (projections + rotated + grown)


def activation_bytes(info: ModelInfo, context: int, batch: int = 1, dtype: str = "bfloat16",
                     backend: str = "hf", mode: str = "generate", device_kind: str = "cpu",
                     allocated: bool = False) -> int:
    """Peak activation bytes of one forward pass over the prompt.

    hf: for every prompt token (the prefill is not chunked) the MLP's live intermediates — the
    activated gate, the up projection and their product, ``3*intermediate`` (``4*intermediate``
    where gate and up are one fused matrix, ``HF_FUSED_GATE_UP``) — and four hidden-state copies
    (residual, normed input, attention and MLP outputs), plus the logits upcast to fp32. Measured
    as the VmHWM rise of a float32 forward over 8176 tokens on the CPU (2 layers, random weights):
    Qwen2.5-0.5B 77.8, Llama-3.2-1B 131, Phi-3-mini 179 KB per token above the KV cache, against
    72.7, 131 and 180 from this formula.
    When generating (``mode="generate"``, what a plan is for) transformers 5 computes logits for
    the last position only (``logits_to_keep=1``, which ``generate`` and toolkit's hf backend pass),
    so the logits are ``batch*vocab*4``; when scoring a text (``mode="score"``: perplexity,
    logprobs) they are ``batch*context*vocab*4``.
    vllm / llamacpp / mlx: prefill is chunked (vLLM max_num_batched_tokens, llama.cpp n_ubatch,
    mlx-lm prefill_step_size) and logits are kept for the last token only. Attention scores are not
    counted: SDPA/flash attention never materialise the full matrix — except hf on the CPU where the
    value heads differ in size from the query heads (:func:`hf_math_attention_bytes`) and mlx on the
    CPU (:func:`mlx_cpu_attention_bytes`: the scores, the projections and a growing cache).
    mlx on the CPU, two figures. What mlx *allocates* (``allocated=True``, what mx.get_peak_memory()
    reports; the plan's ``engine_buffers``): the attention and the MLP's intermediates (three, four
    where gate and up are one matrix) together, because mlx's evaluation allocates the outputs of the
    operations it queues behind the running one before they run (mlx 0.32: ``eval_cpu`` allocates on
    the calling thread and dispatches the work to the stream's thread), so the MLP's outputs are
    allocated while the attention's scores are alive (a 2-layer float32 prefill: Llama-3.2-1B 2323 MiB
    against 2290 from this formula, Qwen2.5-0.5B 1021 against 1021). What becomes *resident* (the
    default: the activation_bytes a plan counts): the larger of the two phases, since an allocated
    page is resident only once written, and the MLP's arrays are written after the attention's are
    freed. Traced on Phi-3-mini (2 layers, 2k, mlx 0.32.4, 2026-12-06): the process's RSS climbed
    16 MiB every 70 ms while the scores were computed, 2.5 s after mlx's active memory had reached
    its peak, and topped out 360 MiB below that peak plus the runtime.
    """
    b = DTYPES.get(normalize_dtype(dtype) or "bfloat16", 2)
    inter = info.intermediate_size or 4 * info.hidden_size
    mlx_cpu = backend == "mlx" and device_kind == "cpu"
    if backend == "hf":
        live = 4 if info.model_type in HF_FUSED_GATE_UP else 3  # MLP intermediates alive at once
        tokens = batch * context
        logits = (tokens if mode == "score" else batch) * info.vocab_size * 4
        scores = hf_math_attention_bytes(info, context, batch) if device_kind == "cpu" else 0
        mask = hf_sliding_mask_bytes(info, context, batch, dtype) if device_kind == "cpu" else 0
        if mask:
            # the boolean mask is held through the forward; SDPA's additive copy lives only inside an
            # attention call, with that layer's q/k/v projections, rotated q and k and output, while the
            # MLP's intermediates live only inside the MLP: the larger of the two phases counts
            held = mask // (1 + b)
            heads, kv_heads, qk_head, v_head = _attention_heads(info)
            width = heads * qk_head + kv_heads * (qk_head + v_head) + (heads + kv_heads) * qk_head + heads * v_head
            mlp = tokens * live * inter * b
            attention = mask - held + tokens * width * b
            return int(tokens * 4 * info.hidden_size * b + logits + scores + held + max(mlp, attention))
    else:
        # mlx keeps the MLP's intermediates live as hf does, four where gate and up are one matrix
        # (mlx-lm's phi3 splits a gate_up_proj output too)
        live = (4 if info.model_type in HF_FUSED_GATE_UP else 3) if mlx_cpu else 2
        chunk = {"vllm": VLLM_MAX_BATCHED_TOKENS, "llamacpp": LLAMACPP_UBATCH, "mlx": MLX_PREFILL_STEP}.get(
            backend, LLAMACPP_UBATCH)
        tokens = min(batch * context, chunk)
        logits = batch * info.vocab_size * 4
        scores = mlx_cpu_attention_bytes(info, context, batch, dtype) if mlx_cpu else 0
        if mlx_cpu and not allocated:  # resident: the attention's phase or the MLP's, whichever is larger
            return int(tokens * 4 * info.hidden_size * b + logits + max(scores, tokens * live * inter * b))
    per_token = (live * inter + 4 * info.hidden_size) * b
    return int(tokens * per_token + logits + scores)


def overhead_bytes(backend: str, device: Device, *, weights_bytes: int = 0, quantization: str = "none") -> int:
    """Runtime memory that is neither weights, KV cache nor activations, summed over devices.

    cuda: CUDA context per GPU, PyTorch allocator slack (hf), vLLM's CUDA graphs. cpu: the
    process RSS of the runtime (python + torch + transformers for hf, plus the quantization
    library that ``quantization`` loads through: bitsandbytes, gptqmodel, compressed-tensors),
    measured by ``benchmarks/planner_accuracy.py``. mps: the MLX or torch runtime. vLLM's
    ``gpu_memory_utilization`` is applied to the budget, not here.
    """
    n = max(1, device.count)
    if device.kind == "cuda":
        if backend == "llamacpp":
            return LLAMACPP_CUDA_CONTEXT_BYTES * n
        base = CUDA_CONTEXT_BYTES * n + int(TORCH_ALLOCATOR_SLACK * weights_bytes)
        if backend == "vllm":
            base += VLLM_CUDA_GRAPH_BYTES * n
        return base
    if device.kind == "mps":
        return MLX_RUNTIME_BYTES if backend in ("mlx", "llamacpp") else CPU_RUNTIME_HF_BYTES
    return cpu_runtime_bytes(backend, quantization)


def cpu_runtime_bytes(backend: str, quantization: str = "none") -> int:
    """Measured process RSS of a backend's runtime on the CPU (see the CPU_RUNTIME_* constants)."""
    if backend == "llamacpp":
        return CPU_RUNTIME_LLAMACPP_BYTES
    if backend == "vllm":
        return CPU_RUNTIME_VLLM_BYTES
    if backend == "mlx":
        return CPU_RUNTIME_MLX_BYTES
    q = (quantization or "none").lower()
    extra = 0
    if q == "bnb-8bit":
        extra = CPU_RUNTIME_BNB_8BIT_BYTES
    elif q.startswith("bnb-"):
        extra = CPU_RUNTIME_BNB_4BIT_BYTES
    elif q.startswith(("gptq-", "awq-")):
        extra = CPU_RUNTIME_GPTQMODEL_BYTES
    elif q.startswith("ct-"):
        extra = CPU_RUNTIME_COMPRESSED_TENSORS_BYTES
    return CPU_RUNTIME_HF_BYTES + extra


def budget_bytes(device: Device, backend: str, gpu_memory_utilization: float = VLLM_GPU_MEMORY_UTILIZATION) -> int:
    """Memory a plan may use on ``device`` (all ``count`` devices together).

    vLLM pre-allocates ``gpu_memory_utilization * total`` and fails if other processes already use
    more than the rest, so its budget is that fraction of total minus what others use now.
    """
    n = max(1, device.count)
    if backend == "vllm" and device.kind == "cuda":
        used_by_others = device.total_bytes - device.free_bytes
        return max(0, int(gpu_memory_utilization * device.total_bytes) - used_by_others) * n
    return device.free_bytes * n
