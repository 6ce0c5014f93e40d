"""The planner's CUDA figures against the GPU's own, in one short run (for a lent GPU: ~8 minutes).

What it measures, each case in a fresh process so the allocator starts empty:

1. free memory as NVML sees it (every process) and as ``torch.cuda.mem_get_info`` sees it;
2. for random-initialised 7-8B-shaped models (Llama 3.1 8B, Qwen2.5 7B: real shapes, built on the
   GPU from their configs, no weights files) in bf16 and fp16 at 8k and 32k context: the plan's
   prediction for hf (``toolkit.plan(..., backend="hf", context=N)``) against
   ``torch.cuda.max_memory_allocated`` and NVML's used memory after a prefill of N-16 tokens and 16
   decoded tokens;
3. one hf ``device_map`` offload plan (the 8B model with a GPU budget of 8 GiB) loaded and run.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--quick]

It needs torch with CUDA and transformers; nvidia-ml-py is used when installed. Results are appended
case by case to the JSON-lines file ``--out`` (nothing measured is lost if the lease ends).
Not run in this project's CI: no GPU there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._worker import run_worker  # noqa: E402

CONFIGS = {
    "llama-3.1-8b": ROOT / "tests" / "fixtures" / "configs" / "llama-3.1-8b.config.json",
    "qwen2.5-7b": None,  # written below: the published config's shape
}
QWEN25_7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
             "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
             "num_hidden_layers": 28, "vocab_size": 152064, "max_position_embeddings": 32768,
             "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
             "torch_dtype": "bfloat16"}
NEW = 16


def _config(name: str) -> dict:
    return QWEN25_7B if name == "qwen2.5-7b" else json.loads(CONFIGS[name].read_text())


def free_memory() -> dict:
    """NVML's and torch's view of the GPU's free memory."""
    import torch

    out = {"torch_free": None, "torch_total": None, "nvml_free": None, "nvml_used": None}
    free, total = torch.cuda.mem_get_info()
    out.update(torch_free=int(free), torch_total=int(total))
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
        out.update(nvml_free=int(info.free), nvml_used=int(info.used))
    except Exception as exc:  # noqa: BLE001 - the figure is missing, the check goes on
        out["nvml_error"] = str(exc)
    return out


def case(name: str, dtype: str, context: int, offload_gib: float | None = None) -> dict:
    """Plan, build on the GPU, prefill context-16 tokens, decode 16; the GPU's peaks."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import toolkit

    cfg = _config(name)
    folder = Path(tempfile.mkdtemp()) / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype}))
    device = toolkit.probe()[0]
    if offload_gib:
        from dataclasses import replace

        device = replace(device, free_bytes=int(offload_gib * 2**30), total_bytes=int(offload_gib * 2**30))
    p = toolkit.plan(folder, device, backend="hf", dtype=dtype, context=context)
    before = free_memory()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    config = AutoConfig.from_pretrained(folder)
    if p.split:  # the planned offload: accelerate places the layers as max_memory says
        from accelerate import dispatch_model, infer_auto_device_map

        with torch.device("meta"):
            meta = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        max_memory = {int(k) if k.isdigit() else k: v for k, v in p.settings["max_memory"].items()}
        device_map = infer_auto_device_map(meta, max_memory=max_memory)
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        model = dispatch_model(model, device_map=device_map)
    else:
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.eval()
    built = time.perf_counter() - start
    ids = torch.randint(16, cfg["vocab_size"], (1, context - NEW), device="cuda")
    with torch.inference_mode():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        for _ in range(NEW):
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    torch.cuda.synchronize()
    after = free_memory()
    peak = int(torch.cuda.max_memory_allocated())
    reserved = int(torch.cuda.max_memory_reserved())
    predicted = p.split["cuda"] if p.split else p.memory.total_bytes
    used = (before["nvml_free"] - after["nvml_free"]) if before.get("nvml_free") and after.get("nvml_free") else None
    return {"case": f"{name} {dtype} {context}" + (f" offload {offload_gib} GiB" if offload_gib else ""),
            "plan": p.to_dict(), "predicted_bytes": predicted, "torch_peak_allocated": peak,
            "torch_peak_reserved": reserved, "nvml_used_delta": used, "free_before": before, "free_after": after,
            "rel_error_vs_reserved": (predicted - reserved) / reserved, "build_s": built,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.jsonl"))
    ap.add_argument("--quick", action="store_true", help="8k only, one model")
    ap.add_argument("--timeout", type=float, default=240, help="seconds per case")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cases = [("llama-3.1-8b", "bfloat16", 8192, None)]
    if not args.quick:
        cases += [("llama-3.1-8b", "float16", 8192, None), ("llama-3.1-8b", "bfloat16", 32768, None),
                  ("qwen2.5-7b", "bfloat16", 8192, None), ("qwen2.5-7b", "bfloat16", 32768, None),
                  ("llama-3.1-8b", "bfloat16", 4096, 8.0)]
    rows = [run_worker(f"{Path(__file__).resolve()}:free_memory", {}, args.timeout)]
    print(json.dumps(rows[0]), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps({"free_memory": rows[0]}) + "\n")
        for name, dtype, context, offload in cases:
            row = run_worker(f"{Path(__file__).resolve()}:case", {"name": name, "dtype": dtype, "context": context,
                                                                   "offload_gib": offload}, args.timeout)
            f.write(json.dumps(row) + "\n")
            f.flush()
            if row.get("error"):
                print(f"{name} {dtype} {context}: FAILED {row['error'][:200]}", flush=True)
            else:
                print(f"{row['case']:<40} predicted {row['predicted_bytes'] / 2**30:7.2f} GiB  torch peak reserved "
                      f"{row['torch_peak_reserved'] / 2**30:7.2f} GiB  ({100 * row['rel_error_vs_reserved']:+.1f}%)",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
