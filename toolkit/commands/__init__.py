"""The ``toolkit`` command line: one module per command, each thin over one public function.

Every command module declares ``HELP`` (one line), ``EXAMPLE`` (one invocation), ``add_arguments``
(its flags) and ``run(args) -> exit code``, and imports nothing heavy at module level, so that the
whole parser (every command's flags, for ``--help``) is built without importing an engine. A
:class:`toolkit.errors.ToolkitError` becomes a one-paragraph message and its exit code instead of
a traceback.

With ``--json`` a command's stdout holds its JSON document alone, whatever the libraries print while
it runs (their output goes to stderr; see :func:`toolkit.commands._common.json_stdout`), and the
commands write that document with :func:`toolkit.commands._common.print_json`. ``-v`` sets
``TOOLKIT_LOG=debug`` (:mod:`toolkit.logs`): the libraries' own logs are then shown.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from toolkit import logs
from toolkit.commands._common import json_stdout
from toolkit.errors import ToolkitError

# command -> module under toolkit.commands; the order is the order of `toolkit --help`
COMMANDS = ("probe", "inspect", "plan", "models", "fetch", "builtin", "tiny", "quantize", "generate", "bench",
            "perplexity", "compare", "demo")

EPILOG = """common invocations:
  toolkit plan tiny --memory 8GiB            what fits in 8 GiB, and why
  toolkit generate tiny --prompt "def f(x):" stream a completion (summary on stderr)
  toolkit compare ./my-model --variants none,bnb-4bit,awq-4bit,gguf-q4_k_m --backends hf,llamacpp --report out/
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """A flag's default after its help (unless the help says it, or there is none); descriptions and
    epilogs kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {action.default})"


def build_parser() -> argparse.ArgumentParser:
    """The full parser: every command with its flags (imports only the light command modules)."""
    from toolkit import __version__

    parser = argparse.ArgumentParser(prog="toolkit", formatter_class=_Formatter, epilog=EPILOG,
                                     description="Plan, load, benchmark and compare LLMs and their quantized "
                                                 "variants on your own hardware.")
    parser.add_argument("--version", action="version", version=f"toolkit {__version__}")
    _verbose_argument(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"toolkit.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=_Formatter,
                           epilog=f"example:\n  {module.EXAMPLE}")
        module.add_arguments(p)
        _verbose_argument(p, default=argparse.SUPPRESS)  # also after the command: toolkit generate tiny -v
        p.set_defaults(_run=module.run)
    return parser


def _verbose_argument(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help=f"show the libraries' own logs, warnings and progress bars (as {logs.ENV}=debug does)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        build_parser().print_help()
        return 0
    if args.verbose:
        os.environ[logs.ENV] = "debug"  # read when a backend loads, here and in the processes started from here
    try:
        with json_stdout() if getattr(args, "json", False) else contextlib.nullcontext():
            return int(args._run(args) or 0)
    except ToolkitError as exc:
        print(f"toolkit {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"toolkit {args.command}: interrupted", file=sys.stderr)
        return 130
