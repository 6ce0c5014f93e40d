"""``toolkit generate MODEL``: plan, load, stream one generation to stdout, unload.

A thin wrapper over :func:`toolkit.load` and ``Loaded.stream``: the text goes to stdout as it
comes, a one-line summary (tokens, finish reason, TTFT, tok/s) to stderr, so that
``toolkit generate m > out.txt`` keeps only the text. Heavy libraries are imported only when the
command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

DEFAULT_PROMPT = "def read_config(path):\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``toolkit generate`` flags."""
    parser.add_argument("model", help="model folder, .gguf file, hub id, or 'tiny' (built-in)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="text to continue (default: a Python def)")
    parser.add_argument("--max-tokens", dest="max_tokens", type=int, default=64, help="new tokens at most")
    parser.add_argument("--backend", default=None, help="hf, llamacpp, mlx or vllm (default: planned)")
    parser.add_argument("--quantization", default=None, help="none, bnb-8bit, bnb-4bit, ... (default: planned)")
    parser.add_argument("--dtype", default=None, help="bfloat16, float16 or float32 (default: planned)")
    parser.add_argument("--context", type=int, default=None, help="context to allocate, in tokens")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best one here)")
    parser.add_argument("--memory", default=None, help="memory budget on that device, e.g. 8GiB (default: free memory)")
    parser.add_argument("--revision", default=None, help="for a hub id: branch, tag or commit to load (pin a commit)")
    parser.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true",
                        help="allow Python code shipped in the model folder to run (only for sources you trust)")
    parser.add_argument("--allow-pickle", dest="allow_pickle", action="store_true",
                        help="allow pickle weights (*.bin, *.pt), which can run code when loaded")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")


def local_device(memory: str | None, kind: str | None) -> Any:
    """The device to load on: one of this machine's, optionally with a smaller memory budget.

    Returns None when neither flag is given (the planner then probes the best device itself).

    Raises:
        InvalidSpec: The memory does not parse, or the device is not on this machine.
    """
    from toolkit.errors import InvalidSpec
    from toolkit.hardware import best_device, device_for, parse_memory, probe

    if memory is None and kind is None:
        return None
    if memory is not None:
        parse_memory(memory)  # fail early with the parse message
    here = probe()
    kinds = {d.kind for d in here}
    plain = {"gpu": "cuda"}.get((kind or "").lower(), (kind or "").lower())
    if plain in ("cuda", "mps", "cpu") and plain not in kinds:
        dev_kind = plain
    else:
        dev = device_for(memory=memory, kind=kind or best_device(here).kind)
        if dev.kind in kinds:
            return dev
        dev_kind = dev.kind
    raise InvalidSpec(f"--device {kind} is a {dev_kind} device, and this machine has none: generate runs here, so "
                      f"use --device {' or '.join(sorted(kinds))} (with --memory to cap the budget); to plan for "
                      f"hardware you do not have, use `toolkit plan --device {kind}`")


def main_generate(args: argparse.Namespace) -> int:
    """``toolkit generate MODEL``: stream a completion of ``--prompt``."""
    from toolkit.backends import load
    from toolkit.backends.base import GenerationConfig

    config = GenerationConfig(max_tokens=args.max_tokens)  # invalid values fail before any load
    device = local_device(args.memory, args.device)
    model = args.model
    if model == "tiny":
        from toolkit.tiny import BASE

        model = str(BASE)
    options = {"allow_pickle": True} if args.allow_pickle else {}
    with load(model, args.backend, quantization=args.quantization, dtype=args.dtype, context=args.context,
              device=device, trust_remote_code=args.trust_remote_code, revision=args.revision,
              **options) as loaded:
        notes = [f"{a['backend']} {a['quantization']} failed to load ({a['error']}), so the next planned option "
                 "was loaded" for a in loaded.attempts] + list(getattr(loaded, "notes", []))
        for note in notes:
            print(f"toolkit generate: note: {' '.join(note.split())}", file=sys.stderr)
        last = None
        parts: list[str] = []
        for chunk in loaded.stream(args.prompt, config):
            if args.json:
                parts.append(chunk.text)
            else:
                print(chunk.text, end="", flush=True)
            last = chunk
        target = loaded.target
    tokens = last.generated_tokens if last else 0
    finish = (last.finish_reason if last else None) or "length"
    ttft = last.ttft_s if last else 0.0
    rate = last.tokens_per_s if last else 0.0
    if args.json:
        print(json.dumps({"text": "".join(parts), "backend": target.backend, "quantization": target.quantization,
                          "dtype": target.dtype, "prompt_tokens": last.prompt_tokens if last else 0,
                          "completion_tokens": tokens, "finish_reason": finish, "ttft_s": ttft,
                          "decode_tok_s": rate}, indent=2))
    else:
        print()
        print(f"toolkit generate: {tokens} tokens, finish {finish}, TTFT {ttft * 1000:.0f} ms, {rate:.1f} tok/s "
              f"({target.backend} {target.quantization} {target.dtype})", file=sys.stderr)
    return 0
