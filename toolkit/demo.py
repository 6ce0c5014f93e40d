"""``toolkit demo``: the whole job on the built-in tiny model, with no arguments.

probe the machine → plan the model → load it → generate → compare its variants (memory, speed,
quality) → print the table → write an HTML + Markdown report into ``./toolkit-report``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from toolkit.backends import available

DEMO_VARIANTS = ("none", "bnb-8bit", "bnb-4bit", "gptq-4bit", "awq-4bit", "ct-gptq-4bit", "ct-awq-4bit",
                 "gguf-q8_0", "gguf-q4_k_m", "mlx-4bit")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="toolkit-report", help="report folder (default ./toolkit-report)")
    parser.add_argument("--variants", default=",".join(DEMO_VARIANTS), help="comma list of variants")
    parser.add_argument("--quick", action="store_true", help="fewer windows and repeats")
    parser.add_argument("--fresh", action="store_true", help="ignore results of an earlier run in --out")


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 66 - len(title)), flush=True)


def main_demo(args: argparse.Namespace) -> int:
    from toolkit.backends import load
    from toolkit.compare import backend_for, compare, summary_table
    from toolkit.hardware import probe
    from toolkit.plan import plan
    from toolkit.report import write_report
    from toolkit.tiny import tiny

    start = time.perf_counter()
    _section("1. probe: devices and free memory")
    devices = probe()
    for d in devices:
        print(f"  {d.kind:<5} {d.name:<40} total {d.total_bytes / 2**30:6.1f} GiB   free {d.free_bytes / 2**30:6.1f} GiB")

    _section("2. plan: what fits, and why")
    base = tiny()
    p = plan(base)
    print(p.to_table())

    _section("3. load and generate (greedy)")
    with load(p) as model:
        prompt = "def read_config(path):\n"
        result = model.generate(prompt, max_tokens=48)
        print(f"  prompt: {prompt!r}\n  output: {result.text!r}")
        print(f"  {result.completion_tokens} tokens, {result.finish_reason}; TTFT {result.ttft_s * 1000:.1f} ms, "
              f"decode {result.decode_tok_s:.1f} tok/s; load {model.load_s:.2f} s")

    _section("4. compare the variants: memory, speed, quality")
    can = available()
    variants = [v for v in args.variants.split(",") if v]
    skipped = [v for v in variants if not can.get(backend_for(v), False)]
    variants = [v for v in variants if v not in skipped]
    for v in skipped:
        print(f"  skipping {v}: the {backend_for(v)} backend is not installed here")
    backends = sorted({backend_for(v) for v in variants}, key=["hf", "llamacpp", "mlx"].index)
    out = Path(args.out)
    results = out / "results.jsonl"
    if args.fresh:
        for stale in (results, results.with_name("results.reference.npz")):
            stale.unlink(missing_ok=True)
    print("  building any missing variants first (cached under ~/.cache/toolkit) ...", flush=True)
    for v in variants:
        tiny(v)
    frame = compare(None, variants, backends, results=results, windows=8 if args.quick else 16,
                    repeats=2 if args.quick else 3)
    print(summary_table(frame))

    _section("5. report")
    report = write_report(frame, out, title="toolkit demo: the built-in tiny model and its variants",
                          notes=[f"Plan for the base model: {p.backend} {p.quantization} {p.dtype}, "
                                 f"max context {p.max_context}."])
    print(f"  wrote {report} (and report.md, results.csv, figures) in {time.perf_counter() - start:.0f} s")
    failed = frame["error"].notna().sum()
    if failed:
        print(f"  {failed} variant(s) failed; see the Errors section of the report")
    return 0 if failed == 0 else 1
