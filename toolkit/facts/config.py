"""Architecture facts and parameter counts from a model's config.json alone: layers, heads, KV
heads, attention kind (MHA/GQA/MQA/MLA, sliding windows), MoE, maximum positions, and which
quantization the config declares. Pure functions of a dict."""

from __future__ import annotations

from typing import Any

from toolkit.errors import InvalidModel

_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "gpt_neo", "opt", "bloom"}


def _get(cfg: dict, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def text_config(cfg: dict) -> dict:
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
    cfg = text_config(cfg)
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
        # MLA's per-head key is qk_nope + qk_rope; head_dim holds the nope part (DeepSeek's configs have no
        # head_dim, and hidden // heads equals qk_nope_head_dim only by chance: 2048 / 16 = 128 in V2-Lite)
        head_dim = int(cfg.get("qk_nope_head_dim") or head_dim)
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
        "moe_intermediate_size": int(_get(cfg, "moe_intermediate_size", default=inter)) if experts and inter else None,
        "moe_layers": moe_layer_count(cfg, layers) if experts else 0,
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
    cfg = text_config(cfg)
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
    moe_layers, moe_lin, moe_other = moe_counts(cfg, f["num_experts"], h, inter, L)
    dense_layers = L - moe_layers
    linear = L * attn_lin + dense_layers * dense_mlp + moe_layers * moe_lin
    other = L * (attn_other + norms) + moe_layers * moe_other + h
    return {"total": embedding + lm_head + linear + other, "embedding": embedding, "lm_head": lm_head,
            "linear": linear}


def moe_counts(cfg: dict, experts: int | None, h: int, inter: int, layers: int) -> tuple[int, int, int]:
    """(MoE layers, linear weights of one MoE layer, other weights of one) for a config's experts:
    routed experts, shared experts (DeepSeek's count, Qwen-MoE's own width and gate), the router and
    DeepSeek-V3's score bias; dense layers first (first_k_dense_replace) or between (moe_layer_freq,
    mlp_only_layers) are not MoE layers."""
    if not experts:
        return 0, 0, 0
    moe_inter = int(_get(cfg, "moe_intermediate_size", default=inter))
    linear = experts * 3 * h * moe_inter
    other = experts * h  # router
    shared_n = cfg.get("n_shared_experts") or 0
    if shared_n:
        linear += 3 * h * moe_inter * shared_n
    shared_inter = cfg.get("shared_expert_intermediate_size") or 0
    if shared_inter:
        linear += 3 * h * shared_inter
        other += h  # shared_expert_gate (Qwen2-MoE)
    if cfg.get("topk_method") == "noaux_tc":
        other += experts  # e_score_correction_bias (DeepSeek-V3)
    return moe_layer_count(cfg, layers), linear, other


def moe_layer_count(cfg: dict, layers: int) -> int:
    """The decoder layers with experts: dense layers first (first_k_dense_replace) or between
    (moe_layer_freq / decoder_sparse_step, mlp_only_layers) are not counted."""
    first_dense = int(cfg.get("first_k_dense_replace", 0) or 0)
    freq = int(cfg.get("moe_layer_freq", cfg.get("decoder_sparse_step", 1)) or 1)
    only_dense = set(cfg.get("mlp_only_layers") or [])
    return sum(1 for i in range(layers) if i >= first_dense and i % freq == 0 and i not in only_dense)


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
