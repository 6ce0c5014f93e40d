"""safetensors files, read from their header only: the tensor table (names, dtypes, shapes, byte
offsets), never the tensor data. The one reader inspect, fetch, the vLLM backend and the LoRA checks
share."""

from __future__ import annotations

import json
import os
import re
import struct
from collections import Counter
from pathlib import Path

from toolkit.errors import InvalidModel

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
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Tensors that are quantization metadata, not model parameters (GPTQ/AWQ/compressed-tensors/bnb/MLX).
_AUX_SUFFIXES = (".scales", ".qzeros", ".g_idx", ".weight_scale", ".weight_zero_point", ".weight_g_idx",
                 ".weight_shape", ".SCB", ".weight_format", ".absmax", ".quant_map", ".nested_absmax",
                 ".nested_quant_map", ".input_scale", ".biases", ".zeros")
# Non-parameter buffers some checkpoints store (rotary inv_freq in old Llama, GPT-2's causal mask).
_BUFFER_PATTERNS = (re.compile(r"rotary_emb\.inv_freq$"), re.compile(r"\.attn\.(masked_)?bias$"))
MAX_HEADER_BYTES = 100 * 2**20  # safetensors refuses headers above 100 MB (safetensors lib N_MAX)


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


_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_LOADED_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def loaded_bytes(folder: str | os.PathLike, dtype: str) -> int | None:
    """Bytes of a folder's safetensors tensors as an engine holds them when loaded in ``dtype``:
    floating tensors at ``dtype``, packed integer tensors (GPTQ/AWQ qweight, zeros) as stored.
    None when the folder has no safetensors file."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    size = _LOADED_DTYPE_BYTES.get(dtype)
    total = 0
    for file in files:
        for info in read_safetensors_header(file).values():
            kind = info["dtype"]
            per = size if (kind in _FLOAT_DTYPES and size) else SAFETENSORS_DTYPE_BYTES.get(kind, 1)
            total += _numel(info["shape"]) * per
    return total
