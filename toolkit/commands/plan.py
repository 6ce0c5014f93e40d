"""``toolkit plan MODEL``: backend, quantization, dtype and context that fit, and why."""

from __future__ import annotations

import argparse

from toolkit import capabilities as caps
from toolkit.commands._common import device_arguments, device_from_args, model_argument, print_json, resolve_target
from toolkit.units import fmt_bytes, parse_memory

HELP = "pick backend, quantization, dtype and context that fit"
EXAMPLE = "toolkit plan meta-llama/Llama-3.1-8B --device T4 --json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_argument(parser)
    device_arguments(parser)
    parser.add_argument("--backend", default=None, choices=caps.planned_backends(), help="force a backend")
    parser.add_argument("--quantization", default=None,
                        help=f"force a quantization: {', '.join(caps.QUANTIZATIONS)} or gguf-<type>")
    parser.add_argument("--dtype", default=None, help=f"force a compute dtype: {', '.join(caps.DTYPES)} (or bf16, fp16, fp32)")
    parser.add_argument("--context", type=context_value, default=None,
                        help="the context to allocate, in tokens, or 'max' (default: the largest that fits, up to "
                             "8192)")
    parser.add_argument("--kv-dtype", dest="kv_dtype", default=None,
                        help="KV cache dtype: float16, q8_0, q4_0 (llama.cpp), fp8 (vLLM) (default: searched, most "
                             "precise first)")
    parser.add_argument("--n-gpu-layers", dest="n_gpu_layers", type=int, default=None,
                        help="llama.cpp offload: layers on the GPU, counted as llama.cpp counts them (blocks + the "
                             "output layer, which goes first; -1 = all) (default: all that fit)")
    parser.add_argument("--nodes", type=int, default=None,
                        help="machines of --gpus GPUs each: plan vLLM tensor x pipeline parallel on Ray (on paper)")
    parser.add_argument("--host-memory", dest="host_memory", default=None,
                        help="host RAM for offloaded weights, e.g. 64GiB (default: this machine's free RAM)")
    parser.add_argument("--batch", type=int, default=1, help="concurrent sequences")
    parser.add_argument("--verify", action="store_true",
                        help="ask the engine for its own figures without loading the weights (llama.cpp's dry run; "
                             "transformers on the meta device) and print them beside the plan's")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from toolkit.planning.plan import plan

    model, quantization = resolve_target(args.model, args.backend, args.quantization)
    p = plan(model, device_from_args(args), backend=args.backend, quantization=quantization,
             dtype=args.dtype, context=args.context, batch=args.batch or 1, kv_dtype=args.kv_dtype,
             n_gpu_layers=args.n_gpu_layers, nodes=args.nodes,
             host_memory=parse_memory(args.host_memory) if args.host_memory else None)
    checked = None
    if args.verify:
        from toolkit.backends.verify import verify

        checked = verify(p)
    if args.json:
        out = p.to_dict()
        if checked is not None:
            out["verify"] = checked
        print_json(out)
        return 0
    print(p.to_table())
    if checked is not None:
        print("\nverify (the engine's own figures)")
        for r in checked:
            err = f"{100 * r['rel_error']:+.2f}%" if r["rel_error"] is not None else "-"
            print(f"  {r['component']:<38} plan {fmt_bytes(r['predicted_bytes']):>11}   engine "
                  f"{fmt_bytes(r['engine_bytes']):>11}   {err:>8}  {r['note']}")
    return 0


def context_value(text: str) -> int | str:
    """--context: a number of tokens, or 'max'."""
    if text == "max":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or 'max', got {text!r}") from None
