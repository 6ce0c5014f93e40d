"""``toolkit models``: local and cached models, whether each fits, and deleting them."""

from __future__ import annotations

import argparse

from toolkit.commands._common import device_arguments, device_from_args, emit, print_json
from toolkit.units import fmt_bytes

HELP = "list local and cached models and whether they fit"
EXAMPLE = "toolkit models ~/models --memory 8GiB --device cpu"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="folders or .gguf files to list besides the hub cache")
    parser.add_argument("--cache-dir", dest="cache_dir", default=None, help="hub cache folder (default HF_HUB_CACHE)")
    device_arguments(parser, device_help="add fits/plan columns for a device: auto (this machine), cuda, cpu, mps, "
                                         "or a spec like 24GiB, T4, 2xA100-80GB, cpu:16GiB (any of --memory, --gpus, "
                                         "--compute-capability adds them too)")
    parser.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    parser.add_argument("--delete", default=None, metavar="NAME", help="delete a cached repo id or a local model path")
    parser.add_argument("--revision", default=None, help="with --delete: only this cached revision (commit prefix)")
    parser.add_argument("--yes", action="store_true", help="with --delete: do not ask for confirmation")


def run(args: argparse.Namespace) -> int:
    from toolkit.hub.models import delete_model, hub_cache_dir, models

    cache_dir = getattr(args, "cache_dir", None)
    if getattr(args, "delete", None):
        kw = {"revision": getattr(args, "revision", None), "cache_dir": cache_dir}
        size = delete_model(args.delete, dry_run=True, **kw)
        if not getattr(args, "yes", False):
            try:
                answer = input(f"delete {args.delete} ({fmt_bytes(size)})? [y/N] ")
            except EOFError:
                answer = ""
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return 1
        freed = delete_model(args.delete, **kw)
        if getattr(args, "json", False):
            print_json({"deleted": args.delete, "freed_bytes": freed})
        else:
            print(f"deleted {args.delete}: freed {fmt_bytes(freed)}")
        return 0
    df = models(getattr(args, "paths", None) or None, cache_dir=cache_dir, device=_device(args))
    if getattr(args, "json", False):
        emit(df.to_json(orient="records", indent=2))
    elif df.empty:
        print(f"no models found in {hub_cache_dir(cache_dir)}" + (" or the given paths" if getattr(args, "paths", None) else ""))
    else:
        shown = df.drop(columns=["error"]) if df["error"].isna().all() else df.copy()
        shown["revision"] = shown["revision"].str[:12]  # enough to tell commits apart; --json has them whole
        print(shown.to_string(index=False, na_rep="-"))
    return 0


def _device(args: argparse.Namespace):
    """The device of --device/--memory/--gpus/--compute-capability, parsed as ``toolkit plan`` does;
    None (no fits/plan columns) when none is given."""
    flags = {name: getattr(args, name, None) for name in ("device", "memory", "gpus", "compute_capability")}
    if all(value is None for value in flags.values()):
        return None
    return device_from_args(argparse.Namespace(**flags))
