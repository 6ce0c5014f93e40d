"""``toolkit quantize MODEL --method M``: quantize a local transformers folder with a real library."""

from __future__ import annotations

import argparse

HELP = "quantize a model folder (GPTQ, AWQ, compressed-tensors, GGUF, MLX); prints the result's path"
EXAMPLE = "toolkit quantize ./my-model --method gptq-4bit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from toolkit.builtin import BUILTIN_MODELS
    from toolkit.builtin.quantize import METHODS

    parser.add_argument("model", help=f"a transformers model folder (config.json + *.safetensors), or a built-in "
                        f"model ({', '.join(BUILTIN_MODELS)})")
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    parser.add_argument("--calibration", default=None, help="text file for GPTQ/AWQ calibration "
                        "(default: toolkit's bundled calibration text)")
    parser.add_argument("--out", default=None, help="also put the result into this new folder (default: only the cache)")
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Print the quantized model's path as the last line."""
    from toolkit.builtin import is_builtin, variant_path
    from toolkit.builtin.quantize import check_method, place, quantize

    check_method(args.method)
    if is_builtin(args.model):
        if args.calibration:
            from toolkit.errors import InvalidSpec

            raise InvalidSpec("a built-in model's variants use the bundled calibration text: quantize its folder "
                              f"(toolkit builtin {args.model}) to calibrate on another")
        path = variant_path(args.model, args.method, rebuild=args.rebuild, progress=not args.quiet)
        if args.out:
            from pathlib import Path

            path = place(path, Path(args.out).expanduser())
    else:
        path = quantize(args.model, args.method, calibration=args.calibration, out=args.out, rebuild=args.rebuild,
                        progress=not args.quiet)
    print(path)
    return 0
