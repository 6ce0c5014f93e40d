"""``toolkit demo``: the whole job on a built-in model, with no arguments.

probe the machine → plan the model → load it → generate → compare its variants (memory, speed,
quality) → print the table → write an HTML + Markdown report into ``./toolkit-report``.

Plain ``toolkit demo`` is the quick one, on the tiny model (6M parameters); ``--model smollm2`` runs
the same job on SmolLM2-135M-Instruct (a real model: a chat answer, the variants built from its
dequantized weights on first use, several minutes here).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from toolkit.capabilities import backend_for

HELP = "the whole job on a built-in model (tiny, or --model smollm2), with a report"
EXAMPLE = "toolkit demo --model smollm2 --quick --out smollm2-report"
DEMO_VARIANTS = ("none", "bnb-8bit", "bnb-4bit", "gptq-4bit", "awq-4bit", "ct-gptq-4bit", "ct-awq-4bit",
                 "gguf-q8_0", "gguf-q4_k_m", "mlx-4bit")
# the real model: its shipped GGUF too; fewer windows (its 49k vocabulary makes full log-probs large)
SMOLLM2_VARIANTS = ("none", "bf16", "bnb-8bit", "bnb-4bit", "gptq-4bit", "awq-4bit", "ct-gptq-4bit", "ct-awq-4bit",
                    "gguf-q8_0", "gguf-q4_k_m", "gguf-q4_1", "mlx-8bit", "mlx-4bit")
PROMPTS = {"tiny": "def read_config(path):\n",
           "smollm2": [{"role": "system", "content": "Answer in one short sentence."},
                       {"role": "user", "content": "What is the capital of France?"}]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolkit.builtin import BUILTIN_MODELS

    parser.add_argument("--model", default="tiny", choices=BUILTIN_MODELS, help="the built-in model")
    parser.add_argument("--out", default="toolkit-report", help="report folder")
    parser.add_argument("--variants", default=None, help="comma list of variants (default: every one that runs "
                        "here)")
    parser.add_argument("--quick", action="store_true", help="fewer windows and repeats")
    parser.add_argument("--fresh", action="store_true", help="ignore results of an earlier run in --out")


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 66 - len(title)), flush=True)


def run(args: argparse.Namespace) -> int:
    from toolkit.backends import available, load
    from toolkit.builtin import variant_path
    from toolkit.facts.probe import probe
    from toolkit.measuring.compare import compare, summary_table
    from toolkit.planning.plan import plan
    from toolkit.reporting.report import write_report

    start = time.perf_counter()
    _section("1. probe: devices and free memory")
    devices = probe()
    for d in devices:
        print(f"  {d.kind:<5} {d.name:<40} total {d.total_bytes / 2**30:6.1f} GiB   free {d.free_bytes / 2**30:6.1f} GiB")

    _section(f"2. plan: what fits, and why ({args.model})")
    base = variant_path(args.model)
    p = plan(base)
    print(p.to_table())

    _section("3. load and generate (greedy)")
    with load(p) as model:
        prompt = PROMPTS[args.model]
        result = model.generate(prompt, max_tokens=48)
        print(f"  prompt: {prompt!r}\n  output: {result.text!r}")
        print(f"  {result.completion_tokens} tokens, {result.finish_reason}; TTFT {result.ttft_s * 1000:.1f} ms, "
              f"decode {result.decode_tok_s:.1f} tok/s; load {model.load_s:.2f} s")

    _section("4. compare the variants: memory, speed, quality")
    can = available()
    default = SMOLLM2_VARIANTS if args.model == "smollm2" else DEMO_VARIANTS
    variants = [v for v in (args.variants.split(",") if args.variants else default) if v]
    skipped = [v for v in variants if not can.get(backend_for(v), False)]
    variants = [v for v in variants if v not in skipped]
    for v in skipped:
        print(f"  skipping {v}: the {backend_for(v)} backend is not installed here")
    backends = sorted({backend_for(v) for v in variants}, key=["hf", "llamacpp", "mlx"].index)
    out = Path(args.out)
    results = out / "results.jsonl"
    if args.fresh:
        for stale in (results, results.with_name("results.reference.json")):
            stale.unlink(missing_ok=True)
    print("  building any missing variants first (cached under ~/.cache/toolkit) ...", flush=True)
    for v in variants:
        variant_path(args.model, "none" if v in ("bf16", "fp16") else v)
    windows = (4 if args.quick else 8) if args.model == "smollm2" else (8 if args.quick else 16)
    frame = compare(args.model, variants, backends, results=results, windows=windows,
                    repeats=2 if args.quick else 3)
    print(summary_table(frame))

    _section("5. report")
    report = write_report(frame, out, title=f"toolkit demo: the built-in {args.model} model and its variants",
                          notes=[f"Plan for the base model: {p.backend} {p.quantization} {p.dtype}, "
                                 f"max context {p.max_context}."])
    print(f"  wrote {report} (and report.md, results.csv, figures) in {time.perf_counter() - start:.0f} s")
    failed = frame["error"].notna().sum()
    if failed:
        print(f"  {failed} variant(s) failed; see the Errors section of the report")
    return 0 if failed == 0 else 1
