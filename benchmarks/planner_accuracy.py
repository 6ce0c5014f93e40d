"""Planner accuracy: predicted peak memory vs the measured peak RSS, for every built-in tiny variant.

Each variant runs in a fresh interpreter (``python -m benchmarks.planner_accuracy --worker ...``, or
``python benchmarks/planner_accuracy.py --worker ...``) that plans on device ``cpu`` at a fixed
context (default 2048, the tiny model's maximum; the planner extends any smaller wish to the largest
context that fits, and the prompt always fills the plan's ``max_context``), loads with ``toolkit.load(plan)``, generates 16 tokens after a prompt of ``max_context - 16``
random token ids (so the KV cache reaches the planned context) and reports the process's peak RSS
(``VmHWM``: the whole process from interpreter start, which is what the user's machine must hold)
together with the plan's breakdown and the RSS at a few checkpoints (after imports, after load).

The parent prints a table, writes ``benchmarks/results/planner_accuracy.json`` and exits 1 when
any variant's error exceeds ``--tolerance`` (default 10%).

    .venv/bin/python benchmarks/planner_accuracy.py [--context 2048] [--only hf:none,llamacpp:gguf-f16]

``--suite architectures`` does the same for random-initialised models of published architectures
(``toolkit.builtin.architectures``) on hf, llamacpp and mlx at 2k, 8k and 32k tokens, and compares
the plan with the engines' own figures too: see ``benchmarks/_architectures.py``.
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
from toolkit.backends.generation import GenerationConfig
from toolkit.facts.process import peak_rss_bytes, rss_bytes

MiB = 2**20
NEW_TOKENS = 16
# (label, tiny variant, backend, quantization passed to plan or None)
CASES = [
    ("none", "none", "hf", "none"),
    ("bnb-8bit", "bnb-8bit", "hf", "bnb-8bit"),
    ("bnb-4bit", "bnb-4bit", "hf", "bnb-4bit"),
    ("gptq-4bit", "gptq-4bit", "hf", None),
    ("awq-4bit", "awq-4bit", "hf", None),
    ("ct-gptq-4bit", "ct-gptq-4bit", "hf", None),
    ("ct-awq-4bit", "ct-awq-4bit", "hf", None),
    ("gguf-f16", "gguf-f16", "llamacpp", None),
    ("gguf-q8_0", "gguf-q8_0", "llamacpp", None),
    ("gguf-q4_k_m", "gguf-q4_k_m", "llamacpp", None),
    ("mlx-none", "none", "mlx", "none"),
    ("mlx-4bit", "mlx-4bit", "mlx", None),
]
# Libraries whose import cost is worth recording per backend/quantization (calibration aid).
IMPORTS = {"hf": ["torch", "transformers"], "llamacpp": ["llama_cpp"], "mlx": ["mlx.core", "mlx_lm"]}
QUANT_IMPORTS = {"bnb": ["bitsandbytes"], "gptq": ["gptqmodel", "optimum"], "awq": ["gptqmodel"],
                 "ct": ["compressed_tensors"]}


def _rss() -> tuple[int, int]:
    return rss_bytes(), peak_rss_bytes()


def worker(variant: str, backend: str, quantization: str | None, context: int, seed: int) -> dict:
    """Run in a fresh process: plan, load, generate; return the plan and the measured memory."""
    import random


    marks: dict[str, int] = {"start_rss_bytes": _rss()[0]}
    import toolkit
    from toolkit.planning.plan import plan as make_plan
    from toolkit.builtin.tiny import tiny

    path = tiny(variant, progress=False)
    kwargs = {"backend": backend, "context": context, "batch": 1}
    if quantization:
        kwargs["quantization"] = quantization
    p = make_plan(path, "cpu", **kwargs)
    marks["planned_rss_bytes"] = _rss()[0]
    t0 = time.perf_counter()
    loaded = toolkit.load(p, fallback=False)
    marks["load_s"] = round(time.perf_counter() - t0, 3)
    marks["loaded_rss_bytes"] = _rss()[0]
    marks["loaded_peak_rss_bytes"] = peak_rss_bytes()
    vocab = 4096
    try:
        from toolkit.facts.model_info import inspect

        vocab = inspect(path).vocab_size or vocab
    except Exception:  # the vocab size only bounds the random ids
        pass
    rng = random.Random(seed)
    # The plan extends max_context to the largest that fits (the model's maximum for the tiny
    # models), and the prediction is made at max_context: fill exactly that.
    prompt = [rng.randrange(4, vocab) for _ in range(p.max_context - NEW_TOKENS)]
    marks["prompt_tokens"] = len(prompt)
    t0 = time.perf_counter()
    out = loaded.generate(prompt, GenerationConfig(max_tokens=NEW_TOKENS, ignore_eos=True))
    marks["generate_s"] = round(time.perf_counter() - t0, 3)
    marks["generated_tokens"] = len(getattr(out, "token_ids", []) or [])
    marks["generated_rss_bytes"] = _rss()[0]
    peak = peak_rss_bytes()
    return {"plan": {"backend": p.backend, "quantization": p.quantization, "dtype": p.dtype,
                     "kv_dtype": p.kv_dtype, "max_context": p.max_context, "memory": p.memory.to_dict()},
            "measured": {"peak_rss_bytes": peak, **marks},
            "modules": sorted(m for m in ("torch", "transformers", "bitsandbytes", "gptqmodel", "optimum",
                                          "compressed_tensors", "llama_cpp", "mlx", "mlx_lm")
                              if m in sys.modules)}


def run_case(label: str, variant: str, backend: str, quantization: str | None, context: int, seed: int,
             timeout: float) -> dict:
    row: dict = {"variant": label, "tiny": variant, "backend": backend}
    row.update(run_worker(f"{Path(__file__).resolve()}:worker", {"variant": variant, "backend": backend,
                          "quantization": quantization, "context": context, "seed": seed}, timeout))
    if row.get("error"):
        return row
    pred = row["plan"]["memory"]["total_bytes"]
    meas = row["measured"]["peak_rss_bytes"]
    row["predicted_bytes"] = pred
    row["measured_bytes"] = meas
    row["error"] = None
    row["rel_error"] = (pred - meas) / meas
    try:
        from toolkit.planning.result import MemoryBreakdown, Plan

        # Plan.compare gives the same number; kept for symmetry with the user-facing API.
        stub = Plan(model=variant, params=0, backend=backend, quantization=row["plan"]["quantization"],
                    dtype=row["plan"]["dtype"], kv_dtype=row["plan"]["kv_dtype"], max_context=context, batch=1,
                    tensor_parallel=1, device={}, memory=MemoryBreakdown(**row["plan"]["memory"]))
        cmp = stub.compare({"total_bytes": meas})
        rows = cmp.to_dict("records") if hasattr(cmp, "to_dict") else cmp
        row["rel_error"] = rows[0]["rel_error"]
    except Exception:
        pass
    return row


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:8.1f}"


def print_table(rows: list[dict], tolerance: float) -> None:
    head = (f"{'variant':<13} {'backend':<9} {'predicted':>9} {'measured':>9} {'error':>7}   "
            f"{'weights':>8} {'kv':>6} {'act':>6} {'overhead':>8}   {'loaded':>8} {'ok':>3}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r.get("error"):
            print(f"{r['variant']:<13} {r['backend']:<9} FAILED: {r['error'][:120]}")
            continue
        m = r["plan"]["memory"]
        ok = "yes" if abs(r["rel_error"]) <= tolerance else "NO"
        print(f"{r['variant']:<13} {r['backend']:<9} {_mib(r['predicted_bytes']):>9} {_mib(r['measured_bytes']):>9} "
              f"{100 * r['rel_error']:+6.1f}%   {_mib(m['weights_bytes']):>8} {m['kv_cache_bytes'] / MiB:6.2f} "
              f"{m['activation_bytes'] / MiB:6.2f} {_mib(m['overhead_bytes']):>8}   "
              f"{_mib(r['measured'].get('loaded_rss_bytes')):>8} {ok:>3}")
    print("(MiB; predicted = plan.memory.total_bytes, measured = peak RSS of a fresh process; "
          "loaded = RSS right after toolkit.load)")


def page_cache_warning() -> str | None:
    """A note when the backends' libraries were written since boot: their pages then sit in the page
    cache as the install wrote them (large folios) and a process maps more of them, so peak RSS reads
    60-90 MiB higher than on a machine that read them back from disk (see the README)."""
    import importlib.util

    try:
        boot = time.time() - float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError):
        return None
    spec = importlib.util.find_spec("torch")
    lib = Path(spec.origin).parent / "lib" / "libtorch_cpu.so" if spec and spec.origin else None
    if lib is None or not lib.exists() or lib.stat().st_mtime < boot:
        return None
    return (f"note: {lib} was written since this machine booted, so the page cache may hold it as the install "
            "wrote it and peak RSS can read 60-90 MiB high; for figures comparable with the recorded ones run "
            "`sync; echo 3 > /proc/sys/vm/drop_caches` (root) first")


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "-h" not in argv and "--help" not in argv and (note := page_cache_warning()):
        print(note, file=sys.stderr)
    if "--suite" in argv or any(a.startswith("--suite=") for a in argv):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--suite", choices=("tiny", "architectures"), default="tiny")
        known, rest = pre.parse_known_args(argv)
        if known.suite == "architectures":
            from benchmarks import _architectures

            return _architectures.main(rest)
        argv = rest
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suite", choices=("tiny", "architectures"), default="tiny",
                    help="tiny: the built-in tiny variants (default); architectures: see benchmarks/_architectures.py")
    ap.add_argument("--context", type=int, default=2048,
                    help="wanted context (the plan may extend it; the prompt fills plan.max_context)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=0.10, help="max |error| as a fraction (default 0.10)")
    ap.add_argument("--only", default=None, help="comma-separated variant labels (see CASES)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "planner_accuracy.json"))
    args = ap.parse_args(argv)
    from toolkit.measuring.environment import environment

    cases = CASES
    if args.only:
        wanted = set(args.only.split(","))
        cases = [c for c in CASES if c[0] in wanted]
    rows = []
    for label, variant, backend, quant in cases:
        print(f"... {label} ({backend})", file=sys.stderr, flush=True)
        rows.append(run_case(label, variant, backend, quant, args.context, args.seed, args.timeout))
    print_table(rows, args.tolerance)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["date"] = time.strftime("%Y-%m-%d")
    if args.only and out.exists():  # the rows measured now replace theirs; the others are kept
        fresh = {r["variant"]: r for r in rows}
        old = [r for r in json.loads(out.read_text()).get("rows", []) if r["variant"] not in fresh]
        order = {c[0]: i for i, c in enumerate(CASES)}
        rows = sorted(old + rows, key=lambda r: order.get(r["variant"], len(order)))
    report = {"benchmark": "planner_accuracy", "date": time.strftime("%Y-%m-%d"), "context": args.context,
              "new_tokens": NEW_TOKENS, "tolerance": args.tolerance, "environment": environment(), "rows": rows}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    bad = [r["variant"] for r in rows if r.get("error") or abs(r.get("rel_error") or 0) > args.tolerance]
    if bad:
        print(f"outside tolerance {100 * args.tolerance:.0f}% or failed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
