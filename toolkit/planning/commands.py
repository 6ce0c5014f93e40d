"""The engine's own command line for a plan: what a user would run to serve it outside toolkit
(llama.cpp's ``llama-server``, ``vllm serve``), flags named as those tools name them."""

from __future__ import annotations


def commands(model: str, backend: str, context: int, settings: dict, tensor_parallel: int, nodes: int = 1) -> list[str]:
    """The engine's own command that serves this plan (what a user would run outside toolkit)."""
    if backend == "llamacpp":
        cmd = f"llama-server -m {model} -c {context}"
        if settings.get("n_gpu_layers") is not None:
            cmd += f" -ngl {settings['n_gpu_layers']}"
        if settings.get("override_tensor"):
            cmd += f" --override-tensor {settings['override_tensor']}"
        if settings.get("type_k"):
            cmd += f" -ctk {settings['type_k']} -ctv {settings['type_v']}"
        if settings.get("flash_attn"):
            cmd += " -fa on"
        return [cmd]
    if backend == "vllm":
        cmd = f"vllm serve {model} --max-model-len {context}"
        if tensor_parallel > 1:
            cmd += f" --tensor-parallel-size {tensor_parallel}"
        if settings.get("pipeline_parallel_size", 1) > 1:
            cmd += (f" --pipeline-parallel-size {settings['pipeline_parallel_size']}"
                    " --distributed-executor-backend ray")
        if settings.get("kv_cache_dtype"):
            cmd += f" --kv-cache-dtype {settings['kv_cache_dtype']}"
        return [cmd]
    return [f"toolkit generate {model} --backend {backend} --context {context}"]
