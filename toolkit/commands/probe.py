"""``toolkit probe``: the devices here, with total and free memory."""

from __future__ import annotations

import argparse

from toolkit.commands._common import print_json
from toolkit.units import GiB

HELP = "list devices with total and free memory"
EXAMPLE = "toolkit probe --json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from toolkit.facts.probe import probe

    devices = probe()
    if args.json:
        print_json([d.to_dict() for d in devices])
        return 0
    print(f"{'kind':<5} {'name':<40} {'total':>10} {'free':>10} {'cc':>5}  source")
    for d in devices:
        cc = ".".join(map(str, d.compute_capability)) if d.compute_capability else "-"
        print(f"{d.kind:<5} {d.name[:40]:<40} {d.total_bytes / GiB:>6.1f} GiB {d.free_bytes / GiB:>6.1f} GiB "
              f"{cc:>5}  {d.source}")
    return 0
