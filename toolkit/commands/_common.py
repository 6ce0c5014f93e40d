"""Flags and argument handling that several commands share."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

from toolkit.builtin import BUILTIN_MODELS, is_builtin, resolve
from toolkit.units import parse_memory

__all__ = ["BUILTIN_MODELS", "model_argument", "resolve_model", "resolve_target", "device_arguments",
           "device_from_args", "existing_path"]


def model_argument(parser: argparse.ArgumentParser, *, optional: bool = False, default: str | None = None) -> None:
    """The positional MODEL: a folder, a .gguf file, a hub id, or a built-in model's name."""
    help_text = f"model folder, .gguf file, hub id, or a built-in model ({', '.join(BUILTIN_MODELS)})"
    if optional:
        parser.add_argument("model", nargs="?", default=default, help=help_text)
    else:
        parser.add_argument("model", help=help_text)


def resolve_target(name: str, backend: str | None = None, quantization: str | None = None) -> tuple[str, str | None]:
    """``(path, quantization)``: a built-in model's name becomes the path of the variant that
    ``backend``/``quantization`` ask for (built on first use; a prequantized variant carries its own
    quantization, so None comes back); anything else as given."""
    path, quant = resolve(name, backend, quantization)
    return str(path), quant


def resolve_model(name: str, backend: str | None = None, quantization: str | None = None) -> str:
    """A built-in model's path for its name (see :func:`resolve_target`); anything else as given."""
    return resolve_target(name, backend, quantization)[0] if is_builtin(name) else name


def device_arguments(parser: argparse.ArgumentParser, device_help: str | None = None) -> None:
    """--memory/--device/--gpus/--compute-capability: the device to plan for (default: probed)."""
    parser.add_argument("--memory", default=None, help="memory per device, e.g. 24GiB or 16GB (default: probed)")
    parser.add_argument("--device", default=None,
                        help=device_help or "cuda, cpu, mps, auto, or a spec like T4, A100-80GB, 2xH100, cpu:16GiB "
                                            "(default: this machine)")
    parser.add_argument("--gpus", type=int, default=None, help="number of GPUs")
    parser.add_argument("--compute-capability", dest="compute_capability", default=None, help="e.g. 8.0 or 7.5")


def device_from_args(args: argparse.Namespace):
    """The device that --memory/--device/--gpus/--compute-capability describe."""
    from toolkit.facts.probe import device_for

    if args.memory is not None:
        parse_memory(args.memory)  # fail early with the parse message
    kind = None if (args.device or "").lower() == "auto" else args.device  # auto: the best device here
    return device_for(memory=args.memory, kind=kind, gpus=args.gpus, compute_capability=args.compute_capability)


# While a --json command runs: writes the JSON document to the real stdout (see json_stdout)
_json_out: Callable[[str], None] | None = None


@contextlib.contextmanager
def json_stdout() -> Iterator[None]:
    """Keep stdout for the JSON document alone: while the command runs, file descriptor 1 (C
    libraries such as llama.cpp write there) and ``sys.stdout`` (``print``, logging handlers, progress
    bars) both point at stderr; :func:`print_json` writes to the stdout that was there before."""
    global _json_out
    real = sys.stdout
    real.flush()
    sys.stderr.flush()
    try:
        fd, err = real.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # streams without a file (a notebook's, pytest's capture)
        fd = err = None
    saved = None
    if fd is not None and err is not None:
        saved = os.dup(fd)
        os.dup2(err, fd)

    def write(text: str) -> None:
        if saved is None:
            real.write(text)
            real.flush()
            return
        data = text.encode(getattr(real, "encoding", None) or "utf-8")
        while data:
            data = data[os.write(saved, data):]

    _json_out = write
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        _json_out = None
        sys.stdout = real
        if saved is not None:
            sys.stderr.flush()
            os.dup2(saved, fd)  # type: ignore[arg-type]
            os.close(saved)


def emit(text: str) -> None:
    """Write a command's machine-readable result (a JSON text) on stdout, alone."""
    text = text if text.endswith("\n") else text + "\n"
    if _json_out is not None:
        _json_out(text)
    else:
        sys.stdout.write(text)


def print_json(value: Any, default: Callable[[Any], Any] | None = None) -> None:
    """``value`` as an indented JSON document on stdout (see :func:`emit`)."""
    emit(json.dumps(value, indent=2, default=default))


def existing_path(value: str) -> Path:
    return Path(value).expanduser()
