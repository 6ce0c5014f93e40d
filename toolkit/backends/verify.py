"""``toolkit plan --verify``: the plan's prediction beside the engine's own figure, where the engine
can give one without loading the weights. Planning stays engine-free; this module asks the engine.

* llamacpp: llama.cpp's ``no_alloc`` dry run (:func:`toolkit.backends.llamacpp.dry_run`) with the
  plan's context and settings: KV cache, compute buffer and output buffer as llama.cpp sizes them,
  and the tensors' bytes.
* hf: transformers builds the model on the meta device (no memory) from its config, in the plan's
  dtype: the weights' bytes as transformers would hold them (bitsandbytes and other load-time
  quantizations are not simulated: those rows say so).
"""

from __future__ import annotations

from typing import Any

from toolkit.backends import backend_module
from toolkit.errors import InvalidSpec


def _row(component: str, predicted: int, engine: int | None, note: str = "") -> dict[str, Any]:
    return {"component": component, "predicted_bytes": int(predicted), "engine_bytes": engine,
            "rel_error": (predicted - engine) / engine if engine else None, "note": note}


def verify(plan: Any) -> list[dict[str, Any]]:
    """Rows of (component, predicted, engine, relative error) for a plan's backend."""
    if plan.backend == "llamacpp":
        return _llamacpp(plan)
    if plan.backend == "hf":
        return _hf(plan)
    raise InvalidSpec(f"--verify asks the engine for its own figure without loading the model; the {plan.backend} "
                      "backend has no such dry run here (llamacpp and hf do)")


def _llamacpp(plan: Any) -> list[dict[str, Any]]:
    module = backend_module("llamacpp")
    s = plan.settings
    engine = module.dry_run(plan.model, n_ctx=plan.max_context, n_batch=s.get("n_batch", 512),
                            n_ubatch=s.get("n_ubatch", 512), flash_attn=bool(s.get("flash_attn")),
                            type_k=s.get("type_k"), type_v=s.get("type_v"), n_seq_max=plan.batch)
    m = plan.memory
    e = m.engine_figures()
    rows = [_row("kv cache", e["kv"], engine["kv_bytes"]),
            _row("compute + output buffers", e["compute"] + e["output"], engine["compute_bytes"] + engine["output_bytes"]),
            _row("weights", e["model"], engine["tensor_bytes"],
                 "engine: tensor bytes; the plan adds the mmap span and CPU repack copies llama.cpp makes")]
    engine_total = engine["tensor_bytes"] + engine["kv_bytes"] + engine["compute_bytes"] + engine["output_bytes"]
    rows.append(_row("weights + kv + compute + output", sum(e.values()), engine_total))
    return rows


def _hf(plan: Any) -> list[dict[str, Any]]:
    backend_module("hf")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(plan.model)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, plan.dtype))
    held = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    note = "" if plan.quantization == "none" else f"{plan.quantization} is applied at load: not simulated"
    return [_row("weights_bytes", plan.memory.weights_bytes, held, note)]
