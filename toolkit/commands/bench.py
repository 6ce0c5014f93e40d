"""``toolkit bench MODEL``: TTFT, prefill and decode speed and peak memory, by one protocol for
every backend (see :mod:`toolkit.measuring.bench`); with ``--concurrency``, a serving load test of
an OpenAI-compatible server instead (see :mod:`toolkit.measuring.serving`)."""

from __future__ import annotations

import argparse

from toolkit import capabilities as caps
from toolkit.commands._common import print_json

HELP = "benchmark TTFT, prefill and decode speed, and peak memory"
EXAMPLE = "toolkit bench tiny --backend hf --batch 1,4 --json"
SERVING_EXAMPLE = "toolkit bench MODEL --backend openai --base-url URL --concurrency 1,4,16 --json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, .gguf file, hub id, a built-in model (tiny, smollm2), or "
                        "with --backend openai the server's model name")
    parser.add_argument("--backend", default=None, choices=tuple(caps.BACKENDS), help="default: planned")
    parser.add_argument("--quantization", default=None, help="default: planned (for a built-in model: the variant)")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16 or float32 (default: planned)")
    parser.add_argument("--batch", default="1", help="batch size, or a comma list to sweep (1,2,4)")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length of each run (llama-bench -p)")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run, EOS ignored "
                        "(llama-bench -n)")
    parser.add_argument("--depth", type=int, default=None, help="tokens of context before the decoded ones "
                        "(llama-bench -d) (default: the prompt)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the backend's choice, "
                        "see the README)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs, each on a fresh prompt")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs after the cold one")
    parser.add_argument("--base-url", default=None, help="with --backend openai: the server's URL (…/v1)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    serving = parser.add_argument_group("serving load test (--backend openai, see toolkit.measuring.serving)")
    serving.add_argument("--concurrency", default=None, help="requests in flight, or a comma list to sweep "
                         "(1,4,16): runs the load test instead of the single-model protocol")
    serving.add_argument("--request-rate", type=float, default=None, help="Poisson arrivals per second, "
                         "capped by the concurrency (default: a closed loop)")
    serving.add_argument("--requests", type=int, default=None, help="requests per level (default: 4 × concurrency, "
                         "at least 8)")
    serving.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer or a chunk")
    serving.add_argument("--results", default=None, help="JSON-lines file: each finished level is appended")


def run(args: argparse.Namespace) -> int:
    from toolkit.backends import load
    from toolkit.measuring.bench import bench

    from toolkit.commands._common import resolve_target

    if args.concurrency:
        return _serving(args)

    model, quantization = (args.model, args.quantization) if args.backend == "openai" else resolve_target(
        args.model, args.backend, args.quantization)
    options = {"base_url": args.base_url} if args.base_url else {}
    if args.threads:
        options["n_threads"] = args.threads
    rows = []
    with load(model, args.backend, quantization=quantization, dtype=args.dtype, **options) as loaded:
        for batch in [int(b) for b in str(args.batch).split(",")]:
            result = bench(loaded, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch=batch,
                           repeats=args.repeats, warmup=args.warmup, depth=args.depth)
            rows.append(result.to_dict())
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['backend']:<9} {r['quantization']:<12} batch {r['batch']:<3} threads {r['threads'] or '-':<3} "
                  f"TTFT {r['ttft_s']*1000:8.1f} ms  prefill {r['prefill_tok_s']:9.1f} ± {r['prefill_std_tok_s']:.1f} "
                  f"tok/s  decode {r['decode_tok_s']:8.1f} ± {r['decode_std_tok_s']:.1f} tok/s  "
                  f"peak {r['peak_memory_bytes']/2**20:8.1f} MiB")
    return 0


def _serving(args: argparse.Namespace) -> int:
    """The serving load test: one row per concurrency level, printed when the sweep ends (``--results``
    keeps each level as it finishes). Exit status 1 when any request failed."""
    from toolkit.backends import load
    from toolkit.errors import InvalidSpec
    from toolkit.measuring.serving import load_test

    if args.backend != "openai":
        raise InvalidSpec(f"--concurrency load-tests an OpenAI-compatible server: pass --backend openai "
                          f"--base-url URL (e.g. {SERVING_EXAMPLE})")
    options = {"base_url": args.base_url} if args.base_url else {}
    with load(args.model, "openai", **options) as loaded:  # the model name the server knows, as given
        rows = load_test(loaded, concurrency=[int(c) for c in str(args.concurrency).split(",")],
                         request_rate=args.request_rate, requests=args.requests, prompt_tokens=args.prompt_tokens,
                         new_tokens=args.new_tokens, warmup=args.warmup, timeout_s=args.timeout, results=args.results)
    if args.json:
        print_json([r.to_dict() for r in rows])
    else:
        for r in rows:
            print(r.summary())
            if r.first_error:
                print(f"  first error: {r.first_error}")
    return 0 if all(r.failures == 0 for r in rows) else 1
