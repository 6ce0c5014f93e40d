"""Planner accuracy on published architectures: ``planner_accuracy.py --suite architectures``.

Models: random-initialised models with the published configs of ``toolkit.builtin.architectures``
(real hidden size, heads, KV heads, head size, vocabulary, windows, experts, MLA) at a **reduced
depth** that every row records: the prompt has to fill the context on 2 shared CPU cores, so the
suite uses 2 layers (Gemma 3: 6, one full period of 5 local + 1 global layers) up to 8k tokens, 1
layer at 32k for the dense models, and Qwen2.5-0.5B also at its real depth (24 layers) at 2k. The
planner sees the folder or file it is given, so prediction and measurement are of the same model.

Cases: architecture x backend (hf and mlx on the safetensors folder, llamacpp on the q4_k_m GGUF,
plus the f16 GGUF at 2k) x context (2048, 8192, 32768; a model whose maximum is below a context
gets its maximum instead, and the contexts above it are listed as skipped). For each case:

(a) the plan at exactly that context: ``toolkit.plan(path, "cpu", backend=..., context=N)``;
(b) for llamacpp, llama.cpp's own figures: the ``no_alloc`` dry run with the plan's settings
    (:func:`toolkit.backends.llamacpp.dry_run`, in a fresh process) and the buffers a real load of
    the plan logs (``loaded.engine_buffers``: model buffers by type, KV, compute, output); the two
    are recorded side by side (``dry_run_equals_load``);
(c) the measuring process: ``toolkit.load(plan)``, a prompt of ``context - 16`` random token ids and
    16 new tokens (greedy, EOS ignored), then its peak RSS (VmHWM, the whole process from start);
(d) for hf, the KV cache's tensor bytes after the run (and the weights as held); for mlx,
    ``mx.get_peak_memory()`` and the prompt cache's bytes.

Cases whose plan predicts more than ``--limit-gib`` (12 GiB) are not loaded (the reason is
printed), and a watchdog kills a measuring process whose RSS passes that limit. 32k cases are
slow on this machine (the prompt's attention), so by default only a few are measured (the rest
get the plan and, for llamacpp, the dry run and the load's buffers): ``--long all`` measures every one.

Acceptance, printed per case: KV within 2% of the engine's figure, weights+KV+compute within 5% of
the engine's buffers (llamacpp: model + KV + compute + output buffers; mlx: ``mx.get_peak_memory()``;
hf has no compute figure on the CPU, so its row compares weights+KV with the held tensors), and
predicted peak RSS within 10% of the measured one and never more than 5% below it.

Results: ``benchmarks/results/planner_accuracy_architectures.json``, rewritten after every case;
a second run skips the cases already there (``--retry-failed`` runs failed ones again).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._worker import run_worker  # noqa: E402

MiB = 2**20
GiB = 2**30
NEW_TOKENS = 16
CONTEXTS = (2048, 8192, 32768)
LONG = 32768
# (depth up to 8k, depth at 32k) per architecture; see the module docstring
DEPTHS = {
    "llama-3.2-1b": (2, 1),
    "qwen2.5-0.5b": (2, 1),
    "qwen2.5-1.5b": (2, 2),
    "gemma-3-1b": (6, 6),
    "phi-3-mini-4k": (2, 2),
    "qwen1.5-moe-a2.7b": (2, 2),
    "deepseek-v2-lite": (2, 2),
}
# 32k cases measured by default (the others get the plan and the dry run): the cheapest attention
# (Qwen2.5-0.5B: 14 heads x 64) on every backend. (Llama-3.2-1B on llama.cpp took 1070 s to fill 32k
# tokens here: --long all measures it.)
LONG_MEASURED = {("qwen2.5-0.5b", "hf"), ("qwen2.5-0.5b", "mlx"), ("qwen2.5-0.5b", "llamacpp")}
FULL_DEPTH = {"qwen2.5-0.5b": 2048}  # also measured at the real depth, at this context
MLX_DEPTH = {"gemma-3-1b": 12}  # mlx depth where the last layer is not the only global one (see cases())
# mlx[cpu] 0.32's Linux wheel multiplies with the reference BLAS it bundles: ~1-3 GFLOPS here (a
# 2048x2048x8192 float32 matmul ran at 0.6-0.8 GFLOPS, bfloat16 at 0.9-1.3; Qwen2.5-1.5B with 2 layers took
# 470 s to fill 2k tokens). toolkit's mlx backend loads a system OpenBLAS ahead of it (toolkit.facts.blas:
# ~60 GFLOPS), and then every mlx case below 32k is measured; with the bundled BLAS only these are.
MLX_MEASURED = {("llama-3.2-1b", 2048), ("qwen2.5-0.5b", 2048), ("qwen2.5-0.5b", 8192), ("deepseek-v2-lite", 2048),
                ("qwen1.5-moe-a2.7b", 2048)}
MLX_SLOW = "not measured: mlx[cpu] with its bundled BLAS runs at ~1 GFLOPS on this machine (see MLX_MEASURED)"
LONG_SLOW = "not measured: 32k prompts are slow here (the prompt's attention); --long all measures it"
OUT = ROOT / "benchmarks" / "results" / "planner_accuracy_architectures.json"
KV_TOL, BUFFERS_TOL, RSS_OVER, RSS_UNDER = 0.02, 0.05, 0.10, 0.05


@dataclass(frozen=True)
class Case:
    arch: str
    layers: int
    backend: str
    fmt: str  # hf, gguf-q4_k_m or gguf-f16
    context: int
    measure: bool
    reason: str = dataclasses.field(default="", compare=False)  # why a case is not measured

    @property
    def key(self) -> str:
        return f"{self.arch}/L{self.layers}/{self.backend}:{self.fmt}/{self.context}"


def cases(long: str = "default") -> tuple[list[Case], list[dict]]:
    """The suite's cases, cheapest first, and the (arch, context) pairs skipped with a reason."""
    from toolkit.builtin import architectures as A
    from toolkit.facts.blas import resolve

    mlx_fast = resolve().library is not None
    out: list[Case] = []
    skipped: list[dict] = []
    for arch, (short, deep) in DEPTHS.items():
        maxpos = int(A.published_config(arch)["max_position_embeddings"])
        ctxs = [c for c in CONTEXTS if c <= maxpos]
        if maxpos < LONG and maxpos not in ctxs:
            ctxs.append(maxpos)
        skipped += [{"arch": arch, "context": c, "reason": f"beyond the model's maximum of {maxpos} positions"}
                    for c in CONTEXTS if c > maxpos]
        for ctx in ctxs:
            layers = short if ctx < LONG else deep
            formats = [("hf", "hf"), ("mlx", "hf"), ("llamacpp", "gguf-q4_k_m")]
            if ctx == CONTEXTS[0]:
                formats.append(("llamacpp", "gguf-f16"))
            for backend, fmt in formats:
                # mlx-lm's prefill evaluates only the caches' state between chunks, so the last layer's
                # attention over the prompt is never computed: one layer would measure no attention at all, and
                # Gemma 3 at 6 layers none of its global layer's (the 6th); 12 layers have one inside
                depth = MLX_DEPTH.get(arch, max(layers, 2)) if backend == "mlx" else layers
                measure = ctx < LONG or long == "all" or (long == "default" and (arch, backend) in LONG_MEASURED)
                reason = "" if measure else LONG_SLOW
                if backend == "mlx" and measure and not mlx_fast and (arch, ctx) not in MLX_MEASURED:
                    measure, reason = False, MLX_SLOW
                out.append(Case(arch, depth, backend, fmt, ctx, measure, reason))
    for arch, ctx in FULL_DEPTH.items():
        real = A.real_layers(arch)
        for backend, fmt in (("hf", "hf"), ("llamacpp", "gguf-q4_k_m"), ("llamacpp", "gguf-f16")):
            out.append(Case(arch, real, backend, fmt, ctx, True))
        out.append(Case(arch, real, "mlx", "hf", ctx, mlx_fast, "" if mlx_fast else MLX_SLOW))
        for c in CONTEXTS[1:]:  # the engine's figures at the real depth cost a second each; --long all fills them
            out.append(Case(arch, real, "llamacpp", "gguf-q4_k_m", c, long == "all",
                            "" if long == "all" else "the engine's figures only (--long all measures it)"))
    # cheap first (so that a run cut short has most rows): hf and llamacpp up to 8k, then mlx and 32k
    out.sort(key=lambda c: (c.measure and (c.backend == "mlx" or c.context == LONG), c.context, not c.measure,
                            c.layers > 8))
    return out, skipped


# --- workers (each in a fresh interpreter) ---------------------------------------------------------


def dry_run_worker(gguf: str, context: int) -> dict:
    """llama.cpp's own figures (its ``no_alloc`` dry run) with the settings the plan gives the load."""
    import toolkit
    from toolkit.backends.llamacpp import dry_run

    t0 = time.perf_counter()
    p = toolkit.plan(gguf, "cpu", backend="llamacpp", context=context)
    s = p.settings
    out = dry_run(gguf, n_ctx=p.max_context, n_batch=s.get("n_batch", 512), n_ubatch=s.get("n_ubatch", 512),
                  flash_attn=bool(s.get("flash_attn")), type_k=s.get("type_k"), type_v=s.get("type_v"))
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def _cache_tensor_bytes(cache) -> int:
    """Bytes of every tensor a transformers cache holds (keys and values of each layer)."""
    import torch

    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            for value in vars(layer).values():
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
        return total
    for name in ("key_cache", "value_cache"):
        for t in getattr(cache, name, []) or []:
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def case_worker(path: str, backend: str, context: int, seed: int, measure: bool, limit_bytes: int) -> dict:
    """Plan at ``context``; when measured, load, fill the context, generate, and report memory."""
    import random

    from toolkit.facts.process import peak_rss_bytes, rss_bytes

    marks: dict = {"start_rss_bytes": rss_bytes()}
    import toolkit
    from toolkit.facts.model_info import inspect
    from toolkit.planning.plan import plan as make_plan

    from toolkit.errors import NothingFits

    info = inspect(path)
    out: dict = {}
    try:
        p = make_plan(path, "cpu", backend=backend, context=context)
    except NothingFits as exc:  # the planner says this machine cannot hold it: nothing to measure
        out["skipped"] = f"the plan refuses it on this machine: {exc}"
        return out
    out["plan"] = p.to_dict()
    total = p.memory.total_bytes
    if total > limit_bytes:
        out["skipped"] = (f"the plan predicts {total / GiB:.1f} GiB, over the {limit_bytes / GiB:.0f} GiB this "
                          "benchmark loads on this machine")
        return out
    if not measure and backend != "llamacpp":
        return out
    marks["planned_rss_bytes"] = rss_bytes()
    engine: dict = {}
    t0 = time.perf_counter()
    loaded = toolkit.load(p, fallback=False)
    if backend == "llamacpp":  # what llama.cpp logged it allocated: model buffers by type, KV, compute, output
        engine["load_log"] = loaded.engine_buffers
        if not measure:  # the buffers are allocated, but nothing filled them: no peak to compare
            loaded.unload()
            out["engine"] = engine
            return out
    marks["load_s"] = round(time.perf_counter() - t0, 2)
    marks["loaded_rss_bytes"] = rss_bytes()
    marks["loaded_peak_rss_bytes"] = peak_rss_bytes()
    seen: dict = {}
    if backend == "hf":
        def keep_cache(module, args, kwargs, output):  # noqa: ARG001 - the forward-hook signature
            seen["cache"] = getattr(output, "past_key_values", None)

        hook = loaded.model.register_forward_hook(keep_cache, with_kwargs=True)
    elif backend == "mlx":
        import importlib

        import mlx.core as mx

        # the module (``mlx_lm.generate`` as an attribute is the function of the same name)
        mlx_generate = importlib.import_module("mlx_lm.generate")

        made = mlx_generate.make_prompt_cache

        def recording(*args, **kwargs):
            seen["cache"] = made(*args, **kwargs)
            return seen["cache"]

        mlx_generate.make_prompt_cache = recording
        engine["mlx_peak_after_load_bytes"] = int(mx.get_peak_memory())
    vocab = info.vocab_size or 32000
    rng = random.Random(seed)
    # ids of ordinary tokens: past the 256 byte tokens, below the one special token (the last id)
    prompt = [rng.randrange(256, vocab - 1) for _ in range(context - NEW_TOKENS)]
    marks["prompt_tokens"] = len(prompt)
    from toolkit.backends.generation import GenerationConfig

    t0 = time.perf_counter()
    result = loaded.generate(prompt, GenerationConfig(max_tokens=NEW_TOKENS, ignore_eos=True))
    marks["generate_s"] = round(time.perf_counter() - t0, 2)
    marks["generated_tokens"] = len(result.token_ids)
    marks["generated_rss_bytes"] = rss_bytes()
    if backend == "hf":
        hook.remove()
        engine["kv_bytes"] = _cache_tensor_bytes(seen.get("cache")) if seen.get("cache") is not None else None
        engine["weights_bytes"] = loaded.weights_bytes()
    elif backend == "mlx":
        engine["mlx_peak_bytes"] = int(mx.get_peak_memory())
        engine["mlx_active_bytes"] = int(mx.get_active_memory())
        engine["mlx_cache_bytes"] = int(mx.get_cache_memory())
        engine["kv_bytes"] = int(sum(c.nbytes for c in seen.get("cache") or []))
        engine["weights_bytes"] = loaded.weights_bytes()
    out["engine"] = engine
    out["measured"] = {"peak_rss_bytes": peak_rss_bytes(), **marks}
    return out


# --- the parent --------------------------------------------------------------------------------------


class Watchdog:
    """Kills a child process of this one whose RSS passes ``limit`` bytes (the machine is shared)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.killed: dict[int, int] = {}
        self.peak_child_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.5):
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                except psutil.Error:
                    continue
                self.peak_child_rss = max(self.peak_child_rss, rss)
                if rss > self.limit:
                    try:
                        child.kill()
                        self.killed[child.pid] = rss
                    except psutil.Error:
                        pass

    def reset(self) -> None:
        self.killed.clear()
        self.peak_child_rss = 0

    def stop(self) -> None:
        self._stop.set()


def _rel(pred: float | None, ref: float | None) -> float | None:
    if pred is None or ref is None or ref == 0:
        return None
    return (pred - ref) / ref


def summarise(row: dict) -> dict:
    """Predicted vs engine vs measured, with relative errors and the acceptance checks."""
    plan = row.get("plan") or {}
    m = plan.get("memory") or {}
    s: dict = {}
    if not m:
        return s
    pred_kv = m.get("kv_cache_bytes")
    pred_wkc = (m.get("weights_bytes") or 0) + (pred_kv or 0) + (m.get("activation_bytes") or 0)
    s["pred_total_bytes"] = m.get("total_bytes")
    s["pred_kv_bytes"] = pred_kv
    engine = row.get("engine") or {}
    dry = row.get("dry_run") or {}
    log = engine.get("load_log") or {}
    if row["backend"] == "llamacpp" and log.get("model"):
        s["engine_kv_bytes"] = log["kv_bytes"]
        s["engine_model_bytes"] = sum(log["model"].values())
        s["engine_compute_bytes"] = log["compute_bytes"]
        s["engine_buffers_bytes"] = s["engine_model_bytes"] + log["kv_bytes"] + log["compute_bytes"] + \
            log["output_bytes"]
        eb = m.get("engine_buffers")  # the planner's figure of each buffer llama.cpp allocates
        s["pred_buffers_bytes"] = sum(eb.values()) if eb else pred_wkc
        s["buffers_what"] = "model+KV+compute+output buffers (the load's log)"
        if dry.get("kv_bytes") is not None:  # the dry run sizes the same buffers without allocating them
            s["dry_run_equals_load"] = (dry["kv_bytes"], dry["compute_bytes"], dry["output_bytes"]) == \
                (log["kv_bytes"], log["compute_bytes"], log["output_bytes"])
    elif row["backend"] == "mlx" and engine.get("mlx_peak_bytes"):
        s["engine_kv_bytes"] = engine.get("kv_bytes")
        s["engine_buffers_bytes"] = engine["mlx_peak_bytes"]
        # mlx's peak is the load's where the weights' conversion holds more than the prefill does
        load = (m.get("load_peak_bytes") or 0) - (m.get("overhead_bytes") or 0)
        eb = m.get("engine_buffers")  # what mlx allocates, where it differs from what becomes resident
        s["pred_buffers_bytes"] = max(sum(eb.values()) if eb else pred_wkc, load)
        s["buffers_what"] = "mx.get_peak_memory()"
    elif row["backend"] == "hf" and engine.get("weights_bytes"):
        s["engine_kv_bytes"] = engine.get("kv_bytes")
        s["engine_buffers_bytes"] = engine["weights_bytes"] + (engine.get("kv_bytes") or 0)
        s["pred_buffers_bytes"] = (m.get("weights_bytes") or 0) + (pred_kv or 0)
        s["buffers_what"] = "weights+KV tensors (no compute figure on CPU)"
    s["kv_err"] = _rel(pred_kv, s.get("engine_kv_bytes"))
    s["buffers_err"] = _rel(s.get("pred_buffers_bytes"), s.get("engine_buffers_bytes"))
    meas = (row.get("measured") or {}).get("peak_rss_bytes")
    s["measured_peak_rss_bytes"] = meas
    s["rss_err"] = _rel(m.get("total_bytes"), meas)
    s["kv_ok"] = None if s["kv_err"] is None else abs(s["kv_err"]) <= KV_TOL
    s["buffers_ok"] = None if s["buffers_err"] is None else abs(s["buffers_err"]) <= BUFFERS_TOL
    s["rss_ok"] = None if s["rss_err"] is None else -RSS_UNDER <= s["rss_err"] <= RSS_OVER
    return s


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MiB:.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def _ok(x: bool | None) -> str:
    return "-" if x is None else ("ok" if x else "NO")


def table(rows: list[dict]) -> str:
    """The markdown table of every case (MiB)."""
    head = ("| case | layers | KV pred / engine (err) | W+KV+C pred / engine (err) | total pred / peak RSS (err) "
            "| KV 2% | buf 5% | RSS | s |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        name = f"{r['arch']} {r['backend']}:{r['fmt'].replace('gguf-', '')} {r['context'] // 1024}k"
        if r.get("error") or r.get("skipped"):
            why = r.get("error") or r.get("skipped")
            lines.append(f"| {name} | {r['layers']} | {'FAILED' if r.get('error') else 'skipped'}: "
                         f"{why[:150]} | | | | | | {r.get('seconds', '-')} |")
            continue
        s = r.get("summary") or {}
        kv = f"{_mib(s.get('pred_kv_bytes'))} / {_mib(s.get('engine_kv_bytes'))} ({_pct(s.get('kv_err'))})"
        buf = f"{_mib(s.get('pred_buffers_bytes'))} / {_mib(s.get('engine_buffers_bytes'))} ({_pct(s.get('buffers_err'))})"
        if r["backend"] == "hf" and s.get("engine_buffers_bytes"):
            buf += " W+KV only"
        meas = s.get("measured_peak_rss_bytes")
        why = r.get("reason") or ""
        tag = "mlx too slow here" if "mlx" in why else "32k too slow here" if "32k" in why else "engine only"
        at_least = "≥" if r.get("killed") else ""
        rss = (f"{_mib(s.get('pred_total_bytes'))} / {at_least}{_mib(meas)} ({_pct(s.get('rss_err'))})" if meas
               else f"{_mib(s.get('pred_total_bytes'))} / not run ({tag})")
        lines.append(f"| {name} | {r['layers']} | {kv} | {buf} | {rss} | {_ok(s.get('kv_ok'))} | "
                     f"{_ok(s.get('buffers_ok'))} | {_ok(s.get('rss_ok'))} | {r.get('seconds', '-')} |")
    return "\n".join(lines)


def _save(path: Path, report: dict) -> None:
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def _save_markdown(out: Path, rows: list[dict]) -> None:
    """The results' table beside the JSON, as the README links it."""
    out.with_suffix(".md").write_text(
        "# planner_accuracy --suite architectures\n\nMiB; generated by benchmarks/planner_accuracy.py from "
        f"{out.name}. 'engine' = llama.cpp's own buffers (llamacpp), mx.get_peak_memory() (mlx), the held "
        "weight and KV tensors (hf); 'layers' is the depth built (see the module docstring).\n\n" + table(rows) + "\n")


def _builds(needed: set[tuple[str, int, str]]) -> dict:
    """Build (or find) every model the cases need; return build facts per model."""
    from toolkit.builtin import architectures as A

    facts: dict = {}
    by_model: dict[tuple[str, int], set[str]] = {}
    for arch, layers, fmt in needed:
        by_model.setdefault((arch, layers), set()).add(fmt)
    for (arch, layers), fmts in sorted(by_model.items()):
        t0 = time.perf_counter()
        paths = A.build_random(arch, layers=layers, formats=tuple(f for f in A.FORMATS if f in fmts))
        manifest = json.loads((A.model_dir(arch, layers) / ".toolkit-build.json").read_text())
        sizes = {f: (sum(p.stat().st_size for p in Path(v).glob("*")) if Path(v).is_dir() else Path(v).stat().st_size)
                 for f, v in paths.items()}
        facts[f"{arch}/L{layers}"] = {"paths": {f: str(v) for f, v in paths.items()}, "bytes": sizes,
                                      "build_seconds": {f: v["seconds"] for f, v in manifest["formats"].items()},
                                      "wall_s_this_run": round(time.perf_counter() - t0, 1)}
    return facts


SAME_CHOICE = ("backend", "quantization", "dtype", "kv_dtype", "max_context", "settings")


def replan(out: Path, report: dict) -> int:
    """--replan: the recorded cases' predictions from this planner; measurements are kept as they are."""
    from toolkit.errors import NothingFits
    from toolkit.planning.plan import plan as make_plan

    changed, missing = [], []
    for row in report.get("cases", []):
        if not Path(row["path"]).exists():  # built on another machine: its recorded plan stays
            missing.append(row["key"])
            continue
        try:
            new = make_plan(row["path"], "cpu", backend=row["backend"], context=row["context"]).to_dict()
        except NothingFits as exc:
            row.update(plan=None, summary={}, skipped=f"the plan refuses it on this machine: {exc}",
                       replanned=time.strftime("%Y-%m-%d %H:%M"))
            continue
        old = row.get("plan") or {}
        if any(new.get(k) != old.get(k) for k in SAME_CHOICE):
            changed.append(row["key"])
            continue
        row["plan"] = new
        row["replanned"] = time.strftime("%Y-%m-%d %H:%M")
        if not row.get("error"):
            row["summary"] = summarise(row)
    _save(out, report)
    rows = report.get("cases", [])
    _save_markdown(out, rows)
    print(table(rows))
    for key in changed:
        print(f"not replanned (the plan now chooses other settings: measure it again): {key}", file=sys.stderr)
    if missing:
        print(f"not replanned (model not built here; the recorded plan stays): {len(missing)} cases", file=sys.stderr)
    print(f"replanned {len(rows) - len(changed) - len(missing)} of {len(rows)} cases; wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="planner_accuracy.py --suite architectures",
                                 description="Planner vs engine vs measured memory on published architectures")
    ap.add_argument("--only", default=None, help="comma-separated substrings of case keys (arch/Ln/backend:fmt/ctx)")
    ap.add_argument("--long", choices=("default", "all", "none"), default="default",
                    help="which 32k cases to measure (default: a few; the rest get the plan and dry run)")
    ap.add_argument("--limit-gib", type=float, default=12.0, help="load nothing predicted above this (GiB)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per measuring process")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-failed", action="store_true", help="run the cases that failed last time again")
    ap.add_argument("--again", action="store_true", help="measure the selected cases again even when recorded "
                    "(with --only: after a change to the planner or a backend)")
    ap.add_argument("--list", action="store_true", help="print the cases and exit")
    ap.add_argument("--replan", action="store_true", help="plan every recorded case again with this checkout's "
                    "planner and recompute its errors, keeping the engine's and the measured figures (a case "
                    "whose plan now chooses other settings is left as it was, and said)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    from toolkit.measuring.environment import environment

    todo, skipped = cases(args.long)
    if args.only:
        wanted = [w for w in args.only.split(",") if w]
        todo = [c for c in todo if any(w in c.key for w in wanted)]
    if args.list:
        for c in todo:
            print(c.key, "measured" if c.measure else "plan+engine only")
        for s in skipped:
            print(f"skipped: {s['arch']} at {s['context']}: {s['reason']}")
        return 0
    for s in skipped:
        print(f"skipped: {s['arch']} at {s['context']} tokens: {s['reason']}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = json.loads(out.read_text()) if out.exists() else {}
    if args.replan:
        return replan(out, report)
    done = {r["key"]: r for r in report.get("cases", [])}
    report.update({"benchmark": "planner_accuracy", "suite": "architectures", "new_tokens": NEW_TOKENS,
                   "limit_bytes": int(args.limit_gib * GiB), "environment": environment(),
                   "tolerances": {"kv": KV_TOL, "buffers": BUFFERS_TOL, "rss_over": RSS_OVER, "rss_under": RSS_UNDER},
                   "skipped": skipped})
    t_build = time.perf_counter()
    needed = {(c.arch, c.layers, c.fmt) for c in todo}
    report.setdefault("builds", {}).update(_builds(needed))
    print(f"models ready in {time.perf_counter() - t_build:.0f} s", file=sys.stderr, flush=True)
    dog = Watchdog(int(args.limit_gib * GiB))
    me = str(Path(__file__).resolve())
    order = {c.key: i for i, c in enumerate(cases("all")[0])}
    t_all = time.perf_counter()
    try:
        for case in todo:
            old = done.get(case.key)
            # a case is done unless it failed (and --retry-failed) or is now measured where it was not
            if old and old.get("measure") == case.measure and not args.again and \
                    not (args.retry_failed and old.get("error")):
                continue
            paths = report["builds"][f"{case.arch}/L{case.layers}"]["paths"]
            path = paths[case.fmt]
            print(f"... {case.key} ({'measured' if case.measure else 'plan + engine'})", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            row: dict = {"key": case.key, **dataclasses.asdict(case), "path": path}
            if case.backend == "llamacpp":
                dry = run_worker(f"{me}:dry_run_worker", {"gguf": path, "context": case.context}, 300)
                row["dry_run"] = dry
            dog.reset()
            res = run_worker(f"{me}:case_worker", {"path": path, "backend": case.backend, "context": case.context,
                                                   "seed": args.seed, "measure": case.measure,
                                                   "limit_bytes": int(args.limit_gib * GiB)}, args.timeout)
            if res.get("error") and dog.killed:
                killed_at = max(dog.killed.values())
                # the plan alone, in a fresh process, so that the row still says what was predicted
                res = run_worker(f"{me}:case_worker", {"path": path, "backend": case.backend, "context": case.context,
                                                       "seed": args.seed, "measure": False,
                                                       "limit_bytes": int(args.limit_gib * GiB)}, args.timeout)
                res["measured"] = {"peak_rss_bytes": killed_at, "killed_by_watchdog": True}
                res["killed"] = (f"killed by the benchmark's watchdog at {killed_at / GiB:.1f} GiB RSS (limit "
                                 f"{args.limit_gib:g} GiB): the peak is at least that")
            row.update(res)
            if row.get("dry_run", {}).get("error") and not row.get("error"):
                row["error"] = "dry run: " + row["dry_run"]["error"]
            row["seconds"] = round(time.perf_counter() - t0, 1)
            row["summary"] = summarise(row) if not row.get("error") else {}
            done[case.key] = row
            report["cases"] = sorted(done.values(), key=lambda r: order.get(r["key"], len(order)))
            _save(out, report)
            s = row["summary"]
            print(f"    {row['seconds']} s: " + (row.get("error") or row.get("skipped") or row.get("killed") or
                  f"KV {_pct(s.get('kv_err'))}, buffers {_pct(s.get('buffers_err'))}, RSS {_pct(s.get('rss_err'))}"),
                  file=sys.stderr, flush=True)
    finally:
        dog.stop()
    rows = [done[c.key] for c in todo if c.key in done]
    print(table(rows))
    _save_markdown(out, report.get("cases", rows))  # every recorded case, not only this run's
    for s in skipped:
        print(f"skipped: {s['arch']} at {s['context']} tokens: {s['reason']}")
    checks = {k: [r["summary"].get(k) for r in rows if (r.get("summary") or {}).get(k) is not None]
              for k in ("kv_ok", "buffers_ok", "rss_ok")}
    print("acceptance: " + ", ".join(f"{k[:-3]} {sum(v)}/{len(v)} pass" for k, v in checks.items()))
    for backend in ("llamacpp", "hf", "mlx"):
        mine = [r["summary"] for r in rows if r["backend"] == backend and r.get("summary")]
        parts = []
        for k, what in (("kv_ok", "KV within 2%"), ("buffers_ok", "buffers within 5%"), ("rss_ok", "RSS -5%..+10%")):
            got = [x[k] for x in mine if x.get(k) is not None]
            parts.append(f"{what} {sum(got)}/{len(got)}")
        note = " (buffers = weights+KV tensors, no compute figure)" if backend == "hf" else ""
        print(f"  {backend}: " + ", ".join(parts) + note)
    print(f"this run: {time.perf_counter() - t_all:.0f} s; wrote {out}")
    return 0 if all(all(v) for v in checks.values()) else 1
