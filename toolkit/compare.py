"""Compare variants of one model: memory, speed and quality, one row per (variant, backend).

Each finished row is appended to a JSON-lines results file at once (one ``write`` + ``fsync`` per
row), so an interrupted sweep keeps what it measured and a re-run resumes where it stopped. A row
cut mid-line by a kill is dropped on read, not fatal. A variant that fails (out of memory, missing
kernel, build error) becomes a row with ``error`` set and the sweep goes on.

The first row is the reference (full precision on the first backend); its next-token log-probs on
the quality windows are kept next to the results file (``reference.npz``) so that a resumed sweep
scores KL divergence and top-1 agreement against the same reference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_VARIANTS = ("none", "bnb-8bit", "bnb-4bit", "gptq-4bit", "awq-4bit")
BACKEND_DEFAULT_VARIANTS = {
    "hf": DEFAULT_VARIANTS,
    "llamacpp": ("gguf-f16", "gguf-q8_0", "gguf-q4_k_m"),
    "mlx": ("none", "mlx-4bit"),
}
ROW_FIELDS = ("variant", "backend", "quantization", "path", "weights_bytes", "predicted_weights_bytes",
              "peak_memory_bytes", "runtime_bytes", "peak_delta_bytes", "load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "perplexity",
              "kl_divergence", "top1_agreement", "tokens_scored", "error")


def backend_for(variant: str) -> str:
    """The backend that runs a variant's format."""
    if variant.startswith("gguf-"):
        return "llamacpp"
    if variant.startswith("mlx-"):
        return "mlx"
    return "hf"


def runs_on(variant: str, backend: str) -> bool:
    if variant == "none":
        return backend in ("hf", "mlx", "vllm")
    return backend_for(variant) == backend or (backend == "vllm" and variant.startswith(("gptq-", "awq-", "ct-")))


@dataclass
class Job:
    variant: str
    backend: str
    path: Path
    quantization: str


def plan_jobs(model: str | Path | None, variants: Sequence[str] | dict[str, str] | None,
              backends: Sequence[str] | None) -> list[Job]:
    """Expand variants × backends into jobs. For the built-in model, variant paths come from
    :func:`toolkit.tiny.tiny` (built later, when the job runs); otherwise ``variants`` may map names to
    paths of prequantized checkpoints, and ``none``/``bnb-*`` use ``model`` itself."""
    from toolkit.errors import InvalidSpec

    backends = list(backends or ["hf"])
    named = dict(variants) if isinstance(variants, dict) else None
    names = list(named or variants or [])
    jobs: list[Job] = []
    for backend in backends:
        chosen = [v for v in names if runs_on(v, backend)] if names else []
        if not chosen and (backend != "hf" or not names):
            chosen = list(BACKEND_DEFAULT_VARIANTS.get(backend, ("none",)))
        for variant in chosen:
            if named and variant in named:
                path = Path(named[variant])
            elif model is None:
                path = Path(f"tiny:{variant}")  # resolved (and built) when the job runs
            elif variant == "none" or variant.startswith("bnb-"):
                path = Path(model)
            else:
                raise InvalidSpec(f"variant {variant!r} needs a checkpoint: pass variants={{'{variant}': 'path'}} "
                                  "(only none and bnb-* are made at load time)")
            jobs.append(Job(variant, backend, path, variant))
    unknown = [v for v in names if not any(j.variant == v for j in jobs)]
    if unknown:
        raise InvalidSpec(f"variants {unknown} run on none of the backends {backends}: add their backend "
                          f"(gguf-* → llamacpp, mlx-* → mlx)")
    return jobs


def _resolve(job: Job) -> Path:
    if str(job.path).startswith("tiny:"):
        from toolkit.tiny import tiny

        return tiny(str(job.path)[5:], progress=False)
    return job.path


# --- results file ---------------------------------------------------------------------------

def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines results file; a line cut short by a kill is dropped (and the file
    repaired so later appends start on a fresh line)."""
    if not path.exists():
        return []
    rows, good_bytes = [], 0
    raw = path.read_bytes()
    for line in raw.splitlines(keepends=True):
        try:
            if line.endswith(b"\n"):
                rows.append(json.loads(line))
                good_bytes += len(line)
                continue
        except json.JSONDecodeError:
            pass
        break
    if good_bytes != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_bytes)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row atomically enough for a crash: a single write of a whole line, then fsync."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- the sweep -----------------------------------------------------------------------------

def _reference_path(results: Path | None) -> Path | None:
    return results.with_name(results.stem + ".reference.npz") if results else None


def _load_reference(results: Path | None, windows: list[list[int]]) -> list[np.ndarray] | None:
    """The reference log-probs saved by an earlier run of this sweep, if they are for these windows."""
    ref_path = _reference_path(results)
    if ref_path is None or not ref_path.exists():
        return None
    data = np.load(ref_path)
    if not np.array_equal(data["windows"], np.asarray(windows)):
        return None
    return [data[f"lp{i}"] for i in range(len(windows))]


def _save_reference(results: Path | None, windows: list[list[int]], logprobs: list[np.ndarray]) -> None:
    ref_path = _reference_path(results)
    if ref_path is not None:
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(ref_path, windows=np.asarray(windows), **{f"lp{i}": lp for i, lp in enumerate(logprobs)})


def run_job(job: Job, windows: list[list[int]] | None, reference: list[np.ndarray] | None, *,
            prompt_tokens: int, new_tokens: int, repeats: int, device: str | None = None) -> tuple[dict[str, Any], Any]:
    """Load, bench, score and unload one variant. Returns (row, logprobs-or-None)."""
    from toolkit.backends import backend_module, load
    from toolkit.bench import bench
    from toolkit.quality import evaluate
    from toolkit.trackers import MemoryTracker, rss_bytes

    row: dict[str, Any] = {k: None for k in ROW_FIELDS}
    row.update(variant=job.variant, backend=job.backend, quantization=job.quantization)
    logprobs = None
    start = time.perf_counter()
    try:
        path = _resolve(job)
        row["path"] = str(path)
        quant = job.quantization if job.quantization.startswith("bnb-") else None
        backend_module(job.backend)  # import the backend's libraries before the baseline is read
        row["runtime_bytes"] = rss_bytes()
        with MemoryTracker() as mem:
            loaded = load(str(path), job.backend, quantization=quant, device=device, fallback=False)
            try:
                plan = getattr(loaded, "plan", None)
                if plan is not None:
                    row["predicted_weights_bytes"] = plan.memory.weights_bytes
                    row["quantization"] = plan.quantization
                result = bench(loaded, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats)
                row.update(weights_bytes=result.weights_bytes, load_s=loaded.load_s, ttft_s=result.ttft_s,
                           prefill_tok_s=result.prefill_tok_s, decode_tok_s=result.decode_tok_s,
                           roofline_fraction=result.roofline_fraction)
                if windows is not None:
                    quality, logprobs = evaluate(loaded, windows, reference, return_logprobs=True)
                    row.update(perplexity=quality.perplexity, kl_divergence=quality.kl_divergence,
                               top1_agreement=quality.top1_agreement, tokens_scored=quality.tokens)
            finally:
                loaded.unload()
        row["peak_memory_bytes"] = mem.peak_bytes
        row["peak_delta_bytes"] = mem.delta_peak_bytes
    except (Exception, MemoryError) as exc:  # one failed variant must not end the sweep
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        row["traceback"] = traceback.format_exc(limit=6)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row, logprobs


def run_job_isolated(job: Job, windows: list[list[int]] | None, reference: list[np.ndarray] | None,
                     **settings: Any) -> tuple[dict[str, Any], Any]:
    """:func:`run_job` in a fresh Python process, so that its memory figures are its own (a
    notebook kernel or an earlier variant's allocations and imports do not count) and a crash or
    an out-of-memory kill becomes an error row instead of ending the sweep."""
    with tempfile.TemporaryDirectory(prefix="toolkit-job-") as tmp:
        d = Path(tmp)
        spec = {"job": {"variant": job.variant, "backend": job.backend, "path": str(job.path),
                        "quantization": job.quantization}, "settings": settings,
                "windows": windows is not None, "reference": reference is not None}
        (d / "spec.json").write_text(json.dumps(spec, default=_json_default))
        arrays: dict[str, Any] = {}
        if windows is not None:
            arrays["windows"] = np.asarray(windows)
        for i, lp in enumerate(reference or []):
            arrays[f"ref{i}"] = lp
        np.savez(d / "in.npz", **arrays)
        proc = subprocess.run([sys.executable, "-m", "toolkit.compare", "--worker", str(d)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if (d / "row.json").exists():
            row = json.loads((d / "row.json").read_text())
            logprobs = None
            if (d / "out.npz").exists():
                data = np.load(d / "out.npz")
                logprobs = [data[f"lp{i}"] for i in range(len(windows or []))]
            return row, logprobs
        row = {k: None for k in ROW_FIELDS}
        row.update(spec["job"])
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        hint = " (out of memory?)" if proc.returncode in (-9, 137) else ""
        tail = " | ".join(proc.stdout.strip().splitlines()[-3:])
        row["error"] = f"WorkerDied: the worker process ended with {how}{hint}: {tail}"
        return row, None


def _worker(folder: str) -> int:
    d = Path(folder)
    spec = json.loads((d / "spec.json").read_text())
    data = np.load(d / "in.npz")
    windows = data["windows"].tolist() if spec["windows"] else None
    reference = [data[f"ref{i}"] for i in range(len(windows or []))] if spec["reference"] else None
    job = Job(spec["job"]["variant"], spec["job"]["backend"], Path(spec["job"]["path"]), spec["job"]["quantization"])
    row, logprobs = run_job(job, windows, reference, **spec["settings"])
    if logprobs is not None:
        np.savez(d / "out.npz", **{f"lp{i}": lp for i, lp in enumerate(logprobs)})
    (d / "row.json").write_text(json.dumps(row, default=_json_default))
    return 0


def compare(model: str | Path | None = None, variants: Sequence[str] | dict[str, str] | None = None,
            backends: Sequence[str] | None = None, *, results: str | Path | None = None, text: str | None = None,
            windows: int = 16, seq_len: int = 256, prompt_tokens: int = 64, new_tokens: int = 32, repeats: int = 3,
            quality: bool = True, progress: bool = True, retry_errors: bool = False, device: str | None = None,
            isolate: bool = True, on_row: Any = None) -> "Any":
    """Sweep variants × backends; returns a pandas DataFrame with one row per run.

    Args:
        model: A model folder (variants other than none/bnb-* then need paths via a dict), or
            ``None`` for the built-in tiny model, whose variants are built on demand.
        variants: Names (``none``, ``bnb-4bit``, ``gptq-4bit``, ``gguf-q4_k_m``, …) or a name→path dict.
        backends: Backends to run (default ``["hf"]``); gguf variants join with ``llamacpp``, mlx with ``mlx``.
        results: JSON-lines file; rows already there are kept and skipped (resume).
        text: Quality text (default: the bundled held-out text).
        windows, seq_len: Quality windows (count × tokens).
        prompt_tokens, new_tokens, repeats: Benchmark settings (see :mod:`toolkit.bench`).
        quality: Score perplexity/KL/top-1 (needs the reference variant ``none`` first).
        retry_errors: Re-run rows that failed before instead of keeping them.
        isolate: Run each variant in a fresh process (honest memory figures, crash-proof sweep);
            ``False`` runs in this process (faster; memory then includes what ran before).
        device: A device spec for planning each load (``"cpu"``, ``"24GiB"``, ``"T4"``); None probes.
        on_row: Called with each finished row dict (widgets use it for live tables).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    jobs = plan_jobs(model, variants, backends)
    # The reference (full precision) runs first; every other row is scored against it.
    jobs.sort(key=lambda j: j.variant != "none")
    results_path = Path(results) if results else None
    done = {(r["variant"], r["backend"]): r for r in read_rows(results_path)} if results_path else {}
    if retry_errors:
        done = {k: r for k, r in done.items() if not r.get("error")}
    windows_ids = _quality_windows(jobs[0], text, windows, seq_len) if quality else None
    reference = _load_reference(results_path, windows_ids) if windows_ids else None
    rows: list[dict[str, Any]] = []
    bar = tqdm(jobs, desc="compare", unit="variant", disable=not progress)
    for i, job in enumerate(bar):
        bar.set_postfix_str(f"{job.variant} on {job.backend}")
        is_reference = i == 0 and windows_ids is not None
        key = (job.variant, job.backend)
        if key in done and not (is_reference and reference is None):
            rows.append(done[key])
            continue
        runner = run_job_isolated if isolate else run_job
        row, logprobs = runner(job, windows_ids, None if is_reference else reference,
                               prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                               device=device)
        if is_reference and logprobs is not None:
            reference = logprobs
            _save_reference(results_path, windows_ids or [], logprobs)
            row.update(kl_divergence=0.0, top1_agreement=1.0, reference=True)
        if results_path:
            append_row(results_path, {k: v for k, v in row.items() if k != "traceback"})
        rows.append(row)
        if on_row is not None:
            on_row(row)
    frame = pd.DataFrame(rows)
    ordered = [c for c in ROW_FIELDS if c in frame.columns] + [c for c in frame.columns if c not in ROW_FIELDS]
    return frame[ordered]


def _quality_windows(job: Job, text: str | None, windows: int, seq_len: int) -> list[list[int]] | None:
    """Token windows from the model's own tokenizer (every variant of one model shares it).
    None when the first job is not a transformers folder (e.g. a lone GGUF file)."""
    from toolkit.quality import heldout_text, spread_windows

    if str(job.path).startswith("tiny:"):
        from toolkit.tiny import BASE as folder
    else:
        folder = job.path
    if not Path(folder, "tokenizer.json").exists() and not Path(folder, "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return spread_windows(tok.encode(text if text is not None else heldout_text()), seq_len, windows)


# --- CLI -----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="tiny", help="model folder, or 'tiny' (built-in, default)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help="comma list of variants")
    parser.add_argument("--backends", default="hf", help="comma list: hf,llamacpp,mlx,vllm")
    parser.add_argument("--results", default=None, help="JSON-lines results file (resumable)")
    parser.add_argument("--report", default=None, help="write an HTML + Markdown report into this folder")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retry-errors", action="store_true")
    parser.add_argument("--in-process", action="store_true", help="run variants in this process (faster, "
                        "but memory figures then include earlier variants and imports)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")


def main_compare(args: argparse.Namespace) -> int:
    model = None if args.model == "tiny" else args.model
    results = args.results or (str(Path(args.report) / "results.jsonl") if args.report else None)
    frame = compare(model, [v for v in args.variants.split(",") if v], args.backends.split(","), results=results,
                    windows=args.windows, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                    repeats=args.repeats, retry_errors=args.retry_errors, progress=not args.json,
                    isolate=not args.in_process)
    if args.report:
        from toolkit.report import write_report

        write_report(frame, args.report, title=f"toolkit compare: {args.model}")
    if args.json:
        print(json.dumps(records(frame), default=_json_default, indent=2))
    else:
        print(summary_table(frame))
    return 0 if frame["error"].isna().all() else 1


def records(frame: Any) -> list[dict[str, Any]]:
    """Rows as plain dicts (full float precision; missing values as None), without tracebacks."""
    clean = frame.drop(columns=[c for c in ("traceback",) if c in frame.columns])
    return [{k: (None if v is None or (isinstance(v, float) and v != v) else v) for k, v in row.items()}
            for row in clean.to_dict(orient="records")]


def summary_table(frame: Any) -> str:
    """A readable fixed-width table of a compare DataFrame."""
    cols = ["variant", "backend", "weights_bytes", "peak_delta_bytes", "peak_memory_bytes", "decode_tok_s", "perplexity",
            "kl_divergence", "top1_agreement", "error"]
    view = frame[[c for c in cols if c in frame.columns]].copy()
    for c in ("weights_bytes", "peak_delta_bytes", "peak_memory_bytes"):
        if c in view:
            view[c] = view[c].map(lambda b: f"{b / 2**20:.1f} MiB" if b == b and b is not None else "-")
    return view.to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}")

from toolkit import _make_callable  # noqa: E402  (toolkit.compare(...) calls compare())

_make_callable(__name__)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        raise SystemExit(_worker(sys.argv[2]))
    raise SystemExit("usage: python -m toolkit.compare --worker FOLDER (internal); use `toolkit compare`")
