"""Load/unload cycles in one process: does ``unload()`` give the memory back?

For each case, a fresh interpreter loads the model, generates a few tokens, unloads, and repeats
``--cycles`` times (default 20), reading its RSS after every unload (after toolkit's own
``release_memory``). Reported per case: RSS before the first load (libraries imported), while
loaded, after the first and the last unload, and the growth from the second unload to the last
(the first cycle pays one-time costs: lazy imports, allocator arenas, kernel caches). The parent
prints a table, writes ``benchmarks/results/unload_cycles.json`` and exits 1 when a case grows by
more than ``--bound-mib`` (default 16 MiB) over the cycles.

    .venv/bin/python benchmarks/unload_cycles.py [--cycles 20] [--only hf-fp32,llamacpp-q4_k_m]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._worker import run_worker  # noqa: E402
from toolkit.facts.process import release_memory, rss_bytes

MiB = 2**20
# label: (backend, tiny variant or None for the base folder, quantization, dtype, import to warm)
CASES = {
    "hf-fp32": ("hf", None, "none", "float32", "toolkit.backends.hf"),
    "hf-bnb-4bit": ("hf", None, "bnb-4bit", "auto", "toolkit.backends.hf"),
    "llamacpp-q4_k_m": ("llamacpp", "gguf-q4_k_m", "gguf-q4_k_m", "auto", "toolkit.backends.llamacpp"),
    "mlx-4bit": ("mlx", "mlx-4bit", "mlx-4bit", "auto", "toolkit.backends.mlx"),
}


def worker(label: str, cycles: int) -> dict:
    import importlib

    from toolkit.backends import LoadTarget, load_target
    from toolkit.builtin.tiny import tiny

    backend, variant, quantization, dtype, module = CASES[label]
    path = Path(tiny(variant, progress=False))
    importlib.import_module(module)  # library import cost is not what this measures
    release_memory()
    baseline = rss_bytes()
    loaded_rss, after, times = [], [], []
    text = None
    for _ in range(cycles):
        t0 = time.perf_counter()
        model = load_target(LoadTarget(path=path, backend=backend, quantization=quantization, dtype=dtype))
        out = model.generate("def add(a, b):\n", max_tokens=8, ignore_eos=True)
        assert text is None or out.text == text, (out.text, text)  # every cycle decodes the same
        text = out.text
        loaded_rss.append(rss_bytes())
        model.unload()
        del model
        after.append(rss_bytes())
        times.append(time.perf_counter() - t0)
    return {"case": label, "cycles": cycles, "baseline_bytes": baseline, "loaded_bytes": max(loaded_rss),
            "after_first_unload_bytes": after[0], "after_last_unload_bytes": after[-1],
            "growth_bytes": after[-1] - after[min(1, cycles - 1)], "after_unload_bytes": after,
            "seconds_per_cycle": sum(times) / len(times), "text": text}


def run_case(label: str, cycles: int, timeout: float) -> dict:
    result = run_worker(f"{Path(__file__).resolve()}:worker", {"label": label, "cycles": cycles}, timeout)
    return {"case": label, **result}


def print_table(rows: list[dict], bound: int) -> None:
    head = (f"{'case':<16} {'cycles':>6} {'baseline':>9} {'loaded':>8} {'unload#1':>9} {'unload#N':>9} "
            f"{'growth':>8} {'s/cycle':>8} {'ok':>3}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("error"):
            print(f"{r['case']:<16} FAILED: {r['error'][:120]}")
            continue
        ok = "yes" if r["growth_bytes"] <= bound else "NO"
        print(f"{r['case']:<16} {r['cycles']:>6} {r['baseline_bytes'] / MiB:>9.1f} {r['loaded_bytes'] / MiB:>8.1f} "
              f"{r['after_first_unload_bytes'] / MiB:>9.1f} {r['after_last_unload_bytes'] / MiB:>9.1f} "
              f"{r['growth_bytes'] / MiB:>+8.2f} {r['seconds_per_cycle']:>8.2f} {ok:>3}")
    print("(RSS in MiB; growth = after the last unload - after the second, the first cycle paying one-time costs)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--only", default=None, help="comma-separated case labels: " + ",".join(CASES))
    ap.add_argument("--bound-mib", type=float, default=16.0)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unload_cycles.json"))
    args = ap.parse_args(argv)
    labels = args.only.split(",") if args.only else list(CASES)
    unknown = [x for x in labels if x not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    rows = []
    for label in labels:
        print(f"... {label}", file=sys.stderr, flush=True)
        rows.append(run_case(label, args.cycles, args.timeout))
    bound = int(args.bound_mib * MiB)
    print_table(rows, bound)
    from toolkit.measuring.environment import environment

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"environment": environment(), "bound_bytes": bound, "rows": rows}, indent=1) + "\n")
    return 0 if all(not r.get("error") and r["growth_bytes"] <= bound for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
