"""``toolkit tiny [--variant V]``: the path of the built-in tiny model or one of its variants."""

from __future__ import annotations

import argparse

HELP = "path of the built-in tiny model or a variant (built on first use)"
EXAMPLE = "toolkit tiny --variant gguf-q4_k_m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolkit.builtin.tiny import ADAPTERS, names

    parser.add_argument("--variant", default=None, help=f"one of: {', '.join([*names(), *ADAPTERS])}")
    parser.add_argument("--all", action="store_true", help="build every variant")
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")


def run(args: argparse.Namespace) -> int:
    """Print the path of the tiny model or a variant as the last line."""
    from toolkit.builtin.tiny import VARIANTS, tiny

    if args.all:
        for variant in VARIANTS:
            print(f"{variant}\t{tiny(variant, rebuild=args.rebuild)}")
        return 0
    print(tiny(args.variant, rebuild=args.rebuild))
    return 0
