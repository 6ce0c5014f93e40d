"""Plans that split a model: between the GPU and host memory (offload), and across nodes (vLLM
tensor x pipeline parallel on Ray). The per-device arithmetic is :mod:`toolkit.planning.offload`'s."""

from __future__ import annotations

from dataclasses import replace

from toolkit.errors import InvalidSpec, NothingFits
from toolkit.facts.devices import Device
from toolkit.facts.model_info import ModelInfo
from toolkit.facts.probe import probe_cpu
from toolkit.planning import llamacpp, offload
from toolkit.planning import memory as mem
from toolkit.planning.commands import commands
from toolkit.planning.estimate import Candidate, engine_settings, estimate
from toolkit.planning.result import MemoryBreakdown, Plan
from toolkit.planning.wishes import DEFAULT_CONTEXT, Wishes
from toolkit.units import fmt_bytes as _fmt


def _host(host_memory: int | None) -> int:
    return int(host_memory) if host_memory else probe_cpu().free_bytes


def offload_plan(info: ModelInfo, dev: Device, usable: list[Candidate], w: Wishes, contexts: list[int],
             host_memory: int | None) -> Plan | None:
    """The least lossy partial-offload plan when nothing fits the GPU whole (CUDA only), or None."""
    if dev.kind != "cuda" or dev.count > 1:
        return None
    host = _host(host_memory)
    for ctx in dict.fromkeys(contexts):
        for c in usable:
            if c.backend == "llamacpp" and info.gguf:
                split = offload.best_llamacpp_split(info, c.budget, host, ctx, c.kv_dtype, w.batch)
            elif c.backend == "hf":
                split = offload.hf_split(info, dev, c.budget, host, ctx, c.dtype or "float16", c.quantization, w.batch)
            else:
                continue
            if split is not None:
                return _split_plan(info, dev, c, split, ctx, w, host)
    return None


def fixed_offload(info: ModelInfo, dev: Device, w: Wishes, n_gpu_layers: int, host_memory: int | None) -> Plan:
    """A plan with the asked-for ``n_gpu_layers`` (llama.cpp on a GGUF)."""
    if not info.gguf:
        raise InvalidSpec(f"--n-gpu-layers is llama.cpp's offload and needs a GGUF; {info.source} is "
                          f"{info.format}: for transformers, plan without it (device_map offload is planned when the "
                          "model does not fit the GPU)")
    layers = llamacpp.offloadable_layers(info)
    if n_gpu_layers == -1:
        n_gpu_layers = layers
    if not 0 <= n_gpu_layers <= layers:
        raise InvalidSpec(f"--n-gpu-layers {n_gpu_layers} is beyond {info.source}'s layers: llama.cpp counts "
                          f"{layers - 1} blocks + the output layer = {layers}; use 0..{layers} (or -1 for all)")
    if n_gpu_layers and dev.kind != "cuda":
        raise InvalidSpec(f"--n-gpu-layers {n_gpu_layers} offloads to a GPU, but the device is {dev.kind}: use "
                          "--device cuda (or a GPU spec such as T4), or --n-gpu-layers 0")
    ctx = w.context if w.fixed else min(DEFAULT_CONTEXT, info.max_positions)
    kv = mem.normalize_dtype(w.kv_dtype) or "float16"
    c = Candidate("llamacpp", info.quantization, "float16", kv, budget=mem.budget_bytes(dev, "llamacpp"))
    split = offload.llamacpp_split(info, n_gpu_layers, ctx, kv, w.batch)
    host = _host(host_memory)
    if split.gpu_bytes > c.budget or split.cpu_bytes > host:
        raise NothingFits(f"n_gpu_layers={n_gpu_layers} at {ctx} tokens needs {_fmt(split.gpu_bytes)} on the GPU "
                          f"(budget {_fmt(c.budget)}) and {_fmt(split.cpu_bytes)} of host memory (free "
                          f"{_fmt(host)}): use fewer GPU layers, a shorter --context or a smaller quantization",
                          needed_bytes=split.gpu_bytes)
    return _split_plan(info, dev, c, split, ctx, w, host)


def _split_plan(info: ModelInfo, dev: Device, c: Candidate, split: offload.Split, ctx: int, w: Wishes,
                host: int) -> Plan:
    m = MemoryBreakdown(c.budget, split.gpu_weights, estimate(info, dev, c, ctx, w.batch).kv_bytes_per_token,
                        split.gpu_kv, split.gpu_activations, split.gpu_overhead, split.gpu_bytes)
    settings = {**engine_settings(c, ctx, w.batch), **split.settings}
    reasons = [f"the model does not fit the GPU whole; {split.what}",
               f"on the GPU {_fmt(split.gpu_bytes)} of {_fmt(c.budget)}; in host memory {_fmt(split.cpu_bytes)} of "
               f"{_fmt(host)} free (offloaded layers run at host-memory speed)",
               f"max_context {ctx}" + (" as asked (--context)" if w.fixed else ""),
               "the CUDA side of offload plans is computed from llama.cpp's and accelerate's rules, not yet verified "
               "on a GPU here"]
    return Plan(model=info.source, params=info.params, backend=c.backend, quantization=c.quantization,
                dtype=c.dtype or "float16", kv_dtype=c.kv_dtype or "float16", max_context=ctx, batch=w.batch,
                tensor_parallel=1, device=dev.to_dict(), memory=m, reasons=reasons, alternatives=[],
                largest_context=None, settings=settings, split=split.to_dict(dev.kind),
                commands=commands(info.source, c.backend, ctx, settings, 1))


def across_nodes(dev: Device, nodes: int, backend: str | None) -> tuple[Device, str]:
    """``nodes`` machines of ``dev.count`` GPUs: one device of all their GPUs, for vLLM (TP x PP on Ray)."""
    if nodes < 1:
        raise InvalidSpec(f"--nodes must be at least 1, got {nodes}")
    if dev.kind != "cuda":
        raise InvalidSpec(f"--nodes plans vLLM across machines with GPUs, but the device is {dev.kind}: use a GPU spec "
                          "such as --device 8xH100 --nodes 2")
    if backend not in (None, "vllm"):
        raise InvalidSpec(f"--nodes plans vLLM's tensor x pipeline parallelism on Ray; {backend} runs on one machine")
    return replace(dev, count=dev.count * nodes, name=f"{nodes} nodes x {dev.count} {dev.name}"), "vllm"
