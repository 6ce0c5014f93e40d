"""``toolkit fetch MODEL``: download only the files a backend needs from the hub."""

from __future__ import annotations

import argparse

from toolkit import capabilities as caps

HELP = "download only the files a backend needs from the hub"
EXAMPLE = "toolkit fetch Qwen/Qwen2.5-0.5B-Instruct-GGUF --backend llamacpp --quantization gguf-q4_k_m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="hub id, e.g. Qwen/Qwen2.5-0.5B")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default main)")
    parser.add_argument("--backend", default=None, choices=caps.fetch_backends(), help="fetch only what this backend needs")
    parser.add_argument("--quantization", default=None, help="for GGUF repos: which file, e.g. gguf-q4_k_m")
    parser.add_argument("--include-quantized", dest="include_quantized", action="store_true",
                        help="also fetch the files of other quantizations")
    parser.add_argument("--cache-dir", dest="cache_dir", default=None, help="hub cache folder (default HF_HUB_CACHE)")
    parser.add_argument("--allow-pickle", dest="allow_pickle", action="store_true",
                        help="fetch *.bin/*.pt weights when the repo has no safetensors (runs code when loaded)")


def run(args: argparse.Namespace) -> int:
    """Download what the backend needs; print the local path last."""
    from toolkit.hub.fetch import fetch

    path = fetch(args.model, revision=getattr(args, "revision", None), backend=getattr(args, "backend", None),
                 quantization=getattr(args, "quantization", None),
                 include_quantized=getattr(args, "include_quantized", False),
                 cache_dir=getattr(args, "cache_dir", None), allow_pickle=getattr(args, "allow_pickle", False))
    print(path)
    return 0
