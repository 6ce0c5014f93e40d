"""``toolkit builtin [tiny|smollm2] [--variant V]``: the path of a built-in model or one of its variants."""

from __future__ import annotations

import argparse

HELP = "path of a built-in model (tiny, smollm2) or one of its variants (built on first use)"
EXAMPLE = "toolkit builtin smollm2 --variant gguf-q4_k_m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolkit.builtin import BUILTIN_MODELS

    parser.add_argument("model", nargs="?", default="tiny", choices=BUILTIN_MODELS, help="the built-in model")
    parser.add_argument("--variant", default=None, help="a variant name (--list shows them; default: none, the "
                        "full-precision transformers folder)")
    parser.add_argument("--list", action="store_true", help="list the variants and whether each is built")
    parser.add_argument("--all", action="store_true", help="build every variant")
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")


def run(args: argparse.Namespace) -> int:
    """Print the path as the last line (with --all or --list: one ``variant<TAB>path-or-state`` line each)."""
    from toolkit.builtin import is_built, variant_names, variant_path

    names = variant_names(args.model)
    if args.model == "tiny":
        from toolkit.builtin.tiny import ADAPTERS

        names = [*names, *ADAPTERS]
    if args.list:
        for name in names:
            print(f"{name}\t{'built' if is_built(args.model, name) else 'not built'}")
        return 0
    if args.all:
        for name in names:
            print(f"{name}\t{variant_path(args.model, name, rebuild=args.rebuild)}", flush=True)
        return 0
    print(variant_path(args.model, args.variant, rebuild=args.rebuild))
    return 0
