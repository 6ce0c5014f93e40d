"""``toolkit generate MODEL``: plan, load, stream one generation to stdout, unload.

A thin wrapper over :func:`toolkit.load` and ``Loaded.stream``: the text goes to stdout as it
comes, a one-line summary (tokens, finish reason, TTFT, tok/s) to stderr, so that
``toolkit generate m > out.txt`` keeps only the text. ``--chat`` sends the prompt as one user
message (after ``--system``'s) through the model's chat template, as ``stream(messages)`` does; the
sampling flags are the fields of :class:`~toolkit.backends.generation.GenerationConfig`. Heavy
libraries are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from toolkit.backends.generation import GenerationConfig
from toolkit.commands._common import model_argument, print_json, resolve_target
from toolkit.errors import InvalidSpec
from toolkit.units import parse_memory

HELP = "load a model and stream a completion of a prompt"
EXAMPLE = 'toolkit generate tiny --prompt "def add(a, b):" --max-tokens 32'
DEFAULT_PROMPT = "def read_config(path):\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GenerationConfig()
    model_argument(parser)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help="text to continue, or with --chat the user's message (default: a Python def)")
    parser.add_argument("--chat", action="store_true",
                        help="send the prompt as one user message through the model's own chat template")
    parser.add_argument("--system", default=None, help="with --chat: a system message before it (implies --chat)")
    parser.add_argument("--max-tokens", dest="max_tokens", type=int, default=defaults.max_tokens,
                        help="new tokens at most")
    parser.add_argument("--temperature", type=float, default=defaults.temperature,
                        help=f"sampling temperature; 0 decodes greedily (default: {defaults.temperature:g})")
    parser.add_argument("--top-p", dest="top_p", type=float, default=defaults.top_p,
                        help=f"nucleus sampling mass, with --temperature above 0 (default: {defaults.top_p:g})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="sampling seed, for a reproducible sampled output (default: a random one)")
    parser.add_argument("--stop", action="append", default=None, metavar="TEXT",
                        help="end the output before this text; repeat for several (default: none)")
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
    from toolkit.facts.probe import best_device, device_for, probe

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


def run(args: argparse.Namespace) -> int:
    """Stream a completion of ``--prompt``."""
    from toolkit.backends import load

    # invalid values fail before any load
    config = GenerationConfig(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                              stop=tuple(args.stop or ()), seed=args.seed, system_prompt=args.system)
    chat = args.chat or args.system is not None
    prompt: str | list[dict[str, str]] = [{"role": "user", "content": args.prompt}] if chat else args.prompt
    device = local_device(args.memory, args.device)
    model, quantization = resolve_target(args.model, args.backend, args.quantization)
    options = {"allow_pickle": True} if args.allow_pickle else {}
    with load(model, args.backend, quantization=quantization, dtype=args.dtype, context=args.context,
              device=device, trust_remote_code=args.trust_remote_code, revision=args.revision,
              **options) as loaded:
        notes = [f"{a['backend']} {a['quantization']} failed to load ({a['error']}), so the next planned option "
                 "was loaded" for a in loaded.attempts] + loaded.notes
        for note in notes:
            print(f"toolkit generate: note: {' '.join(note.split())}", file=sys.stderr)
        last = None
        parts: list[str] = []
        for chunk in loaded.stream(prompt, config):
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
        print_json({"text": "".join(parts), "backend": target.backend, "quantization": target.quantization,
                    "dtype": target.dtype, "prompt_tokens": last.prompt_tokens if last else 0,
                    "completion_tokens": tokens, "finish_reason": finish, "ttft_s": ttft, "decode_tok_s": rate})
    else:
        print()
        print(f"toolkit generate: {tokens} tokens, finish {finish}, TTFT {ttft * 1000:.0f} ms, {rate:.1f} tok/s "
              f"({target.backend} {target.quantization} {target.dtype})", file=sys.stderr)
    return 0
