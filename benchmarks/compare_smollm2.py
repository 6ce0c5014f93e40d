"""Headline figures on the built-in real model, SmolLM2-135M-Instruct: every variant toolkit makes of
it, plus the shipped Q4_1 file, on each backend that runs here — memory, speed and quality in one
``toolkit.compare`` run (each row in its own process), against the dequantized Q4_1 in fp32 (hf): the
fp16 original cannot be fetched here.

    .venv/bin/python benchmarks/compare_smollm2.py [--windows 8] [--out benchmarks/results/smollm2]

Builds what is missing first (cached; build times come from the builds' manifests), then compares.
Re-running resumes: finished rows in results.jsonl are kept (delete the folder for a fresh run).
Writes results.jsonl (+ the reference log-probs beside it), report.html/.md, and table.md: the
README's table, with build times and each row's run time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# (variant, backend): hf fp32 (the reference) and bf16, bitsandbytes at load, the four calibrated
# methods, llama.cpp's q8_0 and q4_k_m made from the fp32 folder plus the shipped q4_1, mlx 8/4-bit.
ROWS = [("none", "hf"), ("bf16", "hf"), ("bnb-8bit", "hf"), ("bnb-4bit", "hf"), ("gptq-4bit", "hf"),
        ("awq-4bit", "hf"), ("ct-gptq-4bit", "hf"), ("ct-awq-4bit", "hf"), ("gguf-q8_0", "llamacpp"),
        ("gguf-q4_k_m", "llamacpp"), ("gguf-q4_1", "llamacpp"), ("mlx-8bit", "mlx"), ("mlx-4bit", "mlx")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "smollm2"))
    parser.add_argument("--windows", type=int, default=8, help="quality windows of 256 held-out tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--without", default="", help="comma-separated backends to leave out, e.g. mlx (mlx[cpu] "
                        "ran at about 1 GFLOPS on this project's machines: 8 windows take minutes per mlx row)")
    args = parser.parse_args()

    import toolkit
    from toolkit.backends import available
    from toolkit.builtin import variant_path
    from toolkit.measuring.compare import summary_table
    from toolkit.measuring.jobs import build_seconds
    from toolkit.reporting.report import write_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    can = available()
    left_out = {b for b in args.without.split(",") if b}
    rows = [(v, b) for v, b in ROWS if can.get(b) and b not in left_out]
    builds: dict[str, float | None] = {}
    for variant, _ in rows:  # build first, so that each compare row measures only itself
        path = variant_path("smollm2", "none" if variant in ("bf16",) or variant.startswith("bnb-") else variant)
        builds[variant] = build_seconds(path)
    builds["none (dequantize the GGUF)"] = build_seconds(variant_path("smollm2"))
    (out / "builds.json").write_text(json.dumps(builds, indent=2) + "\n")

    start = time.perf_counter()
    variants = list(dict.fromkeys(v for v, _ in rows))
    backends = list(dict.fromkeys(b for _, b in rows))
    frame = toolkit.compare("smollm2", variants, backends, results=out / "results.jsonl", windows=args.windows,
                            repeats=args.repeats, prompt_tokens=64, new_tokens=32)
    wanted = set(rows)
    frame = frame[[(v, b) in wanted for v, b in zip(frame["variant"], frame["backend"])]].reset_index(drop=True)
    print(summary_table(frame))
    write_report(frame, out, title="toolkit: SmolLM2-135M-Instruct (built-in smollm2) on this machine",
                 notes=["Reference: the shipped Q4_1 GGUF dequantized to fp32 by transformers (hf none); the fp16 "
                        "original cannot be fetched here.", f"Quality: {args.windows} windows x 256 held-out tokens."])
    (out / "table.md").write_text(markdown_table(frame, builds) + "\n")
    print(f"\n{markdown_table(frame, builds)}\n\ncompare ran {time.perf_counter() - start:.0f} s (rows already in "
          f"{out / 'results.jsonl'} were kept)")
    return 0 if frame["error"].isna().all() else 1


def markdown_table(frame, builds: dict[str, float | None]) -> str:
    def num(value, fmt):
        return "–" if value is None or value != value else format(value, fmt)

    lines = ["| variant | backend | build s | weights MiB | peak RSS MiB | prefill tok/s | decode tok/s | perplexity "
             "| KL (nats/token) | top-1 | row s |", "|" + "---|" * 11]
    for r in frame.to_dict(orient="records"):
        mib = lambda b: num(b / 2**20 if b else None, ".1f")  # noqa: E731
        kl = "0 (reference)" if r.get("reference") is True else num(r.get("kl_divergence"), ".3g")
        lines.append(f"| {r['variant']} | {r['backend']} | {num(builds.get(r['variant']), '.0f')} | "
                     f"{mib(r.get('weights_bytes'))} | {mib(r.get('peak_memory_bytes'))} | "
                     f"{num(r.get('prefill_tok_s'), '.0f')} | {num(r.get('decode_tok_s'), '.1f')} | "
                     f"{num(r.get('perplexity'), '.3f')} | {kl} | {num(r.get('top1_agreement'), '.4f')} | "
                     f"{num(r.get('seconds'), '.0f')} |" + (f" error: {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
