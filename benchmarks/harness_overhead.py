"""Does toolkit's benchmark harness add overhead? Compare, in one process on the same loaded model:

* toolkit: ``toolkit.bench(loaded, ...)`` — decode tok/s from its protocol (generate − one-token
  prefill), through the token-by-token stream every backend shares;
* loop: the least code that decodes greedily with a KV cache — ``model(ids, past_key_values=...)``
  and ``argmax``, nothing else — timed the same way (N tokens minus a 1-token run). This is the
  harness-overhead baseline;
* generate: ``model.generate(..., max_new_tokens=N, min_new_tokens=N, do_sample=False)`` from
  transformers, timed the same way (for reference: it has its own per-step overhead).

Rounds alternate so drift on a shared machine hits all three. Prints the ratios of the median decode
tok/s; the harness "adds no measurable overhead" when toolkit/loop is within 0.9–1.1.

    .venv/bin/python benchmarks/harness_overhead.py [--variant none] [--new-tokens 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def _decode_tok_s(run, new_tokens: int) -> float:
    def timed(n: int) -> float:
        start = time.perf_counter()
        run(n)
        return time.perf_counter() - start

    t_one = timed(1)
    t_full = timed(new_tokens)
    return (new_tokens - 1) / (t_full - t_one)


def generate_decode_tok_s(model, prompt, new_tokens: int) -> float:
    import torch

    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    @torch.inference_mode()
    def run(n: int) -> None:
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=model.config.pad_token_id)

    return _decode_tok_s(run, new_tokens)


def loop_decode_tok_s(model, prompt, new_tokens: int) -> float:
    import torch

    @torch.inference_mode()
    def run(n: int) -> None:
        ids, past = torch.tensor([prompt]), None
        for _ in range(n):
            out = model(input_ids=ids, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            ids = out.logits[:, -1].argmax(-1, keepdim=True)

    return _decode_tok_s(run, new_tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="none", help="tiny variant on the hf backend (none, bnb-4bit, gptq-4bit, ...)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "harness_overhead.json"))
    args = parser.parse_args()

    import toolkit
    from toolkit.measuring.bench import bench, random_prompt
    from toolkit.measuring.environment import environment

    path = toolkit.tiny(None if args.variant.startswith("bnb") else args.variant)
    quant = args.variant if args.variant.startswith("bnb") else None
    loaded = toolkit.load(str(path), "hf", quantization=quant, fallback=False)
    prompt = random_prompt(loaded.vocab_size, args.prompt_tokens, seed=0)
    loop_decode_tok_s(loaded.model, prompt, args.new_tokens)  # warm-up for the baselines
    generate_decode_tok_s(loaded.model, prompt, args.new_tokens)
    ours, loop, gen = [], [], []
    for _ in range(args.rounds):
        ours.append(bench(loaded, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=1,
                          warmup=1).decode_tok_s)
        loop.append(loop_decode_tok_s(loaded.model, prompt, args.new_tokens))
        gen.append(generate_decode_tok_s(loaded.model, prompt, args.new_tokens))
    med = statistics.median
    ratio = med(ours) / med(loop)
    result = {"variant": args.variant, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
              "rounds": args.rounds, "toolkit_decode_tok_s": ours, "loop_decode_tok_s": loop,
              "generate_decode_tok_s": gen, "ratio_toolkit_over_loop": ratio,
              "ratio_toolkit_over_generate": med(ours) / med(gen), "environment": environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"decode tok/s, median of {args.rounds} alternating rounds ({args.variant}, hf, "
          f"{args.prompt_tokens} prompt + {args.new_tokens} new tokens):")
    for name, values in (("toolkit.bench", ours), ("plain forward loop", loop), ("transformers generate()", gen)):
        print(f"  {name:<24} {med(values):8.1f}   {['%.1f' % x for x in values]}")
    print(f"  ratio toolkit/loop       {ratio:8.3f}   ({'within' if 0.9 <= ratio <= 1.1 else 'OUTSIDE'} 0.9-1.1: "
          "the harness overhead)")
    print(f"  ratio toolkit/generate   {med(ours) / med(gen):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
