"""What a model is, read from its files without loading (or downloading) its weights.

``inspect(model)`` accepts a local folder (config.json + safetensors headers or index), a single
``.gguf`` file, an MLX folder, or a hub id ``org/name`` (config, index and safetensors headers
only, via huggingface_hub). Pickle weights (``*.bin``, ``*.pt``, ``*.pth``) are never opened, and
code named by ``auto_map`` is never imported.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from toolkit.errors import BackendUnavailable, InvalidModel, ModelNotFound

# safetensors dtype -> bytes per element (safetensors format spec, huggingface/safetensors README).
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4,
    "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}
TORCH_DTYPE_NAMES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                     "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "I8": "int8", "U8": "uint8",
                     "I32": "int32", "U32": "uint32"}
DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2,
               "bf16": 2, "float64": 8, "float8_e4m3fn": 1, "int8": 1}

# GGML tensor types: id -> (name, elements per block, bytes per block), from ggml/include/ggml.h
# (enum ggml_type) and the block structs in ggml/src/ggml-common.h (e.g. block_q4_0 = fp16 scale
# + 16 bytes of nibbles for 32 weights = 18 bytes; block_q4_K = 2 fp16 + 12 scale bytes + 128 = 144
# bytes for 256 weights).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2), 2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20), 6: ("q5_0", 32, 22),
    7: ("q5_1", 32, 24), 8: ("q8_0", 32, 34), 9: ("q8_1", 32, 36), 10: ("q2_k", 256, 84),
    11: ("q3_k", 256, 110), 12: ("q4_k", 256, 144), 13: ("q5_k", 256, 176), 14: ("q6_k", 256, 210),
    15: ("q8_k", 256, 292), 16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74), 18: ("iq3_xxs", 256, 98),
    19: ("iq1_s", 256, 50), 20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110), 22: ("iq2_s", 256, 82),
    23: ("iq4_xs", 256, 136), 24: ("i8", 1, 1), 25: ("i16", 1, 2), 26: ("i32", 1, 4), 27: ("i64", 1, 8),
    28: ("f64", 1, 8), 29: ("iq1_m", 256, 56), 30: ("bf16", 1, 2), 34: ("tq1_0", 256, 54),
    35: ("tq2_0", 256, 66),
}
# general.file_type -> llama.cpp's name for the mix (enum llama_ftype in include/llama.h).
GGUF_FILE_TYPES = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
    12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
    19: "iq2_xxs", 20: "iq2_xs", 21: "q2_k_s", 22: "iq3_xs", 23: "iq3_xxs", 24: "iq1_s", 25: "iq4_nl",
    26: "iq3_s", 27: "iq3_m", 28: "iq2_s", 29: "iq2_m", 30: "iq4_xs", 31: "iq1_m", 32: "bf16",
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Tensors that are quantization metadata, not model parameters (GPTQ/AWQ/compressed-tensors/bnb/MLX).
_AUX_SUFFIXES = (".scales", ".qzeros", ".g_idx", ".weight_scale", ".weight_zero_point", ".weight_g_idx",
                 ".weight_shape", ".SCB", ".weight_format", ".absmax", ".quant_map", ".nested_absmax",
                 ".nested_quant_map", ".input_scale", ".biases", ".zeros")
# Non-parameter buffers some checkpoints store (rotary inv_freq in old Llama, GPT-2's causal mask).
_BUFFER_PATTERNS = (re.compile(r"rotary_emb\.inv_freq$"), re.compile(r"\.attn\.(masked_)?bias$"))
_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "gpt_neo", "opt", "bloom"}
MAX_HEADER_BYTES = 100 * 2**20  # safetensors refuses headers above 100 MB (safetensors lib N_MAX)


@dataclass
class ModelInfo:
    """Facts about a model, read from its metadata. Pure value; see ``inspect()``."""

    source: str
    architecture: str | None = None
    model_type: str | None = None
    format: str = "config-only"
    params: int = 0
    params_source: str = "config"
    checkpoint_bytes: int = 0
    checkpoint_dtype: str | None = None
    quantization: str = "none"
    quantization_config: dict | None = None
    num_layers: int = 0
    hidden_size: int = 0
    intermediate_size: int | None = None
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    vocab_size: int = 0
    attention: str = "MHA"
    sliding_window: int | None = None
    num_sliding_layers: int = 0
    num_experts: int | None = None
    experts_per_token: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    max_positions: int = 0
    tied_embeddings: bool = False
    requires_remote_code: bool = False
    weights_format: str | None = None
    embedding_params: int = 0
    lm_head_params: int = 0
    linear_params: int = 0
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return asdict(self)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in self.to_dict().items() if k not in ("files", "quantization_config") and v not in (None, [])
        )
        return f"<table>{rows}</table>"


# ---------------------------------------------------------------------------------------------
# config.json -> architecture facts and parameter counts


def _get(cfg: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def _text_config(cfg: dict) -> dict:
    # Multimodal wrappers (Gemma 3, Llava, Qwen2-VL...) keep the language model in text_config.
    if "hidden_size" not in cfg and "n_embd" not in cfg and isinstance(cfg.get("text_config"), dict):
        merged = dict(cfg["text_config"])
        for k in ("architectures", "quantization_config", "auto_map", "torch_dtype", "quantization"):
            merged.setdefault(k, cfg.get(k))
        return merged
    return cfg


def _require(cfg: dict, name: str, keys: tuple[str, ...], file: str) -> int:
    value = _get(cfg, *keys)
    if value is None:
        raise InvalidModel(
            f"{file} has no {keys[0]!r} (also looked for {', '.join(keys[1:]) or 'no alias'}): "
            f"the {name} is needed to plan; fix or re-download the config"
        )
    return int(value)


def arch_facts(cfg: dict, file: str = "config.json") -> dict:
    """Architecture facts (layers, heads, attention kind, MoE, MLA...) from a config dict."""
    cfg = _text_config(cfg)
    mt = cfg.get("model_type")
    h = _require(cfg, "hidden size", ("hidden_size", "n_embd", "d_model", "dim"), file)
    layers = _require(cfg, "layer count", ("num_hidden_layers", "n_layer", "num_layers", "n_layers"), file)
    heads = _require(cfg, "attention head count", ("num_attention_heads", "n_head", "n_heads"), file)
    vocab = _require(cfg, "vocabulary size", ("vocab_size",), file)
    kv = int(_get(cfg, "num_key_value_heads", "n_kv_heads", default=heads))
    if cfg.get("multi_query"):
        kv = 1
    head_dim = int(_get(cfg, "head_dim", default=h // heads))
    inter = _get(cfg, "intermediate_size", "n_inner", "ffn_dim")
    if inter is None and mt == "gpt2":
        inter = 4 * h
    kv_lora = cfg.get("kv_lora_rank")
    if kv_lora:
        attention = "MLA"
    elif kv == 1 and heads > 1:
        attention = "MQA"
    elif kv < heads:
        attention = "GQA"
    else:
        attention = "MHA"
    # sliding windows: which layers use one
    window = cfg.get("sliding_window")
    n_sliding = 0
    layer_types = cfg.get("layer_types")
    if isinstance(layer_types, list) and window:
        n_sliding = sum(1 for t in layer_types if "sliding" in str(t))
    elif window and cfg.get("use_sliding_window") is False:
        n_sliding = 0
    elif window and mt == "gemma2":
        n_sliding = (layers + 1) // 2  # Gemma 2 alternates: even layers local, odd global
    elif window and mt in ("gemma3", "gemma3_text"):
        pattern = int(cfg.get("sliding_window_pattern", 6))  # 5 local : 1 global
        n_sliding = layers - layers // pattern
    elif window and mt in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe"):
        n_sliding = max(0, layers - int(cfg.get("max_window_layers", layers)))
    elif window:
        n_sliding = layers  # Mistral v0.1, Phi-3: every layer windowed
    if not n_sliding:
        window = None
    experts = _get(cfg, "num_local_experts", "n_routed_experts", "num_experts")
    return {
        "model_type": mt,
        "architecture": (cfg.get("architectures") or [None])[0],
        "num_layers": layers, "hidden_size": h, "intermediate_size": int(inter) if inter else None,
        "num_heads": heads, "num_kv_heads": kv, "head_dim": head_dim, "vocab_size": vocab,
        "attention": attention, "sliding_window": int(window) if window else None,
        "num_sliding_layers": n_sliding,
        "num_experts": int(experts) if experts else None,
        "experts_per_token": _get(cfg, "num_experts_per_tok", "num_experts_per_token"),
        "kv_lora_rank": int(kv_lora) if kv_lora else None,
        "qk_rope_head_dim": cfg.get("qk_rope_head_dim") if kv_lora else None,
        "v_head_dim": cfg.get("v_head_dim") if kv_lora else None,
        "max_positions": int(_get(cfg, "max_position_embeddings", "n_positions", "max_sequence_length",
                                  "seq_length", default=2048)),
        "tied_embeddings": bool(cfg.get("tie_word_embeddings", mt in _TIED_BY_DEFAULT)),
        "requires_remote_code": bool(cfg.get("auto_map")),
    }


def params_from_config(cfg: dict, file: str = "config.json") -> dict:
    """Count parameters from a config alone.

    Covers Llama/Mistral/Qwen2 (qkv bias)/Qwen3 (q/k norm)/Gemma 1-3/Phi-3 (fused qkv and gate_up
    hold the same weights)/GPT-2/Mixtral/Qwen-MoE (shared expert)/DeepSeek V2-V3 (MLA, shared
    experts, first dense layers). Multi-token-prediction layers (DeepSeek-V3) are not counted.

    Returns:
        ``{"total", "embedding", "lm_head", "linear"}`` where ``linear`` is the weight count of
        the decoder's linear layers (what bnb/GPTQ/AWQ quantize).
    """
    cfg = _text_config(cfg)
    f = arch_facts(cfg, file)
    mt = f["model_type"] or ""
    h, L, V = f["hidden_size"], f["num_layers"], f["vocab_size"]
    heads, kv, hd = f["num_heads"], f["num_kv_heads"], f["head_dim"]
    inter = f["intermediate_size"] or 4 * h
    embedding = V * h
    lm_head = 0 if f["tied_embeddings"] else V * h

    if mt == "gpt2":
        per_layer_linear = h * 3 * h + h * h + 2 * h * inter
        per_layer_other = 3 * h + h + inter + h + 4 * h  # biases + 2 layernorms (weight+bias)
        positions = f["max_positions"] * h
        total = embedding + positions + L * (per_layer_linear + per_layer_other) + 2 * h + lm_head
        return {"total": total, "embedding": embedding + positions, "lm_head": lm_head,
                "linear": L * per_layer_linear}

    # attention
    if f["kv_lora_rank"]:
        nope, rope = int(cfg["qk_nope_head_dim"]), int(cfg["qk_rope_head_dim"])
        v_hd = int(cfg.get("v_head_dim", nope))
        qr = cfg.get("q_lora_rank")
        if qr:
            q_lin, q_norm = h * qr + qr * heads * (nope + rope), qr
        else:
            q_lin, q_norm = h * heads * (nope + rope), 0
        r = f["kv_lora_rank"]
        attn_lin = q_lin + h * (r + rope) + r * heads * (nope + v_hd) + heads * v_hd * h
        attn_other = q_norm + r  # q_a_layernorm, kv_a_layernorm
    else:
        attn_lin = h * heads * hd + 2 * h * kv * hd + heads * hd * h
        attn_other = 0
        if mt.startswith("qwen2") or cfg.get("attention_bias") or cfg.get("qkv_bias"):
            attn_other += heads * hd + 2 * kv * hd  # q/k/v biases
            if cfg.get("attention_bias") and not mt.startswith("qwen2"):
                attn_other += h  # o_proj bias (Llama attention_bias=True)
        if mt in ("qwen3", "qwen3_moe", "gemma3", "gemma3_text", "olmo2"):
            attn_other += 2 * hd  # q_norm, k_norm
    norms = 4 * h if mt in ("gemma2", "gemma3", "gemma3_text") else 2 * h

    dense_mlp = 3 * h * inter + (2 * inter + h if cfg.get("mlp_bias") else 0)
    E = f["num_experts"]
    moe_layers = 0
    moe_lin = moe_other = 0
    if E:
        moe_inter = int(_get(cfg, "moe_intermediate_size", default=inter))
        moe_lin = E * 3 * h * moe_inter
        moe_other = E * h  # router
        shared_n = cfg.get("n_shared_experts") or 0
        if shared_n:
            moe_lin += 3 * h * moe_inter * shared_n
        shared_inter = cfg.get("shared_expert_intermediate_size") or 0
        if shared_inter:
            moe_lin += 3 * h * shared_inter
            moe_other += h  # shared_expert_gate (Qwen2-MoE)
        if cfg.get("topk_method") == "noaux_tc":
            moe_other += E  # e_score_correction_bias (DeepSeek-V3)
        first_dense = int(cfg.get("first_k_dense_replace", 0) or 0)
        freq = int(cfg.get("moe_layer_freq", cfg.get("decoder_sparse_step", 1)) or 1)
        only_dense = set(cfg.get("mlp_only_layers") or [])
        moe_layers = sum(1 for i in range(L) if i >= first_dense and i % freq == 0 and i not in only_dense)
    dense_layers = L - moe_layers
    linear = L * attn_lin + dense_layers * dense_mlp + moe_layers * moe_lin
    other = L * (attn_other + norms) + moe_layers * moe_other + h
    return {"total": embedding + lm_head + linear + other, "embedding": embedding, "lm_head": lm_head,
            "linear": linear}


def quantization_from_config(cfg: dict) -> tuple[str, dict | None]:
    """Map a config's ``quantization_config`` (or MLX ``quantization``) to a toolkit name."""
    q = cfg.get("quantization_config")
    mlx = cfg.get("quantization")
    if isinstance(mlx, dict) and "bits" in mlx and (not q or "quant_method" not in q):
        return f"mlx-{int(mlx['bits'])}bit", mlx
    if not isinstance(q, dict):
        return "none", None
    method = str(q.get("quant_method", "")).lower()
    bits = q.get("bits", q.get("w_bit"))
    if method == "gptq":
        return f"gptq-{int(bits or 4)}bit", q
    if method == "awq":
        return f"awq-{int(bits or 4)}bit", q
    if method == "bitsandbytes":
        return ("bnb-4bit" if q.get("load_in_4bit") else "bnb-8bit"), q
    if method == "compressed-tensors":
        groups = q.get("config_groups") or {}
        w = next((g.get("weights") or {} for g in groups.values() if isinstance(g, dict)), {})
        nbits = int(w.get("num_bits", 4))
        if w.get("type") == "float":
            return f"ct-fp{nbits}", q
        # llm-compressor's AWQ recipes are asymmetric (zero points); its GPTQ recipes symmetric.
        kind = "awq" if w.get("symmetric") is False else "gptq"
        return f"ct-{kind}-{nbits}bit", q
    if method:
        return method, q
    return "none", q


# ---------------------------------------------------------------------------------------------
# safetensors headers


def read_safetensors_header(path: str | os.PathLike) -> dict[str, dict]:
    """Read the tensor table of a safetensors file (never the tensor data).

    Returns:
        ``{name: {"dtype", "shape", "data_offsets"}}`` (the ``__metadata__`` entry removed).

    Raises:
        InvalidModel: When the header is truncated, not JSON, or points past the end of the file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise InvalidModel(f"{path.name} is truncated (shorter than the 8-byte safetensors header "
                               "length): re-download or re-save the file")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise InvalidModel(f"{path.name} has a corrupt or truncated safetensors header (claims {n} bytes, "
                               f"file is {size}): re-download or re-save the file")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidModel(f"{path.name} has a safetensors header that is not valid JSON ({e}): "
                               "re-download or re-save the file") from None
    if not isinstance(header, dict):
        raise InvalidModel(f"{path.name} has a safetensors header that is not a JSON object: re-download it")
    header.pop("__metadata__", None)
    data_len = size - 8 - n
    for name, t in header.items():
        try:
            start, end = t["data_offsets"]
            t["dtype"], t["shape"]  # noqa: B018 - presence check
        except (KeyError, TypeError, ValueError):
            raise InvalidModel(f"{path.name}: tensor {name!r} lacks dtype/shape/data_offsets: re-save the file") from None
        if end > data_len or start > end:
            raise InvalidModel(f"{path.name} is truncated: tensor {name!r} ends at byte {end} but the data "
                               f"section has {data_len} bytes; re-download the file")
    return header


def _numel(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def count_tensors(tensors: dict[str, dict], quant_bits: int | None = None) -> dict:
    """Count parameters and bytes from a tensor table, unpacking packed int weights.

    GPTQ ``qweight`` int32 [in/8, out], AWQ ``qweight`` int32 [in, out/8], compressed-tensors
    ``weight_packed`` and MLX uint32 ``weight`` (with ``.scales`` beside it) each hold 32/bits
    weights per element; bnb 4-bit uint8 weights hold 2. Scales, zeros, g_idx and absmax are
    metadata, not parameters.
    """
    names = set(tensors)
    params = nbytes = embedding = lm_head = 0
    dtype_bytes: Counter[str] = Counter()
    for name, t in tensors.items():
        dtype, shape = t["dtype"], t["shape"]
        start, end = t["data_offsets"]
        size = end - start
        nbytes += size
        if any(p.search(name) for p in _BUFFER_PATTERNS):
            continue
        if name.endswith(_AUX_SUFFIXES) or ".quant_state." in name:
            continue
        n = _numel(shape)
        if name.endswith(("qweight", "weight_packed")) or (
            dtype in ("U32", "I32") and name.endswith(".weight") and name[:-7] + ".scales" in names
        ):
            n *= 32 // (quant_bits or 4)
        elif dtype == "U8" and name[: -len("weight")] + "weight.absmax" in names:
            n *= 2  # bnb 4-bit: two 4-bit codes per byte
        else:
            dtype_bytes[dtype] += size
        params += n
        if re.search(r"(embed_tokens|wte|word_embeddings|tok_embeddings)\.weight$", name):
            embedding += n
        elif re.search(r"(^|\.)(lm_head|embed_out)\.weight$", name):
            lm_head += n
    main = dtype_bytes.most_common(1)[0][0] if dtype_bytes else None
    return {"params": params, "bytes": nbytes, "embedding": embedding, "lm_head": lm_head,
            "dtype": TORCH_DTYPE_NAMES.get(main, main.lower()) if main else None}


# ---------------------------------------------------------------------------------------------
# GGUF


class _Reader:
    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.fh, self.name = fh, name

    def read(self, n: int) -> bytes:
        b = self.fh.read(n)
        if len(b) < n:
            raise InvalidModel(f"{self.name} is truncated inside its GGUF header: re-download the file")
        return b

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.read(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > 2**24:
            raise InvalidModel(f"{self.name} has a corrupt GGUF string length ({n}): re-download the file")
        return self.read(n).decode("utf-8", errors="replace")


# GGUF value types (gguf spec, ggml/docs/gguf.md): id -> struct format
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_value(r: _Reader, vtype: int, keep_arrays: bool) -> Any:
    if vtype in _GGUF_SCALARS:
        fmt = _GGUF_SCALARS[vtype]
        return struct.unpack(fmt, r.read(struct.calcsize(fmt)))[0]
    if vtype == 8:
        return r.string()
    if vtype == 9:
        etype, n = r.u32(), r.u64()
        if etype in _GGUF_SCALARS:
            size = struct.calcsize(_GGUF_SCALARS[etype])
            data = r.read(size * n)
            if keep_arrays and n <= 4096:
                return list(struct.unpack(f"<{n}{_GGUF_SCALARS[etype][1]}", data))
            return {"array_length": n}
        values = [_gguf_value(r, etype, False) for _ in range(n)]
        return values if keep_arrays and n <= 4096 else {"array_length": n}
    raise InvalidModel(f"{r.name} has an unknown GGUF value type {vtype}: the file is corrupt or from a newer "
                       "GGUF version; re-download it or update toolkit")


def read_gguf(path: str | os.PathLike) -> dict:
    """Read a GGUF file's metadata and tensor table (not the tensor data), in pure Python.

    Returns:
        ``{"version", "metadata": {key: value}, "tensors": [{"name","shape","type","bytes"}]}``;
        long arrays (the tokenizer vocabulary) are replaced by ``{"array_length": n}``.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        r = _Reader(fh, path.name)
        if r.read(4) != b"GGUF":
            raise InvalidModel(f"{path.name} is not a GGUF file (bad magic): pass a .gguf from llama.cpp's convert scripts")
        version = r.u32()
        if version == 1:
            n_tensors, n_kv = r.u32(), r.u32()
        else:
            n_tensors, n_kv = r.u64(), r.u64()
        meta = {}
        for _ in range(n_kv):
            key = r.string()
            meta[key] = _gguf_value(r, r.u32(), keep_arrays=True)
        tensors = []
        data_end = 0  # end of the last tensor, relative to the start of the data section
        for _ in range(n_tensors):
            name = r.string()
            dims = [r.u64() for _ in range(r.u32())]
            ttype = r.u32()
            offset = r.u64()
            if ttype not in GGML_TYPES:
                raise InvalidModel(f"{path.name}: tensor {name!r} has unknown ggml type {ttype}: update toolkit")
            tname, block, tsize = GGML_TYPES[ttype]
            n = _numel(dims)
            tensors.append({"name": name, "shape": dims, "type": tname, "numel": n, "bytes": n // block * tsize})
            data_end = max(data_end, offset + n // block * tsize)
        # The data section starts at the next multiple of general.alignment (gguf spec, default 32).
        align = meta.get("general.alignment") or 32
        data_start = -(-fh.tell() // align) * align if isinstance(align, int) and align > 0 else fh.tell()
        size = path.stat().st_size
        if tensors and data_start + data_end > size:
            raise InvalidModel(f"{path.name} is truncated: its tensor data needs {data_start + data_end} bytes but the "
                               f"file has {size}; re-download the file (or finish the download)")
    return {"version": version, "metadata": meta, "tensors": tensors}


def _inspect_gguf(path: Path) -> ModelInfo:
    g = read_gguf(path)
    meta, tensors = g["metadata"], g["tensors"]
    arch = meta.get("general.architecture")
    if not arch:
        raise InvalidModel(f"{path.name} has no general.architecture key: re-convert it with llama.cpp")

    def m(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    layers = m("block_count")
    hidden = m("embedding_length")
    heads = m("attention.head_count")
    if layers is None or hidden is None or heads is None:
        raise InvalidModel(f"{path.name} lacks {arch}.block_count/embedding_length/attention.head_count: "
                           "re-convert it with a recent llama.cpp")
    if isinstance(heads, list):
        heads = max(heads)
    kv = m("attention.head_count_kv", heads)
    kv = max(kv) if isinstance(kv, list) else kv
    head_dim = m("attention.key_length", hidden // heads)
    tok = meta.get("tokenizer.ggml.tokens")
    vocab = m("vocab_size") or (tok["array_length"] if isinstance(tok, dict) else len(tok or []))
    kv_lora = m("attention.kv_lora_rank")
    attention = "MLA" if kv_lora else ("MQA" if kv == 1 and heads > 1 else "GQA" if kv < heads else "MHA")
    names = {t["name"] for t in tensors}
    by_type: Counter[str] = Counter()
    for t in tensors:
        by_type[t["type"]] += t["bytes"]
    ftype = meta.get("general.file_type")
    qname = GGUF_FILE_TYPES.get(ftype) if ftype is not None else None
    if qname is None:
        qname = by_type.most_common(1)[0][0] if by_type else "f32"
    emb = sum(t["numel"] for t in tensors if t["name"] == "token_embd.weight")
    out = sum(t["numel"] for t in tensors if t["name"] == "output.weight")
    window = m("attention.sliding_window")
    info = ModelInfo(
        source=str(path), architecture=arch, model_type=arch, format="gguf",
        params=sum(t["numel"] for t in tensors), params_source="headers",
        checkpoint_bytes=sum(t["bytes"] for t in tensors), checkpoint_dtype=qname,
        quantization=f"gguf-{qname}", quantization_config={"file_type": ftype, "tensor_types": dict(by_type)},
        num_layers=int(layers), hidden_size=int(hidden), intermediate_size=m("feed_forward_length"),
        num_heads=int(heads), num_kv_heads=int(kv), head_dim=int(head_dim), vocab_size=int(vocab or 0),
        attention=attention, sliding_window=int(window) if window else None,
        num_sliding_layers=int(layers) if window else 0,
        num_experts=m("expert_count"), experts_per_token=m("expert_used_count"),
        kv_lora_rank=kv_lora, qk_rope_head_dim=m("rope.dimension_count") if kv_lora else None,
        max_positions=int(m("context_length", 2048)), tied_embeddings="output.weight" not in names,
        weights_format="gguf", embedding_params=emb, lm_head_params=out, files=[path.name],
    )
    info.linear_params = info.params - emb - out
    return info


# ---------------------------------------------------------------------------------------------
# folders and hub ids


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidModel(f"{path.name} is not valid JSON ({e}): fix or re-download it") from None
    if not isinstance(data, dict):
        raise InvalidModel(f"{path.name} is not a JSON object: fix or re-download it")
    return data


def _info_from_config(source: str, cfg: dict) -> ModelInfo:
    facts = arch_facts(cfg)
    counts = params_from_config(cfg)
    quant, qcfg = quantization_from_config(_text_config(cfg) if "quantization_config" not in cfg else cfg)
    dtype = str(_text_config(cfg).get("torch_dtype") or cfg.get("dtype") or "float32")
    info = ModelInfo(source=source, **facts, params=counts["total"], params_source="config",
                     checkpoint_dtype=dtype, quantization=quant, quantization_config=qcfg,
                     embedding_params=counts["embedding"], lm_head_params=counts["lm_head"],
                     linear_params=counts["linear"])
    info.checkpoint_bytes = info.params * DTYPE_BYTES.get(dtype, 2)
    if info.requires_remote_code:
        info.notes.append("config.json names custom code (auto_map); toolkit never imports it")
    return info


def _apply_tensors(info: ModelInfo, tensors: dict[str, dict]) -> None:
    bits = None
    if info.quantization_config:
        bits = info.quantization_config.get("bits") or info.quantization_config.get("w_bit")
        groups = info.quantization_config.get("config_groups")
        if isinstance(groups, dict) and groups:
            bits = next(iter(groups.values())).get("weights", {}).get("num_bits", bits)
    c = count_tensors(tensors, int(bits) if bits else None)
    config_params = info.params
    info.params, info.params_source, info.checkpoint_bytes = c["params"], "headers", c["bytes"]
    if c["dtype"]:
        info.checkpoint_dtype = c["dtype"]
    if c["embedding"]:
        info.embedding_params = c["embedding"]
    info.lm_head_params = c["lm_head"]
    info.tied_embeddings = info.tied_embeddings and not c["lm_head"]
    if config_params and abs(config_params - info.params) > 0.005 * info.params:
        info.notes.append(f"config-derived count {config_params} differs from headers {info.params}")


def _inspect_folder(path: Path) -> ModelInfo:
    cfg_path = path / "config.json"
    files = sorted(p.name for p in path.iterdir() if p.is_file())
    ggufs = [f for f in files if f.endswith(".gguf")]
    if not cfg_path.exists():
        if len(ggufs) == 1:
            return _inspect_gguf(path / ggufs[0])
        raise InvalidModel(f"{path} has no config.json: point at a Hugging Face model folder, an MLX folder "
                           "or a single .gguf file")
    cfg = _load_json(cfg_path)
    info = _info_from_config(str(path), cfg)
    info.files = files
    shards = [f for f in files if f.endswith(".safetensors")]
    index_path = path / "model.safetensors.index.json"
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES) and not f.startswith("training_args")]
    if info.quantization.startswith("mlx-"):
        info.format = "mlx"
    if shards:
        tensors: dict[str, dict] = {}
        for s in shards:
            tensors.update(read_safetensors_header(path / s))
        expected = None
        if index_path.exists():
            idx = _load_json(index_path)
            expected = set((idx.get("weight_map") or {}).values())
        if expected and not expected <= set(shards):
            info.notes.append(f"missing shards: {sorted(expected - set(shards))}; counts from the index")
            _apply_index(info, _load_json(index_path))
        else:
            _apply_tensors(info, tensors)
        info.format = "mlx" if info.quantization.startswith("mlx-") else "safetensors"
        info.weights_format = "safetensors"
    elif index_path.exists():
        _apply_index(info, _load_json(index_path))
        info.format = "safetensors"
        info.weights_format = "safetensors"
        info.notes.append("shards not present locally; params derived from the index total_size")
    elif pickles:
        # Never unpickle: loading a pickle runs arbitrary code. Sizes come from the config.
        info.format = info.weights_format = "pickle"
        bin_index = path / "pytorch_model.bin.index.json"
        if bin_index.exists():
            total = (_load_json(bin_index).get("metadata") or {}).get("total_size")
            if total:
                info.checkpoint_bytes = int(total)
        info.notes.append(f"pickle weights ({', '.join(pickles)}) were not opened; params computed from config."
                          " Convert to safetensors to load them safely")
    elif ggufs:
        return _inspect_gguf(path / ggufs[0])
    elif not info.quantization.startswith("mlx-"):
        info.format = "config-only"
    return info


def _apply_index(info: ModelInfo, idx: dict) -> None:
    total = (idx.get("metadata") or {}).get("total_size")
    if not total:
        raise InvalidModel("model.safetensors.index.json has no metadata.total_size: re-download it")
    info.checkpoint_bytes = int(total)
    if info.quantization == "none":
        per = DTYPE_BYTES.get(info.checkpoint_dtype or "", 2)
        info.params = int(total) // per
        info.params_source = "index"


def _inspect_hub(repo_id: str, revision: str | None) -> ModelInfo:
    try:
        import huggingface_hub as hub
    except ImportError:
        raise BackendUnavailable(
            f"{repo_id!r} is not a local path, and reading hub models needs huggingface_hub: "
            "pip install 'toolkit[hub]' (or pass a local folder)"
        ) from None
    try:
        cfg_file = hub.hf_hub_download(repo_id, "config.json", revision=revision)
    except Exception as e:  # RepositoryNotFoundError, EntryNotFoundError, offline with empty cache...
        from huggingface_hub import constants

        offline = ("; HF_HUB_OFFLINE is set, so only the local hub cache was searched: unset it, or run "
                   f"`toolkit fetch {repo_id}` on a connected machine" if constants.HF_HUB_OFFLINE else "")
        raise ModelNotFound(
            f"cannot read config.json of {repo_id!r} from the Hugging Face hub ({type(e).__name__}): check "
            f"the id and revision, log in with `hf auth login` for gated models, or pass a local folder{offline}"
        ) from None
    info = _info_from_config(repo_id, _load_json(Path(cfg_file)))
    try:
        meta = hub.get_safetensors_metadata(repo_id, revision=revision)
        tensors = {}
        for fmeta in meta.files_metadata.values():
            for name, t in fmeta.tensors.items():
                tensors[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": list(t.data_offsets)}
        _apply_tensors(info, tensors)
        info.format = info.weights_format = "safetensors"
    except Exception:
        try:
            idx = hub.hf_hub_download(repo_id, "model.safetensors.index.json", revision=revision)
            _apply_index(info, _load_json(Path(idx)))
            info.format = info.weights_format = "safetensors"
        except Exception:
            info.notes.append("no safetensors metadata found on the hub; params computed from config")
    if info.quantization.startswith("mlx-"):
        info.format = "mlx"
    return info


def inspect(model: str | os.PathLike, *, revision: str | None = None, trust_remote_code: bool = False) -> ModelInfo:
    """Describe a model from its metadata, without loading its weights.

    Args:
        model: A local folder, a ``.gguf`` file, or a hub id ``org/name``.
        revision: Hub revision (branch, tag or commit) for hub ids.
        trust_remote_code: Recorded only; toolkit never imports code from a model folder.

    Returns:
        The model's ``ModelInfo``.

    Raises:
        ModelNotFound: The path does not exist and is not a hub id.
        InvalidModel: A config, index or header is corrupt or lacks required keys.
        BackendUnavailable: A hub id was given and huggingface_hub is not installed.
    """
    path = Path(os.path.expanduser(os.fspath(model)))
    if path.is_dir():
        info = _inspect_folder(path)
    elif path.is_file():
        if path.suffix == ".gguf":
            info = _inspect_gguf(path)
        elif path.suffix in PICKLE_SUFFIXES:
            raise InvalidModel(f"{path.name} is a pickle checkpoint, which toolkit never opens: "
                               "pass its folder (config.json) or convert it to safetensors")
        elif path.name == "config.json":
            info = _inspect_folder(path.parent)
        else:
            raise InvalidModel(f"{path.name} is not a model toolkit reads: pass a model folder or a .gguf file")
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", os.fspath(model)) and not os.fspath(model).startswith((".", "/")):
        info = _inspect_hub(os.fspath(model), revision)
    else:
        raise ModelNotFound(f"{os.fspath(model)!r} does not exist: pass a model folder, a .gguf file or a hub "
                            "id like 'Qwen/Qwen2.5-0.5B'")
    if info.requires_remote_code and not trust_remote_code:
        info.notes.append("loading it will need trust_remote_code=True")
    return info


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``toolkit inspect`` flags."""
    parser.add_argument("model", help="model folder, .gguf file or hub id")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main_inspect(args: argparse.Namespace) -> int:
    """``toolkit inspect MODEL``: print what the model is."""
    info = inspect(args.model, revision=getattr(args, "revision", None))
    if getattr(args, "json", False):
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    for k, v in info.to_dict().items():
        if k in ("files", "quantization_config") or v in (None, [], 0):
            continue
        if k == "checkpoint_bytes":
            v = f"{v} ({v / 2**30:.2f} GiB)"
        print(f"{k:<22} {v}")
    return 0

from toolkit import _make_callable  # noqa: E402  (toolkit.inspect(...) calls inspect())

_make_callable(__name__)
