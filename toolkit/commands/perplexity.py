"""``toolkit perplexity MODEL``: perplexity on a text, by toolkit's protocol or llama-perplexity's.

A thin wrapper over :func:`toolkit.measuring.quality.protocol_perplexity`: any backend, through its
``logprobs``; ``--protocol llama.cpp`` reproduces ``llama-perplexity -f FILE -c CTX --chunks N``.
"""

from __future__ import annotations

import argparse

from toolkit.commands._common import model_argument

HELP = "perplexity of a model on a text (toolkit's protocol or llama-perplexity's)"
EXAMPLE = "toolkit perplexity smollm2 --backend llamacpp --protocol llama.cpp --ctx 512 --chunks 8 --json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolkit.measuring.quality import PROTOCOLS

    model_argument(parser)
    parser.add_argument("--backend", default=None, help="hf, llamacpp, mlx or vllm (default: planned)")
    parser.add_argument("--quantization", default=None, help="bnb-4bit, ... (default: planned; for a built-in "
                        "model: the variant)")
    parser.add_argument("--text", default=None, help="UTF-8 text file (default: toolkit's bundled held-out text)")
    parser.add_argument("--protocol", default="toolkit", choices=PROTOCOLS,
                        help="toolkit: windows spread over the text, every next token scored; llama.cpp: "
                             "llama-perplexity's consecutive chunks, BOS first, second half of each scored")
    parser.add_argument("--ctx", type=int, default=None, help="tokens per window (default: 256 toolkit, 512 llama.cpp)")
    parser.add_argument("--chunks", type=int, default=None, help="windows to score (default: 16 toolkit, all "
                        "that fit llama.cpp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from toolkit.backends import load
    from toolkit.commands._common import print_json, resolve_target
    from toolkit.errors import ModelNotFound
    from toolkit.measuring.quality import protocol_perplexity

    text = None
    if args.text is not None:
        text = Path(args.text).expanduser()
        if not text.is_file():
            raise ModelNotFound(f"text file {text} does not exist: pass a UTF-8 text file with --text")
    model, quantization = resolve_target(args.model, args.backend, args.quantization)
    context = args.ctx or (512 if args.protocol == "llama.cpp" else None)  # a chunk must fit the context
    with load(model, args.backend, quantization=quantization, context=context, fallback=False) as loaded:
        result = protocol_perplexity(loaded, text, protocol=args.protocol, ctx=args.ctx, chunks=args.chunks)
        target = loaded.target
    out = {**result.to_dict(), "model": args.model, "path": str(target.path), "backend": target.backend,
           "quantization": target.quantization, "dtype": target.dtype, "text": str(text) if text else "heldout"}
    if args.json:
        print_json(out)
    else:
        print(f"perplexity {result.perplexity:.4f} ± {result.uncertainty:.4f} over {result.tokens} tokens "
              f"({result.chunks} x {result.ctx}, {args.protocol} protocol; {target.backend} {target.quantization} "
              f"{target.dtype})")
    return 0
