"""``toolkit compare MODEL``: variants side by side — memory, speed and quality."""

from __future__ import annotations

import argparse
from pathlib import Path

from toolkit import capabilities as caps
from toolkit.commands._common import print_json
from toolkit.launcher import json_default

HELP = "compare variants: memory, speed and quality"
EXAMPLE = "toolkit compare tiny --variants none,bnb-4bit,gguf-q4_k_m --backends hf,llamacpp --report out/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="tiny", help="model folder (gptq-4bit, awq-4bit, ct-*, gguf-*, "
                        "mlx-* are quantized from it on demand, cached), or a built-in model (tiny, smollm2)")
    parser.add_argument("--variants", default=",".join(caps.backend("hf").default_variants),
                        help="comma list of variants (none, bf16, bnb-8bit, bnb-4bit, gptq-4bit, awq-4bit, ct-gptq-4bit, "
                             "ct-awq-4bit, gguf-f16, gguf-q8_0, gguf-q4_k_m, mlx-4bit, mlx-8bit; smollm2: gguf-q4_1)")
    parser.add_argument("--backends", default="hf", help=f"comma list of {', '.join(caps.planned_backends())}")
    parser.add_argument("--results", default=None, help="JSON-lines results file (resumable)")
    parser.add_argument("--report", default=None, help="write an HTML + Markdown report into this folder")
    parser.add_argument("--windows", type=int, default=16, help="quality windows of 256 tokens")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="benchmark prompt length")
    parser.add_argument("--new-tokens", type=int, default=32, help="benchmark tokens generated per run")
    parser.add_argument("--repeats", type=int, default=5, help="benchmark timed runs")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for every backend (default: each "
                        "backend's choice)")
    parser.add_argument("--retry-errors", action="store_true", help="re-run rows that failed before")
    parser.add_argument("--in-process", action="store_true", help="run variants in this process (faster, "
                        "but memory figures then include earlier variants and imports)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")


def run(args: argparse.Namespace) -> int:
    from toolkit.measuring.compare import compare, summary_table
    from toolkit.measuring.results import records

    model = None if args.model == "tiny" else args.model
    results = args.results or (str(Path(args.report) / "results.jsonl") if args.report else None)
    frame = compare(model, [v for v in args.variants.split(",") if v], args.backends.split(","), results=results,
                    windows=args.windows, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                    repeats=args.repeats, retry_errors=args.retry_errors, progress=not args.json,
                    isolate=not args.in_process, threads=args.threads)
    if args.report:
        from toolkit.reporting.report import write_report

        write_report(frame, args.report, title=f"toolkit compare: {args.model}")
    if args.json:
        print_json(records(frame), default=json_default)
    else:
        print(summary_table(frame))
    return 0 if frame["error"].isna().all() else 1


