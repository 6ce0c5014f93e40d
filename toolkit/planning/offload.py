"""When a model does not fit the GPU whole: split it between the GPU and the host's memory.

* llama.cpp (a GGUF): ``n_gpu_layers``, counted as llama.cpp counts them — every block plus the
  output layer, which is offloaded first (``llama_model::load_tensors``: block il is on the GPU iff
  ``il >= n_layer + 1 - n_gpu_layers``; the output layer iff ``n_gpu_layers >= 1``; the input
  embedding always stays on the CPU). An offloaded layer's KV cache goes with it (``offload_kqv``).
  For a mixture-of-experts GGUF, keeping the expert tensors on the CPU and everything else on the
  GPU (llama.cpp's ``--override-tensor exps=CPU``) is tried first: that is usually the faster split.
* transformers: ``device_map="auto"`` with ``max_memory``: accelerate places whole decoder layers on
  the GPU while they fit and the rest in host memory, moving each offloaded layer to the GPU for its
  forward; the KV cache and the activations live on the GPU.

Both are planned from the same per-tensor and per-layer figures as the whole-GPU plans; the CUDA
side of these formulas is not verified on a GPU here (the README's support matrix says so).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from toolkit.facts.devices import Device
from toolkit.facts.model_info import ModelInfo
from toolkit.planning import llamacpp
from toolkit.planning import memory as mem

_BLOCK = re.compile(r"^blk\.(\d+)\.")
_EXPERTS = re.compile(r"_exps\.")  # llama.cpp's expert tensors: blk.N.ffn_{gate,up,down}_exps.weight


@dataclass
class Split:
    """An offload plan: what goes where, in bytes, and the engine settings that make it so. The GPU's
    share is broken down like a whole-GPU plan (weights, KV, activations, runtime)."""

    gpu_weights: int
    gpu_kv: int
    gpu_activations: int
    gpu_overhead: int
    cpu_bytes: int
    settings: dict
    what: str  # one line for the reasons

    @property
    def gpu_bytes(self) -> int:
        return self.gpu_weights + self.gpu_kv + self.gpu_activations + self.gpu_overhead

    def to_dict(self, kind: str) -> dict:
        return {kind: self.gpu_bytes, "cpu": self.cpu_bytes, **{k: v for k, v in self.settings.items()
                                                                 if k in ("n_gpu_layers",)}}


def _layer_of(name: str, n_layer: int) -> int:
    """llama.cpp's layer index of a tensor: blocks by number, the output layer as n_layer, the input -1."""
    m = _BLOCK.match(name)
    if m:
        return int(m[1])
    return -1 if name.startswith("token_embd") else n_layer


def llamacpp_split(info: ModelInfo, n_gpu_layers: int, context: int, kv_dtype: str | None, batch: int = 1) -> Split:
    """Bytes on the GPU and on the CPU for ``n_gpu_layers`` (llama.cpp's count, output layer first)."""
    g = info.gguf
    n_layer = g["n_layer"]
    first_gpu = n_layer + 1 - n_gpu_layers
    s = llamacpp.Settings(n_ctx=context, type_k=_kv(kv_dtype), type_v=_kv(kv_dtype), n_seq_max=batch)
    gpu = cpu = 0
    for t in g["tensors"]:
        on_gpu = _layer_of(t["name"], n_layer) >= first_gpu
        gpu, cpu = (gpu + t["bytes"], cpu) if on_gpu else (gpu, cpu + t["bytes"])
    if "output.weight" not in {t["name"] for t in g["tensors"]} and n_gpu_layers >= 1:
        gpu += sum(t["bytes"] for t in g["tensors"] if t["name"] == "token_embd.weight")  # the tied copy
    kv_total, _ = llamacpp.kv_bytes(info, s)
    layers_with_kv = sum(1 for kv in g["n_head_kv"] if kv)
    blocks_on_gpu = max(0, min(n_gpu_layers - 1, n_layer))  # the output layer has no KV cache
    kv_gpu = kv_total * blocks_on_gpu // max(layers_with_kv, 1)
    compute = llamacpp.compute_bytes(info, s)
    output = 4 * g["n_vocab"] * batch
    # the graph's compute buffer on the GPU; the CPU keeps a buffer for its own part and the outputs
    cpu += (kv_total - kv_gpu) + (compute if blocks_on_gpu < n_layer else 0) + output
    return Split(gpu, kv_gpu, compute, mem.LLAMACPP_CUDA_CONTEXT_BYTES, cpu, {"n_gpu_layers": n_gpu_layers},
                 f"llama.cpp n_gpu_layers={n_gpu_layers} of {n_layer + 1} (the output layer and the last "
                 f"{n_gpu_layers - 1} blocks on the GPU, the rest and the input embedding in host memory)")


def llamacpp_experts_on_cpu(info: ModelInfo, context: int, kv_dtype: str | None, batch: int = 1) -> Split:
    """All layers on the GPU except the MoE expert tensors, which stay in host memory."""
    g = info.gguf
    whole = llamacpp_split(info, g["n_layer"] + 1, context, kv_dtype, batch)
    experts = sum(t["bytes"] for t in g["tensors"] if _EXPERTS.search(t["name"]))
    return Split(whole.gpu_weights - experts, whole.gpu_kv, whole.gpu_activations, whole.gpu_overhead,
                 whole.cpu_bytes + experts,
                 {"n_gpu_layers": g["n_layer"] + 1, "override_tensor": "exps=CPU"},
                 f"every layer on the GPU but the MoE expert tensors ({experts / 2**30:.1f} GiB) in host memory "
                 "(llama.cpp --override-tensor exps=CPU)")


def best_llamacpp_split(info: ModelInfo, gpu_budget: int, cpu_budget: int, context: int, kv_dtype: str | None,
                        batch: int = 1) -> Split | None:
    """The split with the most on the GPU that fits both budgets (experts-on-CPU first for MoE), or None."""
    if not info.gguf:
        return None
    if info.gguf["n_expert"]:
        split = llamacpp_experts_on_cpu(info, context, kv_dtype, batch)
        if split.gpu_bytes <= gpu_budget and split.cpu_bytes <= cpu_budget:
            return split
    for k in range(info.gguf["n_layer"], 0, -1):  # n_layer + 1 would be the whole model: not an offload
        split = llamacpp_split(info, k, context, kv_dtype, batch)
        if split.gpu_bytes <= gpu_budget:
            return split if split.cpu_bytes <= cpu_budget else None
    return None


def hf_split(info: ModelInfo, device: Device, gpu_budget: int, cpu_budget: int, context: int, dtype: str,
             quantization: str, batch: int = 1) -> Split | None:
    """transformers with device_map='auto' and max_memory: whole layers on the GPU while they fit."""
    weights = mem.weights_bytes(info, quantization, dtype, backend="hf", device_kind=device.kind)
    layers = max(info.num_layers, 1)
    per_layer = max(0, weights - _non_layer_bytes(info, dtype)) // layers
    kv = mem.kv_cache_bytes(info, context, batch, dtype, mla_latent=mem.caches_mla_latent(info, "hf"))
    act = mem.activation_bytes(info, context, batch, dtype, "hf", device_kind=device.kind)
    non_layer = _non_layer_bytes(info, dtype)
    # On the GPU: the embeddings and head, the layers that live there and one offloaded layer moved in for
    # its forward, the allocator's slack on those weights, the CUDA context, the KV cache and activations.
    room = (gpu_budget - kv - act - mem.CUDA_CONTEXT_BYTES) / (1 + mem.TORCH_ALLOCATOR_SLACK) - non_layer
    on_gpu = int(room // max(per_layer, 1)) - 1
    if on_gpu < 1:
        return None
    if on_gpu >= layers:
        return None  # it fits whole: not an offload plan
    gpu_weights = non_layer + (on_gpu + 1) * per_layer
    overhead = mem.CUDA_CONTEXT_BYTES + int(mem.TORCH_ALLOCATOR_SLACK * gpu_weights)
    off = (layers - on_gpu) * per_layer
    if off + mem.cpu_runtime_bytes("hf", quantization) > cpu_budget:
        return None
    mib = 2**20  # accelerate's max_memory: what device_map may place on each device, for the weights
    settings = {"max_memory": {"0": f"{(gpu_weights - per_layer) // mib}MiB", "cpu": f"{cpu_budget // mib}MiB"}}
    return Split(gpu_weights, kv, act, overhead, off, settings,
                 f"transformers device_map='auto' with max_memory: {on_gpu} of {layers} decoder layers on the GPU, "
                 f"{layers - on_gpu} in host memory (moved to the GPU for each forward: slow)")


def _non_layer_bytes(info: ModelInfo, dtype: str) -> int:
    return (info.embedding_params + info.lm_head_params) * mem.DTYPES.get(mem.normalize_dtype(dtype) or "", 2)


def _kv(kv_dtype: str | None) -> str:
    return llamacpp.KV_TYPES.get(mem.normalize_dtype(kv_dtype) or "float16", "f16")
