"""What llama.cpp allocates for a GGUF, from the file's metadata alone: model buffers, KV cache
(sliding-window layers and ``swa_full`` included), compute buffer and output buffer.

The rules follow the llama.cpp vendored in llama-cpp-python 0.3.36 (paths below are in its
``vendor/llama.cpp``) and were checked against the engine's own figures — its buffer log and its
``no_alloc`` dry run — on 15 models x 328 settings (the README's planner section; rerun with
``benchmarks/planner_accuracy.py --suite architectures``): model buffers and KV exact, weights +
KV + compute + output within 1.6 %.

* Context: ``n_ctx`` is padded up to a multiple of 256 (``llama_context`` ctor); ``n_batch`` is
  ``min(n_ctx, n_batch)`` before the padding and ``n_ubatch = min(n_batch, n_ubatch)``.
* KV (``llama_kv_cache`` ctor, ``llama-kv-cache-iswa.cpp``): per layer, K rows of
  ``head_k * n_head_kv`` and V rows of ``head_v * n_head_kv`` (without flash attention V is stored
  transposed at the widest layer's width), each ``row_size(type)`` bytes, times the cells. Sliding-
  window layers get ``pad256(min(n_ctx, n_swa + n_ubatch))`` cells, or the full context when
  ``swa_full`` (llama-cpp-python's default). Which layers slide follows each architecture's pattern
  (``llama_hparams::set_swa_pattern``); a quantized V cache needs flash attention. With MLA (the
  ``key_length_mla`` keys) only K rows (the compressed latent + RoPE part) are cached: V is a view.
* Compute buffer (``sched_reserve``: a graph of ``n_ubatch`` tokens with ``n_ubatch`` outputs over a
  full cache): the larger of the output phase (logits) and the attention phase (the KQ matrix
  without flash attention, the masks, the FFN intermediates). The allocator leaves holes, so this is
  a fitted closed form, within about ±10 % alone; the dry run (:func:`toolkit.backends.llamacpp.dry_run`)
  gives the exact figure when llama.cpp is installed.
* Output buffer (``output_reserve``): ``4 * n_vocab`` bytes per sequence at start.
* Model buffers (``load_tensors``): with mmap, the file span of the tensors that stay in the mapped
  buffer; on an x86 AVX2 build, Q4_0/Q4_K/IQ4_NL/MXFP4 matrix weights are repacked into a separate
  buffer as well (and a tied embedding of such a type a second time, for the output layer). The
  repacked bytes come on top of the mapped pages in RSS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from toolkit.errors import InvalidSpec
from toolkit.facts.model_info import ModelInfo

# ggml block layouts: type -> (elements per block, bytes per block) (ggml-common.h)
BLOCKS = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20),
          "q5_0": (32, 22), "q5_1": (32, 24), "iq4_nl": (32, 18)}
# KV cache types llama.cpp accepts for --cache-type-k/-v, by toolkit's name
KV_TYPES = {"float16": "f16", "f16": "f16", "bfloat16": "bf16", "bf16": "bf16", "float32": "f32", "f32": "f32",
            "q8_0": "q8_0", "q4_0": "q4_0", "q4_1": "q4_1", "q5_0": "q5_0", "q5_1": "q5_1", "iq4_nl": "iq4_nl"}
# llama-cpp-python 0.3.36's Llama() defaults (llama_cpp/llama.py)
N_BATCH = 512
N_UBATCH = 512
# Default sliding-window pattern per architecture when the GGUF has no sliding_window_pattern key:
# (period, dense_first, window when the GGUF gives none) — each arch's load_arch_hparams.
SWA_DEFAULTS = {"gemma2": (2, False, 4096), "gemma3": (6, False, None), "gemma3n": (5, False, None),
                "cohere2": (4, False, None), "cohere2moe": (4, True, None), "llama4": (4, False, 8192),
                "olmo2": (4, False, None), "exaone4": (4, False, 4096), "gpt-oss": (2, False, None),
                "smallthinker": (4, True, 4096), "afmoe": (4, False, None), "exaone-moe": (4, False, 128),
                "plamo3": (8, False, None), "mellum": (4, False, None)}
# Architectures whose GGUF carries a sliding window that llama.cpp does not use (src/models/phi3.cpp).
SWA_IGNORED = ("phi3",)
# Weight types the x86 AVX2 CPU backend repacks for its matmul kernels (ggml-cpu/repack.cpp).
REPACKED_AVX2 = ("q4_0", "q4_k", "iq4_nl", "mxfp4")


def row_size(ggml_type: str, n: int) -> int:
    per, size = BLOCKS[ggml_type]
    if n % per:
        raise InvalidSpec(f"a KV row of {n} values does not split into {ggml_type} blocks of {per}: use another "
                          "--kv-dtype (f16 always works)")
    return n // per * size


def pad(x: int, n: int) -> int:
    return (x + n - 1) // n * n


@dataclass
class Settings:
    """The llama.cpp context settings a plan fixes (llama-cpp-python names)."""

    n_ctx: int
    n_batch: int = N_BATCH
    n_ubatch: int = N_UBATCH
    flash_attn: bool = False
    swa_full: bool = True
    type_k: str = "f16"
    type_v: str = "f16"
    n_seq_max: int = 1

    def __post_init__(self) -> None:
        self.type_k, self.type_v = KV_TYPES.get(self.type_k, self.type_k), KV_TYPES.get(self.type_v, self.type_v)
        if self.type_v not in ("f16", "bf16", "f32") and not self.flash_attn:
            self.flash_attn = True  # llama.cpp refuses a quantized V cache without flash attention

    def context(self) -> dict[str, int]:
        """The engine's derived sizes: padded context, cells per sequence, batch and micro-batch."""
        n_batch = min(self.n_ctx, self.n_batch)
        n_ubatch = min(n_batch, self.n_ubatch)
        n_ctx = pad(self.n_ctx, 256)
        cells = pad(n_ctx // self.n_seq_max, 256)
        return {"n_ctx": cells * self.n_seq_max, "cells": cells, "n_batch": n_batch, "n_ubatch": n_ubatch}


def swa_layers(g: dict) -> tuple[list[bool], int]:
    """(which layers llama.cpp gives a sliding-window cache, the window) for a GGUF's facts."""
    arch, layers = g["arch"], g["n_layer"]
    window = int(g.get("sliding_window") or 0)
    pattern = g.get("sliding_window_pattern")
    if arch in SWA_IGNORED:
        return [False] * layers, 0
    if isinstance(pattern, list):
        return [bool(x) for x in pattern][:layers], window
    if arch not in SWA_DEFAULTS:
        return [False] * layers, 0
    period, dense_first, forced = SWA_DEFAULTS[arch]
    if arch == "llama4" and g.get("sliding_window") is None:
        window = forced
    elif forced and not window:
        window = forced
    if isinstance(pattern, int):
        period = pattern
    if not window:
        return [False] * layers, 0
    if dense_first:
        return [period == 0 or il % period != 0 for il in range(layers)], window
    return [period == 0 or il % period < period - 1 for il in range(layers)], window


@dataclass
class Buffers:
    """llama.cpp's CPU buffers for one context, in bytes."""

    mapped: int
    repacked: int
    kv: int
    kv_caches: list[tuple[int, int]] = field(default_factory=list)  # (cells, layers) per cache
    compute: int = 0
    output: int = 0

    @property
    def weights(self) -> int:
        return self.mapped + self.repacked

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.output


def _facts(info: ModelInfo) -> dict:
    if not info.gguf:
        raise InvalidSpec(f"{info.source} is not a GGUF file: llama.cpp's memory is planned from a GGUF's metadata")
    return info.gguf


def kv_bytes(info: ModelInfo, s: Settings) -> tuple[int, list[tuple[int, int]]]:
    """KV cache bytes and the (cells, layers) of each cache llama.cpp makes (two for iSWA models)."""
    g = _facts(info)
    c = s.context()
    is_swa, window = swa_layers(g)
    cells_swa = c["cells"] if s.swa_full else pad(min(c["cells"], window + c["n_ubatch"]), 256)
    widest_v = max(g["head_v"] * kv for kv in g["n_head_kv"])
    total, caches = 0, {}
    for il in range(g["n_layer"]):
        kv_heads = g["n_head_kv"][il]
        if kv_heads == 0:
            continue
        cells = cells_swa if is_swa[il] else c["cells"]
        v_width = g["head_v"] * kv_heads if s.flash_attn else widest_v
        v_row = 0 if g.get("mla") else row_size(s.type_v, v_width)  # MLA: no V cache (llama_kv_cache ctor, has_v)
        total += (row_size(s.type_k, g["head_k"] * kv_heads) + v_row) * cells * s.n_seq_max
        caches[is_swa[il]] = (cells, caches.get(is_swa[il], (cells, 0))[1] + 1)
    return total, [caches[k] for k in (False, True) if k in caches]


def compute_bytes(info: ModelInfo, s: Settings, *, outputs: int | None = None) -> int:
    """The CPU compute buffer ``sched_reserve`` reserves: max(output phase, attention phase), for a
    graph of ``n_ubatch`` tokens with ``outputs`` of them producing logits (default: all, as reserved)."""
    g = _facts(info)
    c = s.context()
    ub, embd = c["n_ubatch"], g["n_embd"]
    is_swa, window = swa_layers(g)
    cells_swa = c["cells"] if s.swa_full else pad(min(c["cells"], window + c["n_ubatch"]), 256)
    masks = ub * (c["cells"] + (cells_swa if any(is_swa) else 0)) * (2 if s.flash_attn else 4)
    ff = max(g["n_ff"])
    if g["n_expert"]:
        ff = max(ff, g["n_expert_used"] * g["n_ff_exp"])
    output_phase = 4 * (ub if outputs is None else outputs) * (g["n_vocab"] + 3 * embd)
    if s.flash_attn:
        attention_phase = masks + 4 * ub * (3 * ff + 4 * embd)
    else:
        attention_phase = 4 * ub * max(g["n_head"]) * c["cells"] + masks + 4 * ub * (ff + 3 * embd)
    return max(output_phase, attention_phase)


def resident_compute_bytes(info: ModelInfo, s: Settings) -> int:
    """What of the compute buffer a generation writes on the CPU, plus the CPU backend's work buffer.

    The reserved buffer is sized for a ubatch with ``n_ubatch`` outputs (the logits phase); a
    generation asks for one output per batch (llama-cpp-python without ``logits_all``), so its graphs
    write the attention phase only, and pages never written never become resident. The work buffer
    (``ggml_graph_plan``) holds src1 of a matrix product converted to the weights' dot type: the
    largest is the softmaxed KQ (``n_kv x n_ubatch x n_head`` f32 -> f16) multiplied with a f16 V
    cache without flash attention. Checked against a ``no_alloc`` dry run with ``n_outputs_max = 1``
    and measured RSS (``benchmarks/planner_accuracy.py --suite architectures``)."""
    g = _facts(info)
    c = s.context()
    work = 0 if s.flash_attn else 2 * c["cells"] * c["n_ubatch"] * max(g["n_head"])
    return compute_bytes(info, s, outputs=1) + work  # never above the reservation: 1 output <= n_ubatch


def model_buffers(info: ModelInfo, *, use_mmap: bool = True, repack: bool = True) -> tuple[int, int]:
    """(mapped or plain CPU model buffer, repacked buffer) bytes."""
    tensors = _facts(info)["tensors"]

    def repackable(t: dict) -> bool:
        return (repack and t["type"] in REPACKED_AVX2 and len(t["shape"]) in (2, 3) and t["shape"][1] % 8 == 0)

    moved = [t for t in tensors if repackable(t) and t["name"] != "token_embd.weight"]
    kept = [t for t in tensors if t not in moved]
    repacked = sum(t["bytes"] for t in moved)
    if not any(t["name"] == "output.weight" for t in tensors):  # tied: the output layer gets its own copy
        repacked += sum(t["bytes"] for t in tensors if t["name"] == "token_embd.weight" and repackable(t))
    if not kept:
        return 0, repacked
    if use_mmap:
        return max(t["offset"] + t["bytes"] for t in kept) - min(t["offset"] for t in kept), repacked
    return sum(pad(t["bytes"], 32) for t in kept), repacked


def buffers(info: ModelInfo, s: Settings, *, repack: bool = True) -> Buffers:
    """Every CPU buffer llama.cpp allocates for ``info`` under ``s``."""
    mapped, repacked = model_buffers(info, repack=repack)
    kv, caches = kv_bytes(info, s)
    return Buffers(mapped, repacked, kv, caches, compute_bytes(info, s), 4 * _facts(info)["n_vocab"] * s.n_seq_max)


def offloadable_layers(info: ModelInfo) -> int:
    """The layers ``n_gpu_layers`` counts: every block plus the output layer, which is offloaded first
    (``llama_model::load_tensors``: layer il is on the GPU iff il >= n_layer + 1 - n_gpu_layers)."""
    return _facts(info)["n_layer"] + 1
