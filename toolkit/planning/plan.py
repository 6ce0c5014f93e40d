"""Choose how to run a model on a device: backend, quantization, dtype and context that fit.

``plan()`` is a pure function of (ModelInfo, Device, wishes): it enumerates backend x
quantization candidates (from the backend records in :mod:`toolkit.capabilities`), prices each
with :mod:`toolkit.planning.memory` and keeps the least lossy one that fits, explaining every
rejected alternative.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace

from toolkit import capabilities as caps
from toolkit.errors import InvalidSpec, NothingFits
from toolkit.facts.devices import Device, device_from_spec, with_gpus
from toolkit.facts.model_info import ModelInfo, inspect
from toolkit.facts.probe import device_for
from toolkit.planning import memory as mem
from toolkit.planning.estimate import Candidate as _Candidate
from toolkit.planning.commands import commands
from toolkit.planning.estimate import engine_settings, estimate, kv_candidates, load_extras
from toolkit.planning.splits import across_nodes, fixed_offload, offload_plan
from toolkit.planning.wishes import DEFAULT_CONTEXT, MIN_CONTEXT, Wishes
from toolkit.planning.result import MemoryBreakdown, Plan
from toolkit.planning.rules import BF16_MIN_CC, backend_problem, candidate_quants, choose_dtype
from toolkit.units import GiB
from toolkit.units import fmt_bytes as _fmt

# How much a quantized KV cache costs in quality, for ranking (0 = as the compute dtype) and for the
# reasons. The sentences cite the measurement behind them.
KV_LOSS = {"float32": 0, "bfloat16": 0, "float16": 0, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "q8_0": 1, "q4_0": 2}
# Measured with llama-perplexity on SmolLM2-135M-Instruct Q4_1 (24 chunks x 512 held-out tokens, flash attention,
# KL against the same model with an f16 KV cache); vLLM's fp8 cache was not measured here (no CUDA).
KV_COST = {
    "q8_0": "an 8-bit KV cache (q8_0): perplexity x1.0002 +/- 0.0012, mean KL 0.0038 on SmolLM2-135M",
    "q4_0": "a 4-bit KV cache (q4_0): perplexity x1.052 +/- 0.005, mean KL 0.050, same top token 89.8% "
            "on SmolLM2-135M",
    "fp8": "an fp8 KV cache (vLLM --kv-cache-dtype fp8): a small quality cost (not measured here)",
}


def _breakdown(info: ModelInfo, device: Device, c: _Candidate, context: int, batch: int) -> MemoryBreakdown:
    return estimate(info, device, c, context, batch)


def _fits(info: ModelInfo, device: Device, c: _Candidate, context: int, batch: int) -> bool:
    return _breakdown(info, device, c, context, batch).total_bytes <= c.budget


def _largest(info: ModelInfo, device: Device, c: _Candidate, batch: int, lo: int, hi: int) -> int:
    """The largest context in [lo, hi] that fits (``lo`` must fit); vLLM's rounded to its KV blocks."""
    if _fits(info, device, c, hi, batch):
        best = hi
    else:
        while hi - lo > 1:  # total is monotone in context
            mid = (lo + hi) // 2
            if _fits(info, device, c, mid, batch):
                lo = mid
            else:
                hi = mid
        best = lo
    if c.backend == "vllm" and best % mem.VLLM_BLOCK_SIZE and best > mem.VLLM_BLOCK_SIZE:
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


def _alt(info: ModelInfo, c: _Candidate, ctx: int, batch: int, m: MemoryBreakdown | None, rejected: str) -> dict:
    return {"model": info.source, "params": info.params, "backend": c.backend, "quantization": c.quantization,
            "dtype": c.dtype, "kv_dtype": c.kv_dtype, "max_context": ctx, "batch": batch,
            "tensor_parallel": c.tensor_parallel, "memory": m.to_dict() if m else None, "rejected": rejected,
            "fits": m is not None and m.total_bytes <= m.budget_bytes,
            "settings": engine_settings(c, ctx, batch) if m is not None else {}}


def _check_wishes(info: ModelInfo, w: Wishes) -> None:
    if w.batch < 1:
        raise InvalidSpec(f"batch must be at least 1, got {w.batch}")
    if w.backend is not None and w.backend not in caps.planned_backends():
        raise InvalidSpec(f"unknown backend {w.backend!r}: use one of {', '.join(caps.planned_backends())}")
    if w.quantization is not None and not caps.is_quantization(w.quantization):
        raise InvalidSpec(f"unknown quantization {w.quantization!r}: use one of {', '.join(caps.QUANTIZATIONS)} "
                          "or gguf-<type>")
    if w.kv_dtype is not None:
        kv = mem.normalize_dtype(w.kv_dtype)
        if kv not in mem.KV_DTYPE_BYTES:
            raise InvalidSpec(f"unknown KV cache dtype {w.kv_dtype!r}: use one of {', '.join(caps.kv_dtypes())}")
        if w.backend is not None and kv not in caps.backend(w.backend).kv_dtypes:
            raise InvalidSpec(f"the {w.backend} backend has no {kv} KV cache: use one of "
                              f"{', '.join(caps.backend(w.backend).kv_dtypes)}")
    if isinstance(w.context, str) and w.context != "max":
        raise InvalidSpec(f"context must be a number of tokens or 'max', got {w.context!r}")
    if w.fixed:
        if w.context > info.max_positions:
            raise InvalidSpec(f"context {w.context} exceeds the model's maximum positions {info.max_positions}: "
                              f"use --context {info.max_positions} or less")
        if w.context < 1:
            raise InvalidSpec(f"context must be positive, got {w.context}")


def _candidates(info: ModelInfo, dev: Device, order: tuple[str, ...], w: Wishes) -> list[_Candidate]:
    """Every backend x quantization on this device, each with its problem (None when it can run)."""
    cands: list[_Candidate] = []
    for b in order:
        record = caps.backend(b)
        for q in candidate_quants(info, b):
            c = _Candidate(b, q)
            if dev.kind in record.explicit_only and w.backend != b:
                c.problem = f"{b} on {dev.kind} only when asked for (--backend {b})"
            c.problem = c.problem or backend_problem(b, q, info, dev)
            if c.problem is not None:
                cands.append(c)
                continue
            c.dtype = choose_dtype(info, dev, b, q, w.dtype)
            if dev.count > 1 and b == "vllm":
                tp = dev.count // w.nodes  # tensor parallel within a node, pipeline parallel across nodes
                if info.num_heads % tp or info.num_kv_heads % tp:
                    c.problem = (f"tensor parallel {tp} must divide {info.num_heads} attention heads "
                                 f"and {info.num_kv_heads} KV heads")
                c.tensor_parallel = tp
                if w.nodes > 1:
                    c.settings = {"pipeline_parallel_size": w.nodes}
            elif dev.count > 1 and b not in ("hf",):
                c.problem = f"{b} here plans a single GPU; use vllm (tensor parallel) or hf (device_map)"
            c.budget = mem.budget_bytes(dev, b)
            for kv in kv_candidates(b, c.dtype, w.kv_dtype, dev.kind):
                variant = replace(c, kv_dtype=kv)
                if variant.problem is None and kv not in record.kv_dtypes and kv != c.dtype:
                    variant.problem = f"{b} has no {kv} KV cache (it has {', '.join(record.kv_dtypes)})"
                cands.append(variant)
    return cands


def _refuse_impossible_wishes(info: ModelInfo, dev: Device, order: tuple[str, ...], cands: list[_Candidate],
                              w: Wishes) -> None:
    """An explicit backend or quantization that no candidate can honour is an error, with the reason."""
    if w.backend is not None:
        mine = [c for c in cands if c.backend == w.backend]
        if not mine:
            raise InvalidSpec(f"backend {w.backend!r} is not available on {dev.kind}: use one of {', '.join(order)}")
        if all(c.problem for c in mine):
            raise InvalidSpec(f"backend {w.backend!r} cannot run this model here: {mine[0].problem}")
    if w.quantization is not None:
        mine = [c for c in cands if c.quantization == w.quantization and (w.backend is None or c.backend == w.backend)]
        if not mine:
            own = (f" (the checkpoint is already {info.quantization}; it is not re-quantized)"
                   if info.quantization != "none" else "")
            raise InvalidSpec(f"quantization {w.quantization!r} is not a candidate for this model on {dev.kind}{own}: "
                              f"use one of {', '.join(sorted({c.quantization for c in cands if not c.problem}))}")
        if all(c.problem for c in mine):
            raise InvalidSpec(f"quantization {w.quantization!r} cannot run here: {mine[0].problem}")


def plan(model: str | os.PathLike | ModelInfo, device: Device | str | None = None, *, backend: str | None = None,
         quantization: str | None = None, dtype: str | None = None, context: int | str | None = None, batch: int = 1,
         gpus: int | None = None, kv_dtype: str | None = None, n_gpu_layers: int | None = None,
         nodes: int | None = None, host_memory: int | None = None) -> Plan:
    """Plan how to run ``model`` on ``device``.

    Args:
        model: A path, hub id, ``ModelInfo``, or a built-in model's name (``"tiny"``, ``"smollm2"``:
            the variant that ``backend``/``quantization`` ask for, built on first use).
        device: A ``Device``, a spec (``"T4"``, ``"2xH100"``, ``"24GiB"``, ``"cpu:16GiB"``,
            ``"cuda"``) or None to probe this machine.
        backend: Force a backend of :func:`toolkit.capabilities.planned_backends`.
        quantization: Force a quantization (``none``, ``bnb-8bit``, ``bnb-4bit``, ``mlx-4bit``...).
        dtype: Force ``bfloat16``, ``float16`` or ``float32``.
        context: The context to allocate, in tokens: the plan uses exactly this (NothingFits
            names the largest that fits when it does not). None: the largest that fits up to
            ``DEFAULT_CONTEXT`` (8192) or the model's maximum if smaller; ``"max"``: the largest
            that fits up to the model's maximum positions.
        batch: Concurrent sequences.
        gpus: Number of GPUs (tensor parallel for vllm, device_map sharding for hf).
        kv_dtype: KV cache dtype (default: searched, most precise first: llama.cpp f16, q8_0, q4_0;
            vLLM on CUDA the compute dtype, then fp8; others the compute dtype).
        n_gpu_layers: llama.cpp's offload: the layers on the GPU, counted as llama.cpp counts them
            (blocks + the output layer, which goes first; -1 = all). Default: all when the model fits
            the GPU, else the most that fit (a partial-offload plan with its per-device split).
        nodes: Machines of ``gpus`` GPUs each: vLLM tensor parallel within a node and pipeline
            parallel across nodes (on Ray); planned on paper and emitted as the command to run.
        host_memory: Host RAM for offloaded weights (default: this machine's free RAM).

    Returns:
        The chosen ``Plan`` with ranked alternatives.

    Raises:
        InvalidSpec: An explicit wish cannot be honoured (the message says why).
        NothingFits: No candidate fits; ``needed_bytes`` is the smallest memory that would.
    """
    from toolkit.builtin import is_builtin, resolve

    if is_builtin(model):
        model, quantization = resolve(model, backend, quantization)
    info = _as_info(model)
    dev = _as_device(device, gpus)
    if nodes is not None:
        dev, backend = across_nodes(dev, nodes, backend)
    w = Wishes(backend, quantization.lower() if quantization else None, dtype, context, batch, kv_dtype,
                nodes or 1)
    _check_wishes(info, w)
    if n_gpu_layers is not None:
        return fixed_offload(info, dev, w, n_gpu_layers, host_memory)
    max_pos = info.max_positions
    min_ctx = min(MIN_CONTEXT, max_pos)
    multi = dev.kind == "cuda" and dev.count > 1
    order = caps.order("cuda-multi" if multi else dev.kind)
    cands = _candidates(info, dev, order, w)
    _refuse_impossible_wishes(info, dev, order, cands, w)

    usable = [c for c in cands if c.problem is None and w.wanted(c)]
    usable.sort(key=lambda c: (-mem.lossiness_bits(c.quantization), KV_LOSS.get(c.kv_dtype or "", 0),
                               order.index(c.backend)))
    cap = max_pos if context == "max" else min(DEFAULT_CONTEXT, max_pos)
    reasons: list[str] = []
    if w.fixed:
        chosen = next((c for c in usable if _fits(info, dev, c, context, batch)), None)
        if chosen is None:
            offloaded = offload_plan(info, dev, usable, w, [context], host_memory)
            if offloaded is not None:
                return offloaded
            raise _context_does_not_fit(info, dev, usable, context, batch, cands)
        max_ctx = eval_ctx = context
    else:
        chosen = next((c for c in usable if _fits(info, dev, c, cap, batch)), None)
        eval_ctx = cap
        if chosen is None and cap > min_ctx:
            chosen = next((c for c in usable if _fits(info, dev, c, min_ctx, batch)), None)
            if chosen is not None:
                reasons.append(f"nothing fits {cap} tokens; planned the least lossy option that fits at least "
                               f"{min_ctx} tokens")
                eval_ctx = min_ctx
        if chosen is None:
            offloaded = offload_plan(info, dev, usable, w, [cap, min_ctx], host_memory)
            if offloaded is not None:
                return offloaded
            raise _nothing_fits(info, dev, usable, min(min_ctx, cap), batch, cands)
        max_ctx = _largest(info, dev, chosen, batch, eval_ctx, cap)
    largest = _largest(info, dev, chosen, batch, max_ctx, max_pos) if max_ctx < max_pos else max_ctx
    m = _breakdown(info, dev, chosen, max_ctx, batch)
    reasons += _reasons(info, dev, chosen, m, eval_ctx, max_ctx, dtype, w, cap, largest)
    return Plan(model=info.source, params=info.params, backend=chosen.backend, quantization=chosen.quantization,
                dtype=chosen.dtype, kv_dtype=chosen.kv_dtype, max_context=max_ctx, batch=batch,
                tensor_parallel=chosen.tensor_parallel, device=dev.to_dict(), memory=m, reasons=reasons,
                alternatives=_alternatives(info, dev, cands, chosen, w, eval_ctx, multi, cap),
                largest_context=largest, settings={**engine_settings(chosen, max_ctx, batch), **chosen.settings},
                commands=commands(info.source, chosen.backend, max_ctx, {**engine_settings(chosen, max_ctx, batch),
                                                                         **chosen.settings}, chosen.tensor_parallel))


def _reasons(info: ModelInfo, dev: Device, chosen: _Candidate, m: MemoryBreakdown, eval_ctx: int, max_ctx: int,
             dtype: str | None, w: Wishes, cap: int, largest: int) -> list[str]:
    """Why the chosen option, in sentences."""
    reasons = []
    if info.quantization != "none":
        reasons.append(f"checkpoint is prequantized ({info.quantization}); planned as is, never re-quantized")
    elif chosen.quantization == "none":
        reasons.append(f"unquantized weights fit ({_fmt(m.weights_bytes)} in {chosen.dtype})")
    else:
        reasons.append(f"unquantized weights do not fit the budget with {eval_ctx} tokens; {chosen.quantization} "
                       "is the least lossy format that does")
    if dev.kind == "cuda" and chosen.dtype in ("bfloat16", "float16") and dtype is None:
        cc = dev.compute_capability
        if cc:
            why = (" supports bf16" if chosen.dtype == "bfloat16" else
                   " (bf16 needs >= 8.0)" if cc < BF16_MIN_CC else " (checkpoint dtype)")
            reasons.append(f"{chosen.dtype}: compute capability {cc[0]}.{cc[1]}{why}")
        else:
            reasons.append(f"{chosen.dtype} on an unknown GPU")
    if dev.kind == "cpu" and chosen.backend == "hf" and dtype is None:
        reasons.append("float32 on CPU: bf16 matmuls are slow or missing on CPUs without AVX512-BF16/AMX")
    if chosen.tensor_parallel > 1:
        reasons.append(f"tensor parallel across {chosen.tensor_parallel} GPUs with vllm (weights split "
                       f"{chosen.tensor_parallel} ways)")
    elif dev.count > 1 and chosen.backend == "hf":
        reasons.append(f"hf shards layers across {dev.count} GPUs with device_map='auto' (no tensor parallel)")
    if chosen.backend == "vllm":
        reasons.append(f"vllm reserves gpu_memory_utilization={mem.VLLM_GPU_MEMORY_UTILIZATION} of total GPU memory "
                       "minus what other processes use; max_context rounded to its 16-token KV blocks")
    if w.fixed:
        reasons.append(f"max_context {max_ctx} as asked (--context); the largest that fits is {largest}")
    elif max_ctx >= info.max_positions:
        reasons.append(f"max_context is the model's maximum positions ({info.max_positions})")
    elif max_ctx == cap:
        reasons.append(f"max_context {max_ctx}: the default cap (the largest that fits is {largest}, the model's "
                       f"maximum {info.max_positions}); ask for more with --context N or --context max")
    else:
        reasons.append(f"max_context {max_ctx} is the largest context that fits (model maximum {info.max_positions})")
    if chosen.kv_dtype in KV_COST and w.kv_dtype is None:
        reasons.append(f"the KV cache did not fit at full precision: {KV_COST[chosen.kv_dtype]}"
                       + ("; llama.cpp needs flash attention for a quantized V cache, so it is on"
                          if chosen.backend == "llamacpp" else ""))
    if chosen.backend == "llamacpp" and info.gguf:
        e = m.engine_figures()
        reasons.append(f"llama.cpp's own buffers at {max_ctx} tokens: weights {_fmt(e['model'])} (mapped file "
                       f"span + CPU repack), KV {_fmt(e['kv'])}, compute + output {_fmt(e['compute'] + e['output'])}"
                       + (f"; resident on the CPU: {_fmt(m.activation_bytes)} for compute + output (the pages a "
                          "generation writes, one output per batch, plus the CPU backend's work buffer; the logits "
                          "part of the reserve is never written)" if m.engine_buffers else ""))
    if m.load_peak_bytes:
        extras = load_extras(info, dev, chosen)
        why = [f"converting the {info.checkpoint_dtype} checkpoint to {chosen.dtype} holds the mapped file "
               f"({_fmt(extras['mapped'])}) next to the converted weights until the load ends"] if "mapped" in extras else []
        if "stacked" in extras:
            why.append(f"stacking one MoE layer's {info.num_experts} gate and up experts into the fused parameter holds "
                       f"both stacks ({_fmt(extras['stacked'])}) while they are concatenated")
        if "in_flight" in extras:
            copies = f"its {info.checkpoint_dtype} checkpoint copy" + (
                f" and its {chosen.dtype} copy, before it is quantized" if chosen.quantization.startswith("mlx-")
                and mem.normalize_dtype(chosen.dtype) != mem.normalize_dtype(info.checkpoint_dtype) else "")
            why.append(f"mlx reads the weights one at a time: while the largest is converted, "
                       f"{_fmt(extras['in_flight'])} of it is alive beside the loaded weights ({copies})")
        reasons.append(f"the peak is the load, {_fmt(m.load_peak_bytes)}: " + "; ".join(why))
    scores = mem.hf_math_attention_bytes(info, max_ctx) if chosen.backend == "hf" and dev.kind == "cpu" else 0
    if scores:
        reasons.append(f"attention scores {_fmt(scores)} at {max_ctx} tokens: the value heads ({info.v_head_dim}) differ "
                       f"in size from the query heads ({(info.head_dim or 0) + (info.qk_rope_head_dim or 0)}), so "
                       "torch's SDPA on the CPU takes its math path, which materialises a layer's scores "
                       f"({mem.HF_MATH_ATTENTION_COPIES} x heads x context^2 float32)")
    mask = mem.hf_sliding_mask_bytes(info, max_ctx, 1, chosen.dtype) if chosen.backend == "hf" and dev.kind == "cpu" else 0
    if mask:
        reasons.append(f"sliding-window mask {_fmt(mask)} at {max_ctx} tokens: a prompt longer than the window "
                       f"({info.sliding_window}) makes transformers build a boolean mask of {max_ctx} x {max_ctx}, which "
                       f"SDPA on the CPU copies into an additive one in {chosen.dtype}; a shorter --context shrinks it")
    if chosen.backend == "mlx" and dev.kind == "cpu":
        chunk = min(max_ctx, mem.MLX_PREFILL_STEP)
        grown = " and one layer's cache while mlx-lm grows it by concatenation" if max_ctx > chunk else ""
        reasons.append(f"attention {_fmt(mem.mlx_cpu_attention_bytes(info, max_ctx, dtype=chosen.dtype))} at "
                       f"{max_ctx} tokens: mlx on the CPU has no fused attention kernel, so the prefill's last "
                       f"chunk materialises a layer's scores ({info.num_heads} heads x {chunk} x {max_ctx} in "
                       f"{chosen.dtype}) beside its q/k/v projections{grown}; a shorter --context shrinks them"
                       + (f"; mlx allocates {_fmt(m.engine_buffers['compute'])} of activations in all (the outputs of "
                          f"queued operations before they run), {_fmt(m.activation_bytes)} of them written at once"
                          if m.engine_buffers else ""))
    if info.weights_format == "pickle":
        reasons.append("weights are pickle files (never opened while planning): convert them to safetensors, "
                       "or load with allow_pickle=True (--allow-pickle) if you trust their source")
    if info.requires_remote_code:
        from toolkit.facts.libraries import transformers_implements

        shipped = "config.json names shipped Python code (auto_map), never run while planning"
        builtin = transformers_implements(info.model_type) if chosen.backend == "hf" else None
        if builtin:
            reasons.append(f"{shipped}: loads with transformers' built-in {info.model_type} implementation; the "
                           "shipped code is not run (--trust-remote-code, trust_remote_code=True, would run it instead)")
        elif builtin is False:
            reasons.append(f"{shipped}: transformers has no built-in {info.model_type}: loading needs "
                           "--trust-remote-code (trust_remote_code=True), which runs the shipped code")
        else:
            reasons.append(f"{shipped}: loading uses the library's built-in implementation when it has one, else "
                           "needs --trust-remote-code (trust_remote_code=True), which runs the shipped code")
    return reasons


def _alternatives(info: ModelInfo, dev: Device, cands: list[_Candidate], chosen: _Candidate, w: Wishes,
                  eval_ctx: int, multi: bool, cap: int) -> list[dict]:
    """The other candidates, ranked: fitting ones, then too big (smallest first), then unsupported."""
    fit, big, bad = [], [], []
    chosen_bits = mem.lossiness_bits(chosen.quantization)
    for c in cands:
        if c is chosen:
            continue
        if c.problem:
            bad.append(_alt(info, c, 0, w.batch, None, c.problem))
            continue
        if not w.wanted(c):
            bad.append(_alt(info, c, 0, w.batch, None, "not what was asked for (--backend/--quantization)"))
            continue
        b = _breakdown(info, dev, c, eval_ctx, w.batch)
        if b.total_bytes > c.budget:
            big.append((b.total_bytes, _alt(info, c, eval_ctx, w.batch, b, f"does not fit: needs {_fmt(b.total_bytes)} "
                                            f"at {eval_ctx} tokens, budget {_fmt(c.budget)}")))
            continue
        cm = eval_ctx if w.fixed else _largest(info, dev, c, w.batch, eval_ctx, cap)
        if mem.lossiness_bits(c.quantization) < chosen_bits:
            why = "more lossy than chosen"
        elif KV_LOSS.get(c.kv_dtype or "", 0) > KV_LOSS.get(chosen.kv_dtype or "", 0):
            why = f"a lossier KV cache ({c.kv_dtype}) than chosen"
        else:
            why = f"same quality, {chosen.backend} is preferred on {dev.kind}" + (" with several GPUs" if multi else "")
        fit.append(_alt(info, c, cm, w.batch, _breakdown(info, dev, c, cm, w.batch), why))
    return fit + [a for _, a in sorted(big, key=lambda t: t[0])] + bad


def _context_does_not_fit(info: ModelInfo, dev: Device, usable: list[_Candidate], context: int, batch: int,
                          cands: list[_Candidate]) -> NothingFits:
    """The asked-for context fits no option: say the largest that does, with which option."""
    lo = 1
    fitting = [(c, _largest(info, dev, c, batch, lo, context)) for c in usable if _fits(info, dev, c, lo, batch)]
    if not fitting:
        return _nothing_fits(info, dev, usable, context, batch, cands)
    c, best = max(fitting, key=lambda t: (t[1], -usable.index(t[0])))
    need = _breakdown(info, dev, usable[0], context, batch).total_bytes
    return NothingFits(
        f"context {context} does not fit {info.source} on {dev.name}: the largest that fits is {best} tokens "
        f"({c.quantization} on {c.backend}, KV cache {c.kv_dtype}); {context} tokens need {_fmt(need)} with "
        f"{usable[0].quantization} on {usable[0].backend}, the budget is {_fmt(usable[0].budget)}. Fix: use "
        f"--context {best} or less, or more memory", needed_bytes=int(need))


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
