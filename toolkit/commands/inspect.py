"""``toolkit inspect MODEL``: what a model is, from its metadata alone."""

from __future__ import annotations

import argparse

from toolkit.commands._common import model_argument, print_json, resolve_model

HELP = "read a model's metadata without loading weights"
EXAMPLE = "toolkit inspect Qwen/Qwen2.5-0.5B --json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model_argument(parser)
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from toolkit.facts.model_info import inspect

    info = inspect(resolve_model(args.model), revision=args.revision)
    if args.json:
        print_json(info.to_dict())
        return 0
    for k, v in info.to_dict().items():
        if k in ("files", "quantization_config", "gguf") or v in (None, [], 0):
            continue
        if k == "checkpoint_bytes":
            v = f"{v} ({v / 2**30:.2f} GiB)"
        print(f"{k:<22} {v}")
    return 0
