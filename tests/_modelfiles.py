"""Write small real model files (safetensors, GGUF, pickle) in pure Python for the tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

ST_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "U8": 1, "I8": 1}

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 4096, "hidden_size": 256,
    "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 2048, "tie_word_embeddings": False, "torch_dtype": "float32",
    "rms_norm_eps": 1e-5,
}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """Write a valid safetensors file of zeros; return the data size (sum of tensor bytes)."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = ST_BYTES[dtype]
        for s in shape:
            n *= s
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)  # sparse zeros, never written
    return offset


def llama_tensors(cfg: dict, dtype: str = "F32") -> dict[str, tuple[str, list[int]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = h // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    t = {"model.embed_tokens.weight": (dtype, [v, h]), "model.norm.weight": (dtype, [h]),
         "lm_head.weight": (dtype, [v, h])}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        t.update({p + "self_attn.q_proj.weight": (dtype, [h, h]), p + "self_attn.k_proj.weight": (dtype, [kv, h]),
                  p + "self_attn.v_proj.weight": (dtype, [kv, h]), p + "self_attn.o_proj.weight": (dtype, [h, h]),
                  p + "mlp.gate_proj.weight": (dtype, [i, h]), p + "mlp.up_proj.weight": (dtype, [i, h]),
                  p + "mlp.down_proj.weight": (dtype, [h, i]), p + "input_layernorm.weight": (dtype, [h]),
                  p + "post_attention_layernorm.weight": (dtype, [h])})
    return t


def gptq_tensors(cfg: dict, group: int = 128) -> dict[str, tuple[str, list[int]]]:
    """GPTQ layout: qweight int32 [in/8, out], qzeros int32 [in/g, out/8], scales fp16 [in/g, out], g_idx [in]."""
    t = {}
    for name, (dtype, shape) in llama_tensors(cfg, "F16").items():
        if ".layers." in name and name.endswith("proj.weight"):
            out_f, in_f = shape
            base = name[: -len(".weight")]
            t[base + ".qweight"] = ("I32", [in_f // 8, out_f])
            t[base + ".qzeros"] = ("I32", [in_f // group, out_f // 8])
            t[base + ".scales"] = ("F16", [in_f // group, out_f])
            t[base + ".g_idx"] = ("I32", [in_f])
        else:
            t[name] = (dtype, shape)
    return t


def make_folder(path: Path, cfg: dict, tensors: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        write_safetensors(path / "model.safetensors", tensors)
    return path


def _gguf_str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path: Path, *, layers: int = 2, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
               vocab: int = 128, ctx: int = 4096, ffn: int = 128) -> tuple[int, int]:
    """Write a minimal GGUF v3 file (q4_0 matrices, f32 norms, file_type Q4_0). Returns (params, bytes)."""
    kvs = [("general.architecture", 8, _gguf_str("llama")), ("general.file_type", 4, struct.pack("<I", 2)),
           ("llama.block_count", 4, struct.pack("<I", layers)), ("llama.context_length", 4, struct.pack("<I", ctx)),
           ("llama.embedding_length", 4, struct.pack("<I", hidden)),
           ("llama.feed_forward_length", 4, struct.pack("<I", ffn)),
           ("llama.attention.head_count", 4, struct.pack("<I", heads)),
           ("llama.attention.head_count_kv", 4, struct.pack("<I", kv_heads)),
           ("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, vocab) + b"".join(_gguf_str(f"t{i}") for i in range(vocab)))]
    kvd = hidden // heads * kv_heads
    tensors = [("token_embd.weight", [hidden, vocab], 2), ("output_norm.weight", [hidden], 0),
               ("output.weight", [hidden, vocab], 2)]
    for b in range(layers):
        tensors += [(f"blk.{b}.attn_q.weight", [hidden, hidden], 2), (f"blk.{b}.attn_k.weight", [hidden, kvd], 2),
                    (f"blk.{b}.attn_v.weight", [hidden, kvd], 2), (f"blk.{b}.attn_output.weight", [hidden, hidden], 2),
                    (f"blk.{b}.ffn_gate.weight", [hidden, ffn], 2), (f"blk.{b}.ffn_up.weight", [hidden, ffn], 2),
                    (f"blk.{b}.ffn_down.weight", [ffn, hidden], 2), (f"blk.{b}.attn_norm.weight", [hidden], 0),
                    (f"blk.{b}.ffn_norm.weight", [hidden], 0)]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
    for k, t, v in kvs:
        out += _gguf_str(k) + struct.pack("<I", t) + v
    params = nbytes = offset = 0
    for name, shape, ttype in tensors:
        n = 1
        for s in shape:
            n *= s
        size = n * 4 if ttype == 0 else n // 32 * 18
        out += _gguf_str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", s) for s in shape)
        out += struct.pack("<IQ", ttype, offset)
        offset += size + (-size % 32)
        params += n
        nbytes += size
    out += b"\0" * (-len(out) % 32)
    path.write_bytes(bytes(out) + b"\0" * offset)
    return params, nbytes
