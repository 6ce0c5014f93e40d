"""``toolkit`` command line: thin wrappers over the public functions.

Each subcommand's module declares its own flags (``add_arguments``) and handler (``main_*``); this
file only maps names to modules, imports the chosen one, and turns ToolkitError into a one-paragraph
message and an exit code instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, handler, help). Modules are imported only for the command that runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "probe": ("toolkit.hardware", "main_probe", "list devices with total and free memory"),
    "inspect": ("toolkit.inspect", "main_inspect", "read a model's metadata without loading weights"),
    "plan": ("toolkit.plan", "main_plan", "pick backend, quantization, dtype and context that fit"),
    "tiny": ("toolkit.tiny", "main_tiny", "path of the built-in tiny model or a variant (built on first use)"),
    "generate": ("toolkit.generate", "main_generate", "load a model and stream a completion of a prompt"),
    "bench": ("toolkit.bench", "main_bench", "benchmark TTFT, prefill and decode speed, and peak memory"),
    "compare": ("toolkit.compare", "main_compare", "compare variants: memory, speed and quality"),
    "demo": ("toolkit.demo", "main_demo", "the whole job on the built-in tiny model, with a report"),
    "models": ("toolkit.models", "main_models", "list local and cached models and whether they fit"),
    "fetch": ("toolkit.fetch", "main_fetch", "download only the files a backend needs from the hub"),
}


def build_parser() -> argparse.ArgumentParser:
    from toolkit import __version__

    parser = argparse.ArgumentParser(prog="toolkit", description="Plan, load, benchmark and compare LLMs "
                                     "and their quantized variants on your own hardware.")
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, handler, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name, _handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    from toolkit.errors import ToolkitError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Two passes: the first finds the command, whose module then declares its own flags.
    known, _ = parser.parse_known_args(argv)
    if known.command is None:
        parser.print_help()
        return 0
    try:
        module = importlib.import_module(known._module)
    except ModuleNotFoundError as exc:
        print(f"toolkit {known.command}: this command is not available in this install ({exc})", file=sys.stderr)
        return 2
    sub = argparse.ArgumentParser(prog=f"toolkit {known.command}", description=COMMANDS[known.command][2])
    module.add_arguments(sub)
    args = sub.parse_args(argv[argv.index(known.command) + 1:])
    try:
        return int(getattr(module, known._handler)(args) or 0)
    except ToolkitError as exc:
        print(f"toolkit {known.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"toolkit {known.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
