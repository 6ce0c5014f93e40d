"""Choose how to run a model on a device: backend, quantization, dtype and context that fit.

``plan()`` is a pure function of (ModelInfo, Device, wishes): it enumerates backend x
quantization candidates, prices each with ``toolkit.memory`` and keeps the least lossy one that
fits, explaining every rejected alternative.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace

from toolkit import memory as mem
from toolkit.errors import InvalidSpec, NothingFits
from toolkit.hardware import Device, device_for, device_from_spec, parse_memory, with_gpus
from toolkit.inspect import ModelInfo, inspect

GiB = 2**30
MiB = 2**20
# Never plan below this context unless the model's own maximum is smaller: 2048 tokens holds a
# typical chat turn and its answer (and is Llama-1/2-era models' training length).
MIN_CONTEXT = 2048
BACKENDS = ("hf", "vllm", "llamacpp", "mlx")
# Backends tried on each device kind, in order of preference for equal quality.
BACKEND_ORDER = {"cuda": ("hf", "vllm", "llamacpp"), "cuda-multi": ("vllm", "hf", "llamacpp"),
                 "cpu": ("hf", "llamacpp", "vllm", "mlx"), "mps": ("mlx", "hf", "llamacpp")}
VLLM_MIN_CC = (7, 0)  # vLLM's supported GPUs: compute capability 7.0 or higher (vLLM install docs)
BF16_MIN_CC = (8, 0)  # bf16 tensor cores arrive with Ampere (cc 8.0)
QUANTIZATIONS = ("none", "bnb-8bit", "bnb-4bit", "gptq-4bit", "gptq-8bit", "awq-4bit", "ct-gptq-4bit",
                 "ct-awq-4bit", "mlx-4bit", "mlx-8bit")


@dataclass
class MemoryBreakdown:
    """Predicted bytes per component; ``total_bytes <= budget_bytes`` for a chosen plan."""

    budget_bytes: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    total_bytes: int

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class Plan:
    """How to run a model on a device, with the memory it needs and why it was chosen."""

    model: str
    params: int
    backend: str
    quantization: str
    dtype: str
    kv_dtype: str
    max_context: int
    batch: int
    tensor_parallel: int
    device: dict
    memory: MemoryBreakdown
    reasons: list[str] = field(default_factory=list)
    alternatives: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return the ``toolkit plan --json`` object (see DESIGN.md)."""
        d = asdict(self)
        d["memory"] = self.memory.to_dict()
        return d

    def to_table(self) -> str:
        """Readable fixed-width text: the choice, the memory breakdown, reasons and alternatives."""
        m = self.memory
        lines = [
            f"model          {self.model} ({self.params / 1e9:.2f}B params)",
            f"device         {self.device.get('name')} x{self.device.get('count', 1)} ({self.device.get('kind')})",
            f"backend        {self.backend}" + (f"  tensor_parallel={self.tensor_parallel}" if self.tensor_parallel > 1 else ""),
            f"quantization   {self.quantization}",
            f"dtype          {self.dtype}  (kv cache {self.kv_dtype})",
            f"max_context    {self.max_context}  batch {self.batch}",
            "",
            "memory",
        ]
        for k in ("weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes", "total_bytes", "budget_bytes"):
            lines.append(f"  {k.removesuffix('_bytes'):<12} {_fmt(getattr(m, k)):>12}")
        lines.append(f"  {'kv/token':<12} {_fmt(m.kv_bytes_per_token):>12}")
        lines += ["", "reasons"] + [f"  - {r}" for r in self.reasons]
        if self.alternatives:
            lines += ["", "alternatives"]
            for a in self.alternatives:
                lines.append(f"  {a['backend']:<9} {a['quantization']:<13} {a.get('dtype') or '':<9} {a['rejected']}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        m = self.memory
        head = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in [("model", self.model), ("backend", self.backend), ("quantization", self.quantization),
                         ("dtype", self.dtype), ("kv_dtype", self.kv_dtype), ("max_context", self.max_context),
                         ("batch", self.batch), ("tensor_parallel", self.tensor_parallel)]
        )
        memrows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{_fmt(v)}</td></tr>"
                          for k, v in m.to_dict().items())
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons)
        alts = "".join(
            f"<tr><td>{html.escape(a['backend'])}</td><td>{html.escape(a['quantization'])}</td>"
            f"<td>{html.escape(str(a['rejected']))}</td></tr>" for a in self.alternatives
        )
        return (f"<table>{head}{memrows}</table><ul>{reasons}</ul>"
                f"<table><tr><th>backend</th><th>quantization</th><th>rejected</th></tr>{alts}</table>")

    def compare(self, measured: dict | int):
        """Predicted vs measured bytes per component.

        Args:
            measured: ``{"weights_bytes": n, "total_bytes": n, ...}`` or an int (total bytes).

        Returns:
            A pandas DataFrame (component, predicted_bytes, measured_bytes, rel_error), or a list
            of the same rows as dicts when pandas is not installed.
        """
        if isinstance(measured, int):
            measured = {"total_bytes": measured}
        pred = self.memory.to_dict()
        rows = []
        for k, v in measured.items():
            key = k if k.endswith("_bytes") or k.endswith("_token") else f"{k}_bytes"
            if key not in pred:
                raise InvalidSpec(f"unknown memory component {k!r}: use one of {', '.join(pred)}")
            rows.append({"component": key, "predicted_bytes": pred[key], "measured_bytes": int(v),
                         "rel_error": (pred[key] - v) / v if v else None})
        try:
            import pandas as pd
        except ImportError:
            return rows
        return pd.DataFrame(rows)


def _fmt(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB else f"{n / MiB:.1f} MiB"


# ---------------------------------------------------------------------------------------------
# rules


def _cc_at_least(device: Device, cc: tuple[int, int]) -> bool:
    return device.compute_capability is not None and tuple(device.compute_capability) >= cc


def _backend_problem(backend: str, quant: str, info: ModelInfo, device: Device) -> str | None:
    """Why ``backend`` cannot run ``quant`` of this model on this device, or None."""
    kind = device.kind
    if backend == "vllm":
        if kind == "mps":
            return "backend not supported on mps"
        if kind == "cuda" and not _cc_at_least(device, VLLM_MIN_CC):
            return f"vllm needs compute capability >= 7.0, device has {device.compute_capability}"
    if backend == "mlx" and kind == "cuda":
        return "backend not supported on cuda (mlx runs on Apple silicon, or on the CPU with mlx[cpu])"
    if backend == "llamacpp" and info.format != "gguf":
        return "llamacpp needs a GGUF file (convert with llama.cpp's convert_hf_to_gguf.py)"
    if info.format == "gguf" and backend != "llamacpp":
        return f"{backend} cannot load a GGUF file directly: use llamacpp"
    if info.format == "mlx" and backend != "mlx":
        return f"an MLX folder is loaded by mlx, not {backend}"
    if quant.startswith("mlx-") and backend != "mlx":
        return f"{quant} is an MLX format: use the mlx backend"
    if quant.startswith("bnb-"):
        if backend == "vllm" and quant == "bnb-8bit":
            return "vllm's in-flight bitsandbytes quantization is 4-bit only"
        if backend not in ("hf", "vllm"):
            return f"bitsandbytes quantization runs in hf/vllm, not {backend}"
        if kind == "mps":
            return "bitsandbytes has no MPS support"
    if quant.startswith(("gptq-", "awq-", "ct-")):
        if backend not in ("hf", "vllm"):
            return f"{quant} checkpoints load in hf or vllm, not {backend}"
        if kind == "mps":
            return f"{quant} kernels need CUDA or the CPU (gptqmodel/compressed-tensors torch kernels), not mps"
    if backend == "vllm" and kind == "cpu" and quant != "none":
        return f"vllm's CPU backend does not run {quant}"
    return None


def _candidate_quants(info: ModelInfo, backend: str) -> list[str]:
    if info.quantization != "none":
        return [info.quantization]  # prequantized: never re-quantize
    if backend == "mlx":
        return ["none", "mlx-8bit", "mlx-4bit"]
    if backend == "llamacpp":
        return [info.quantization]
    return ["none", "bnb-8bit", "bnb-4bit"]


def _choose_dtype(info: ModelInfo, device: Device, backend: str, quant: str, wanted: str | None) -> str:
    """Compute dtype. Raises InvalidSpec when ``wanted`` cannot run here."""
    ckpt = mem.normalize_dtype(info.checkpoint_dtype)
    if wanted:
        wanted = mem.normalize_dtype(wanted)
        if wanted not in mem.DTYPES:
            raise InvalidSpec(f"unknown dtype {wanted!r}: use bfloat16, float16 or float32")
        if device.kind == "cuda" and wanted == "bfloat16" and not _cc_at_least(device, BF16_MIN_CC):
            raise InvalidSpec(f"bfloat16 needs compute capability >= 8.0, the device has "
                              f"{device.compute_capability}: use --dtype float16")
        return wanted
    if backend == "llamacpp":
        return "float16"  # llama.cpp computes and caches K/V in f16 by default
    if quant.startswith(("gptq-", "awq-", "ct-")):
        return "float16"  # GPTQ/AWQ kernels (exllama, marlin, gemm) run in fp16
    if device.kind == "cuda":
        if ckpt == "float16" or not _cc_at_least(device, BF16_MIN_CC):
            return "float16"
        return "bfloat16"
    if device.kind == "mps":
        return ckpt if backend == "mlx" and ckpt in ("bfloat16", "float16") else "float16"
    # CPU: hf defaults to float32 (bf16 matmuls are slow or missing without AVX512-BF16/AMX);
    # vLLM's CPU backend runs bf16.
    return "bfloat16" if backend == "vllm" else "float32"


@dataclass
class _Candidate:
    backend: str
    quantization: str
    dtype: str | None = None
    kv_dtype: str | None = None
    tensor_parallel: int = 1
    problem: str | None = None
    budget: int = 0


def _breakdown(info: ModelInfo, device: Device, c: _Candidate, context: int, batch: int) -> mem.MemoryBreakdown:
    w = mem.weights_bytes(info, c.quantization, c.dtype, backend=c.backend, device_kind=device.kind)
    latent = c.backend != "hf"
    kvt = mem.kv_bytes_per_token(info, c.kv_dtype, mla_latent=latent)
    kv = mem.kv_cache_bytes(info, context, batch, c.kv_dtype, mla_latent=latent)
    act = mem.activation_bytes(info, context, batch, c.dtype, c.backend)
    dev = device if c.backend in ("vllm", "hf") else replace(device, count=1) if device.kind != "cuda" else device
    ovh = mem.overhead_bytes(c.backend, dev, weights_bytes=w, quantization=c.quantization)
    return MemoryBreakdown(c.budget, w, kvt, kv, act, ovh, w + kv + act + ovh)


def _max_context(info: ModelInfo, device: Device, c: _Candidate, batch: int, lo: int) -> int:
    hi = info.max_positions
    if _breakdown(info, device, c, hi, batch).total_bytes <= c.budget:
        best = hi
    else:
        while hi - lo > 1:  # total is monotone in context
            mid = (lo + hi) // 2
            if _breakdown(info, device, c, mid, batch).total_bytes <= c.budget:
                lo = mid
            else:
                hi = mid
        best = lo
    if c.backend == "vllm":
        best -= best % mem.VLLM_BLOCK_SIZE
    return best


def _as_info(model: str | os.PathLike | ModelInfo) -> ModelInfo:
    return model if isinstance(model, ModelInfo) else inspect(model)


def _as_device(device: Device | str | None, gpus: int | None) -> Device:
    if device is None:
        dev = device_for()
    elif isinstance(device, str):
        dev = device_for(kind=device) if device.lower() in ("cuda", "cpu", "mps", "gpu") else device_from_spec(device)
    else:
        dev = device
    return with_gpus(dev, gpus)


def _alt(info: ModelInfo, c: _Candidate, ctx: int, batch: int, m: mem.MemoryBreakdown | None, rejected: str) -> dict:
    return {"model": info.source, "params": info.params, "backend": c.backend, "quantization": c.quantization,
            "dtype": c.dtype, "kv_dtype": c.kv_dtype, "max_context": ctx, "batch": batch,
            "tensor_parallel": c.tensor_parallel, "memory": m.to_dict() if m else None, "rejected": rejected,
            "fits": m is not None and m.total_bytes <= m.budget_bytes}


def plan(model: str | os.PathLike | ModelInfo, device: Device | str | None = None, *, backend: str | None = None,
         quantization: str | None = None, dtype: str | None = None, context: int | None = None, batch: int = 1,
         gpus: int | None = None, kv_dtype: str | None = None) -> Plan:
    """Plan how to run ``model`` on ``device``.

    Args:
        model: A path, hub id or ``ModelInfo``.
        device: A ``Device``, a spec (``"T4"``, ``"2xH100"``, ``"24GiB"``, ``"cpu:16GiB"``,
            ``"cuda"``) or None to probe this machine.
        backend: Force ``hf``, ``vllm``, ``llamacpp`` or ``mlx``.
        quantization: Force a quantization (``none``, ``bnb-8bit``, ``bnb-4bit``, ``mlx-4bit``...).
        dtype: Force ``bfloat16``, ``float16`` or ``float32``.
        context: Wanted context; default the model's maximum positions (falling back to the
            minimum of 2048 tokens when nothing fits the maximum).
        batch: Concurrent sequences.
        gpus: Number of GPUs (tensor parallel for vllm, device_map sharding for hf).
        kv_dtype: KV cache dtype (default: the compute dtype; ``fp8`` for vllm, ``q8_0`` for llama.cpp).

    Returns:
        The chosen ``Plan`` with ranked alternatives.

    Raises:
        InvalidSpec: An explicit wish cannot be honoured (the message says why).
        NothingFits: No candidate fits; ``needed_bytes`` is the smallest memory that would.
    """
    info = _as_info(model)
    dev = _as_device(device, gpus)
    if batch < 1:
        raise InvalidSpec(f"batch must be at least 1, got {batch}")
    if backend is not None and backend not in BACKENDS:
        raise InvalidSpec(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if quantization is not None:
        quantization = quantization.lower()
        if quantization not in QUANTIZATIONS and not quantization.startswith("gguf-"):
            raise InvalidSpec(f"unknown quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)} "
                              "or gguf-<type>")
    if kv_dtype is not None and mem.normalize_dtype(kv_dtype) not in mem.KV_DTYPE_BYTES:
        raise InvalidSpec(f"unknown kv_dtype {kv_dtype!r}: use one of {', '.join(mem.KV_DTYPE_BYTES)}")
    max_pos = info.max_positions
    min_ctx = min(MIN_CONTEXT, max_pos)
    if context is not None:
        if context > max_pos:
            raise InvalidSpec(f"context {context} exceeds the model's maximum positions {max_pos}: "
                              f"use --context {max_pos} or less")
        if context < 1:
            raise InvalidSpec(f"context must be positive, got {context}")
    want_ctx = context or max_pos
    multi = dev.kind == "cuda" and dev.count > 1
    order = BACKEND_ORDER["cuda-multi" if multi else dev.kind]
    reasons: list[str] = []

    # enumerate candidates
    cands: list[_Candidate] = []
    for b in order:
        for q in _candidate_quants(info, b):
            c = _Candidate(b, q)
            if b == "vllm" and dev.kind == "cpu" and backend != "vllm":
                c.problem = "vllm on cpu only when asked for (--backend vllm)"
            if b == "mlx" and dev.kind == "cpu" and backend != "mlx":
                c.problem = "mlx on a non-Apple cpu only when asked for (--backend mlx)"
            c.problem = c.problem or _backend_problem(b, q, info, dev)
            if c.problem is None:
                c.dtype = _choose_dtype(info, dev, b, q, dtype)
                c.kv_dtype = mem.normalize_dtype(kv_dtype) or ("float16" if b == "llamacpp" else c.dtype)
                if dev.count > 1 and b == "vllm":
                    if info.num_heads % dev.count or info.num_kv_heads % dev.count:
                        c.problem = (f"tensor parallel {dev.count} must divide {info.num_heads} attention heads "
                                     f"and {info.num_kv_heads} KV heads")
                    c.tensor_parallel = dev.count
                elif dev.count > 1 and b not in ("hf",):
                    c.problem = f"{b} here plans a single GPU; use vllm (tensor parallel) or hf (device_map)"
                c.budget = mem.budget_bytes(dev, b)
            cands.append(c)

    # explicit wishes: filter, refusing with the reason
    if backend is not None:
        mine = [c for c in cands if c.backend == backend]
        if not mine:
            raise InvalidSpec(f"backend {backend!r} is not available on {dev.kind}: use one of {', '.join(order)}")
        if all(c.problem for c in mine):
            raise InvalidSpec(f"backend {backend!r} cannot run this model here: {mine[0].problem}")
    if quantization is not None:
        mine = [c for c in cands if c.quantization == quantization and (backend is None or c.backend == backend)]
        if not mine:
            own = f" (the checkpoint is already {info.quantization}; it is not re-quantized)" if info.quantization != "none" else ""
            raise InvalidSpec(f"quantization {quantization!r} is not a candidate for this model on {dev.kind}{own}: "
                              f"use one of {', '.join(sorted({c.quantization for c in cands if not c.problem}))}")
        if all(c.problem for c in mine):
            raise InvalidSpec(f"quantization {quantization!r} cannot run here: {mine[0].problem}")

    def wanted(c: _Candidate) -> bool:
        return (backend is None or c.backend == backend) and (quantization is None or c.quantization == quantization)

    usable = [c for c in cands if c.problem is None and wanted(c)]
    rank = {id(c): i for i, c in enumerate(sorted(usable, key=lambda c: (-mem.lossiness_bits(c.quantization),
                                                                         order.index(c.backend))))}
    usable.sort(key=lambda c: rank[id(c)])

    at_want = {id(c): _breakdown(info, dev, c, want_ctx, batch) for c in usable}
    chosen = next((c for c in usable if at_want[id(c)].total_bytes <= c.budget), None)
    eval_ctx = want_ctx
    if chosen is None and context is None and want_ctx > min_ctx:
        at_min = {id(c): _breakdown(info, dev, c, min_ctx, batch) for c in usable}
        chosen = next((c for c in usable if at_min[id(c)].total_bytes <= c.budget), None)
        if chosen is not None:
            reasons.append(f"nothing fits the full {max_pos} positions; planned the least lossy option that fits "
                           f"at least {min_ctx} tokens")
            eval_ctx = min_ctx
    if chosen is None:
        raise _nothing_fits(info, dev, usable, min(min_ctx, want_ctx), batch, cands)

    max_ctx = _max_context(info, dev, chosen, batch, eval_ctx)
    m = _breakdown(info, dev, chosen, max_ctx, batch)

    # reasons
    if info.quantization != "none":
        reasons.append(f"checkpoint is prequantized ({info.quantization}); planned as is, never re-quantized")
    elif chosen.quantization == "none":
        reasons.append(f"unquantized weights fit ({_fmt(m.weights_bytes)} in {chosen.dtype})")
    else:
        reasons.append(f"unquantized weights do not fit the budget with {eval_ctx} tokens; {chosen.quantization} "
                       "is the least lossy format that does")
    if dev.kind == "cuda" and chosen.dtype in ("bfloat16", "float16") and dtype is None:
        cc = dev.compute_capability
        reasons.append(f"{chosen.dtype}: compute capability {cc[0]}.{cc[1] if cc else ''}"
                       + (" supports bf16" if chosen.dtype == "bfloat16" else " (bf16 needs >= 8.0)" if cc and cc < BF16_MIN_CC else " (checkpoint dtype)")
                       if cc else f"{chosen.dtype} on an unknown GPU")
    if dev.kind == "cpu" and chosen.backend == "hf" and dtype is None:
        reasons.append("float32 on CPU: bf16 matmuls are slow or missing on CPUs without AVX512-BF16/AMX")
    if chosen.tensor_parallel > 1:
        reasons.append(f"tensor parallel across {chosen.tensor_parallel} GPUs with vllm (weights split {chosen.tensor_parallel} ways)")
    elif dev.count > 1 and chosen.backend == "hf":
        reasons.append(f"hf shards layers across {dev.count} GPUs with device_map='auto' (no tensor parallel)")
    if chosen.backend == "vllm":
        reasons.append(f"vllm reserves gpu_memory_utilization={mem.VLLM_GPU_MEMORY_UTILIZATION} of total GPU memory "
                       "minus what other processes use; max_context rounded to its 16-token KV blocks")
    if max_ctx >= max_pos:
        reasons.append(f"max_context is the model's maximum positions ({max_pos})")
    else:
        reasons.append(f"max_context {max_ctx} is the largest context that fits (model maximum {max_pos})")
    if info.weights_format == "pickle":
        reasons.append("weights are pickle files (never opened while planning): convert them to safetensors, "
                       "or load with allow_pickle=True (--allow-pickle) if you trust their source")
    if info.requires_remote_code:
        reasons.append("config.json names shipped Python code (auto_map), never run while planning: loading uses "
                       "the library's built-in implementation when it has one, else needs trust_remote_code=True")

    # alternatives, ranked: fitting ones, then too big (smallest first), then unsupported
    alts_fit, alts_big, alts_bad = [], [], []
    chosen_bits = mem.lossiness_bits(chosen.quantization)
    for c in cands:
        if c is chosen:
            continue
        if c.problem:
            alts_bad.append(_alt(info, c, 0, batch, None, c.problem))
            continue
        if not wanted(c):
            alts_bad.append(_alt(info, c, 0, batch, None, "not what was asked for (--backend/--quantization)"))
            continue
        b = _breakdown(info, dev, c, eval_ctx, batch)
        if b.total_bytes > c.budget:
            alts_big.append((b.total_bytes, _alt(info, c, eval_ctx, batch, b,
                            f"does not fit: needs {_fmt(b.total_bytes)} at {eval_ctx} tokens, budget {_fmt(c.budget)}")))
            continue
        cm = _max_context(info, dev, c, batch, eval_ctx)
        why = ("more lossy than chosen" if mem.lossiness_bits(c.quantization) < chosen_bits
               else f"same quality, {chosen.backend} is preferred on {dev.kind}"
               + (" with several GPUs" if multi else ""))
        alts_fit.append(_alt(info, c, cm, batch, _breakdown(info, dev, c, cm, batch), why))
    alternatives = alts_fit + [a for _, a in sorted(alts_big, key=lambda t: t[0])] + alts_bad

    return Plan(model=info.source, params=info.params, backend=chosen.backend, quantization=chosen.quantization,
                dtype=chosen.dtype, kv_dtype=chosen.kv_dtype, max_context=max_ctx, batch=batch,
                tensor_parallel=chosen.tensor_parallel, device=dev.to_dict(), memory=m, reasons=reasons,
                alternatives=alternatives)


def _nothing_fits(info: ModelInfo, dev: Device, usable: list[_Candidate], ctx: int, batch: int,
                  cands: list[_Candidate]) -> NothingFits:
    if not usable:
        why = "; ".join(sorted({c.problem for c in cands if c.problem}))
        return NothingFits(f"no backend can run {info.source} on {dev.kind}: {why}", needed_bytes=None)
    best = None
    for c in usable:
        b = _breakdown(info, dev, c, ctx, batch)
        need = b.total_bytes
        if c.backend == "vllm" and dev.kind == "cuda":
            need = int(need / mem.VLLM_GPU_MEMORY_UTILIZATION) + 1  # vLLM only uses this fraction
        if best is None or need < best[0]:
            best = (need, c, b)
    need, c, b = best
    n = max(1, dev.count)
    per = f" ({_fmt(need / n)} per GPU)" if n > 1 else ""
    budget = max(x.budget for x in usable)
    return NothingFits(
        f"{info.source} does not fit: the smallest option, {c.quantization} with {c.backend} at {ctx} tokens, "
        f"needs {_fmt(need)}{per} but the budget is {_fmt(budget)} on {dev.name}. Fix: use a device with at least "
        f"{_fmt(need)} (e.g. --memory {math.ceil(need / GiB)}GiB to check), offload with llama.cpp and a GGUF "
        f"(--n-gpu-layers to keep only some layers on the GPU) or hf device_map='auto' with CPU offload "
        f"(max_memory), or pick a smaller model",
        needed_bytes=int(need),
    )


# ---------------------------------------------------------------------------------------------
# CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``toolkit plan`` flags."""
    parser.add_argument("model", help="model folder, .gguf file or hub id")
    parser.add_argument("--memory", default=None, help="memory per device, e.g. 24GiB or 16GB (default: probed)")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps or a spec like T4, A100-80GB, 2xH100, cpu:16GiB")
    parser.add_argument("--gpus", type=int, default=None, help="number of GPUs")
    parser.add_argument("--compute-capability", dest="compute_capability", default=None, help="e.g. 8.0 or 7.5")
    parser.add_argument("--backend", default=None, choices=BACKENDS, help="force a backend")
    parser.add_argument("--quantization", default=None, help="force a quantization (none, bnb-8bit, bnb-4bit, ...)")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16 or float32")
    parser.add_argument("--context", type=int, default=None, help="wanted context in tokens")
    parser.add_argument("--batch", type=int, default=1, help="concurrent sequences")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main_plan(args: argparse.Namespace) -> int:
    """``toolkit plan MODEL``: print the plan (JSON with ``--json``). ToolkitError propagates."""
    memory = getattr(args, "memory", None)
    if memory is not None:
        parse_memory(memory)  # fail early with the parse message
    dev = device_for(memory=memory, kind=getattr(args, "device", None), gpus=getattr(args, "gpus", None),
                     compute_capability=getattr(args, "compute_capability", None))
    p = plan(args.model, dev, backend=getattr(args, "backend", None), quantization=getattr(args, "quantization", None),
             dtype=getattr(args, "dtype", None), context=getattr(args, "context", None),
             batch=getattr(args, "batch", 1) or 1)
    print(json.dumps(p.to_dict(), indent=2) if getattr(args, "json", False) else p.to_table())
    return 0

from toolkit import _make_callable  # noqa: E402  (toolkit.plan(...) calls plan())

_make_callable(__name__)
