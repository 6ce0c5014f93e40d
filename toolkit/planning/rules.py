"""Which backend can run which quantization of a model on which device, and in which dtype.

Pure functions of the backend records in :mod:`toolkit.capabilities`, the model's facts and the
device's: the planner asks these, so a new backend needs only its record.
"""

from __future__ import annotations

from toolkit import capabilities as caps
from toolkit.errors import InvalidSpec
from toolkit.facts.devices import Device
from toolkit.facts.model_info import ModelInfo
from toolkit.planning import memory as mem

BF16_MIN_CC = (8, 0)  # bf16 tensor cores arrive with Ampere (cc 8.0)
# Folders read as transformers checkpoints whatever their weights' state (pickles are refused at load).
_FOLDER_FORMATS = ("safetensors", "pickle", "config-only")


def cc_at_least(device: Device, cc: tuple[int, int]) -> bool:
    return device.compute_capability is not None and tuple(device.compute_capability) >= cc


def _readers(fmt: str) -> list[str]:
    fmt = "safetensors" if fmt in _FOLDER_FORMATS else fmt
    return [n for n, b in caps.BACKENDS.items() if b.planned and fmt in b.formats]


def backend_problem(backend: str, quant: str, info: ModelInfo, device: Device) -> str | None:
    """Why ``backend`` cannot run ``quant`` of this model on this device, or None."""
    b = caps.backend(backend)
    kind = device.kind
    if kind not in b.quantizations:
        return f"backend not supported on {kind} ({b.description})"
    if kind == "cuda" and b.min_compute_capability and not cc_at_least(device, b.min_compute_capability):
        need = ".".join(map(str, b.min_compute_capability))
        return f"{backend} needs compute capability >= {need}, device has {device.compute_capability}"
    fmt = "safetensors" if info.format in _FOLDER_FORMATS else info.format
    if fmt not in b.formats:
        readers = _readers(info.format)
        if b.formats == ("gguf",):
            return f"{backend} needs a GGUF file (convert with llama.cpp's convert_hf_to_gguf.py)"
        return f"{backend} cannot load a {info.format} model directly: use {' or '.join(readers) or 'another tool'}"
    if not b.runs(quant, kind):
        where = [n for n, other in caps.BACKENDS.items() if other.planned and other.runs(quant, kind)]
        anywhere = [n for n, other in caps.BACKENDS.items() if other.planned and other.runs(quant)]
        if where:
            return f"{backend} does not run {quant} on {kind}: use {' or '.join(where)}"
        if anywhere:
            return f"{quant} does not run on {kind} ({' or '.join(anywhere)} run it elsewhere)"
        return f"no backend runs {quant}"
    return None


def candidate_quants(info: ModelInfo, backend: str) -> list[str]:
    """The quantizations to try: a prequantized checkpoint as it is (never re-quantized), else what the
    backend makes at load time, least lossy first."""
    if info.quantization != "none":
        return [info.quantization]
    return list(caps.backend(backend).made_at_load) or [info.quantization]


def choose_dtype(info: ModelInfo, device: Device, backend: str, quant: str, wanted: str | None) -> str:
    """Compute dtype. Raises InvalidSpec when ``wanted`` cannot run here."""
    ckpt = mem.normalize_dtype(info.checkpoint_dtype)
    if wanted:
        wanted = mem.normalize_dtype(wanted)
        if wanted not in mem.DTYPES:
            raise InvalidSpec(f"unknown dtype {wanted!r}: use bfloat16, float16 or float32")
        if device.kind == "cuda" and wanted == "bfloat16" and not cc_at_least(device, BF16_MIN_CC):
            raise InvalidSpec(f"bfloat16 needs compute capability >= 8.0, the device has "
                              f"{device.compute_capability}: use --dtype float16")
        return wanted
    b = caps.backend(backend)
    if backend == "llamacpp" or quant.startswith(("gptq-", "awq-", "ct-")):
        # llama.cpp computes and caches K/V in f16; GPTQ/AWQ kernels (exllama, marlin, gemm) run in fp16
        return b.default_dtype.get(device.kind, "float16") if backend == "llamacpp" else "float16"
    if device.kind == "cuda":
        if ckpt == "float16" or not cc_at_least(device, BF16_MIN_CC):
            return "float16"
        return "bfloat16"
    if device.kind == "mps" and backend == "mlx":
        return ckpt if ckpt in ("bfloat16", "float16") else "float16"  # mlx keeps a half checkpoint's dtype
    return b.default_dtype.get(device.kind, "float32")
