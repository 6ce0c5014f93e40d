"""Headline figures on this machine: every variant of the built-in tiny model on every backend that
runs here (transformers, llama.cpp, mlx), each in its own process, plus a batch sweep. Results go
to ``benchmarks/results/tiny/`` (results.jsonl, results.csv, report.html/.md with figures).

    .venv/bin/python benchmarks/compare_tiny.py [--quick]

Re-running resumes: finished rows in results.jsonl are kept (delete the folder for a fresh run).
On a GPU box, pass ``--model ORG/NAME --variants none,bnb-4bit`` (and prequantized checkpoints as
``--variant-path gptq-4bit=PATH``) to produce the same table for a real model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from toolkit.capabilities import backend_for

VARIANTS = ["none", "bnb-8bit", "bnb-4bit", "gptq-4bit", "awq-4bit", "ct-gptq-4bit", "ct-awq-4bit",
            "gguf-f16", "gguf-q8_0", "gguf-q4_k_m", "mlx-4bit"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "tiny"))
    parser.add_argument("--model", default=None, help="a model folder or hub id (default: the built-in tiny model)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--variant-path", action="append", default=[], help="NAME=PATH of a prequantized checkpoint")
    parser.add_argument("--backends", default="hf,llamacpp,mlx")
    parser.add_argument("--batches", default="1,2,4", help="batch sizes for the sweep")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()

    import pandas as pd

    import toolkit
    from toolkit.backends import available
    from toolkit.measuring.bench import bench
    from toolkit.measuring.compare import summary_table
    from toolkit.reporting.plots import throughput_vs_batch
    from toolkit.reporting.report import write_report

    out = Path(args.out)
    can = available()
    backends = [b for b in args.backends.split(",") if can.get(b)]
    variants = [v for v in args.variants.split(",") if backend_for(v) in backends or v == "none"]
    if args.variant_path:
        named = dict(p.split("=", 1) for p in args.variant_path)
        variants = {v: named.get(v, args.model) for v in variants}  # type: ignore[assignment]
    frame = toolkit.compare(args.model, variants, backends, results=out / "results.jsonl",
                            windows=8 if args.quick else 32, repeats=2 if args.quick else 5,
                            prompt_tokens=64, new_tokens=32 if args.quick else 64)
    print(summary_table(frame))

    sweep = []
    for variant, backend in (("none", "hf"), ("gguf-q4_k_m", "llamacpp")):
        if backend not in backends:
            continue
        path = toolkit.tiny(variant) if args.model is None else args.model
        with toolkit.load(str(path), backend, fallback=False) as loaded:
            for batch in [int(b) for b in args.batches.split(",")]:
                r = bench(loaded, prompt_tokens=64, new_tokens=32, batch=batch, repeats=2 if args.quick else 3)
                row = r.to_dict()
                row.pop("environment")
                row["variant"] = variant
                sweep.append(row)
    sweep_frame = pd.DataFrame(sweep)
    out.mkdir(parents=True, exist_ok=True)
    sweep_frame.to_csv(out / "batch_sweep.csv", index=False)
    print(sweep_frame[["variant", "backend", "batch", "ttft_s", "prefill_tok_s", "decode_tok_s",
                       "roofline_fraction"]].to_string(index=False))
    fig = throughput_vs_batch(sweep_frame)
    fig.savefig(out / "batch_sweep.png", dpi=110)
    report = write_report(frame, out, title="toolkit: the built-in tiny model on this machine",
                          notes=["Batch sweep: batch_sweep.csv / batch_sweep.png (hf and llama.cpp generate the "
                                 "prompts of a batch one after another; no native batching yet)."])
    print(json.dumps({"report": str(report)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
