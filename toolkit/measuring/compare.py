"""Compare variants of one model: memory, speed and quality, one row per (variant, backend).

Each finished row is appended to a JSON-lines results file at once (one ``write`` + ``fsync`` per
row), so an interrupted sweep keeps what it measured and a re-run resumes where it stopped. A row
cut mid-line by a kill is dropped on read, not fatal. A variant that fails (out of memory, missing
kernel, build error) becomes a row with ``error`` set and the sweep goes on.

The first row is the reference (full precision on the first backend); its next-token log-probs on
the quality windows are kept in the toolkit cache, compactly (:mod:`toolkit.measuring.reference`),
so that a resumed sweep scores KL divergence and top-1 agreement against the same reference; the
results file's ``.reference.json`` names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from toolkit import capabilities as caps
from toolkit.data import heldout_text
from toolkit.errors import InvalidSpec
from toolkit.measuring.jobs import ROW_FIELDS, Job, builtin_spec, run_job, run_job_isolated
from toolkit.measuring.quality import spread_windows
from toolkit.measuring.reference import reference_file, reference_key, write_pointer
from toolkit.measuring.results import append_row, read_rows
from toolkit.units import fmt_bytes

DEFAULT_VARIANTS = caps.backend("hf").default_variants


# full-precision rows at another compute dtype: name -> dtype asked of load
DTYPE_VARIANTS = {"bf16": "bfloat16", "fp16": "float16"}


def plan_jobs(model: str | Path | None, variants: Sequence[str] | dict[str, str] | None,
              backends: Sequence[str] | None) -> list[Job]:
    """Expand variants × backends into jobs.

    For a built-in model (``None`` = tiny, ``"tiny"``, ``"smollm2"``) the variant paths are built when
    the job runs. For a model folder, ``none``/``bnb-*`` (and ``bf16``/``fp16``) use the folder itself,
    the methods of :func:`toolkit.builtin.quantize.quantize` are made from it when the job runs
    (cached), and ``variants`` may instead map names to paths of prequantized checkpoints."""
    from toolkit.builtin import is_builtin, variant_names
    from toolkit.builtin.quantize import METHODS

    backends = list(backends or ["hf"])
    named = dict(variants) if isinstance(variants, dict) else None
    names = list(named or variants or [])
    builtin = "tiny" if model is None else str(model) if is_builtin(str(model)) else None
    known = variant_names(builtin) if builtin else None
    jobs: list[Job] = []
    for backend in backends:
        chosen = [v for v in names if caps.runs_on(_quantization(v), backend)] if names else []
        if not chosen and (backend != "hf" or not names):
            chosen = list(caps.backend(backend).default_variants)
        for variant in chosen:
            quant, dtype, source = _quantization(variant), DTYPE_VARIANTS.get(variant), None
            if named and variant in named:
                path = Path(named[variant])
            elif builtin:
                if known is not None and quant not in known:
                    raise InvalidSpec(f"the built-in {builtin} model has no variant {variant!r}: choose from "
                                      f"{', '.join([*known, *DTYPE_VARIANTS])}")
                path = Path(f"{builtin}:{quant}")  # resolved (and built) when the job runs
            elif quant == "none" or quant.startswith("bnb-"):
                path = Path(model)  # type: ignore[arg-type]
            elif variant in METHODS:
                path, source = Path(model), str(model)  # type: ignore[arg-type]  # quantized when the job runs
            else:
                raise InvalidSpec(f"variant {variant!r} needs a checkpoint: pass variants={{'{variant}': 'path'}}; "
                                  f"toolkit.quantize makes {', '.join(METHODS)} (and none, bnb-* and "
                                  f"{', '.join(DTYPE_VARIANTS)} use the model itself)")
            jobs.append(Job(variant, backend, path, quant, source=source, dtype=dtype))
    unknown = [v for v in names if not any(j.variant == v for j in jobs)]
    if unknown:
        raise InvalidSpec(f"variants {unknown} run on none of the backends {backends}: add their backend "
                          f"(gguf-* → llamacpp, mlx-* → mlx)")
    return jobs


def _quantization(variant: str) -> str:
    return "none" if variant in DTYPE_VARIANTS else variant


def compare(model: str | Path | None = None, variants: Sequence[str] | dict[str, str] | None = None,
            backends: Sequence[str] | None = None, *, results: str | Path | None = None, text: str | None = None,
            windows: int = 16, seq_len: int = 256, prompt_tokens: int = 64, new_tokens: int = 32, repeats: int = 5,
            quality: bool = True, progress: bool = True, retry_errors: bool = False, device: str | None = None,
            isolate: bool = True, on_row: Any = None, threads: int | None = None) -> "Any":
    """Sweep variants × backends; returns a pandas DataFrame with one row per run.

    Args:
        model: A model folder (the methods of ``toolkit.quantize`` are made from it on demand,
            cached), a built-in model's name (``"tiny"``, ``"smollm2"``) or ``None`` for the tiny one.
        variants: Names (``none``, ``bf16``, ``bnb-4bit``, ``gptq-4bit``, ``gguf-q4_k_m``, …) or a
            name→path dict of prequantized checkpoints.
        backends: Backends to run (default ``["hf"]``); gguf variants join with ``llamacpp``, mlx with ``mlx``.
        results: JSON-lines file; rows already there are kept and skipped (resume).
        text: Quality text (default: the bundled held-out text).
        windows, seq_len: Quality windows (count × tokens).
        prompt_tokens, new_tokens, repeats: Benchmark settings (see :mod:`toolkit.measuring.bench`).
        quality: Score perplexity/KL/top-1 (needs the reference variant ``none`` first).
        retry_errors: Re-run rows that failed before instead of keeping them.
        isolate: Run each variant in a fresh process (honest memory figures, crash-proof sweep);
            ``False`` runs in this process (faster; memory then includes what ran before).
        device: A device spec for planning each load (``"cpu"``, ``"24GiB"``, ``"T4"``); None probes.
        on_row: Called with each finished row dict (widgets use it for live tables).
        threads: CPU threads for every backend (default: each backend's own choice).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    jobs = plan_jobs(model, variants, backends)
    # The reference (full precision) runs first; every other row is scored against it.
    jobs.sort(key=lambda j: j.variant != "none")
    results_path = Path(results) if results else None
    windows_ids = _quality_windows(jobs[0], text, windows, seq_len) if quality else None
    # The reference's log-probs live in the cache, keyed by the windows and the reference variant
    ref_file = (reference_file(reference_key(windows_ids, f"{jobs[0].path}:{jobs[0].variant}:{jobs[0].backend}"))
                if windows_ids else None)
    # A row is resumed only when it was scored against this same reference (model, windows, reference
    # variant): results of another model or text in the same file are measured again, not mixed in.
    scored_against = ref_file.stem if ref_file else f"{jobs[0].path}:no-quality"
    latest = {(r["variant"], r["backend"]): r for r in (read_rows(results_path) if results_path else [])}
    done = {k: r for k, r in latest.items()
            if r.get("scored_against") == scored_against and not (retry_errors and r.get("error"))}
    rows: list[dict[str, Any]] = []
    bar = tqdm(jobs, desc="compare", unit="variant", disable=not progress)
    for i, job in enumerate(bar):
        bar.set_postfix_str(f"{job.variant} on {job.backend}")
        is_reference = i == 0 and ref_file is not None
        key = (job.variant, job.backend)
        if key in done and not (is_reference and not ref_file.exists()):
            rows.append(done[key])
            continue
        runner = run_job_isolated if isolate else run_job
        row = runner(job, windows_ids, None if is_reference or ref_file is None else str(ref_file),
                     prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats, device=device,
                     threads=threads, save_reference=str(ref_file) if is_reference else None)
        if is_reference and not row.get("error"):
            row.update(kl_divergence=0.0, top1_agreement=1.0, reference=True)
            if results_path:
                write_pointer(results_path, ref_file.stem, f"{job.variant} on {job.backend}")
        row["scored_against"] = scored_against
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
    spec = builtin_spec(job.path)
    if spec is not None:
        from toolkit.builtin import base_folder

        folder = base_folder(spec[0], progress=False)
    else:
        folder = Path(job.source or job.path)
    if not Path(folder, "tokenizer.json").exists() and not Path(folder, "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return spread_windows(tok.encode(text if text is not None else heldout_text(), verbose=False), seq_len, windows)


def summary_table(frame: Any) -> str:
    """A readable fixed-width table of a compare DataFrame."""
    cols = ["variant", "backend", "weights_bytes", "peak_delta_bytes", "peak_memory_bytes", "decode_tok_s", "perplexity",
            "kl_divergence", "top1_agreement", "error"]
    view = frame[[c for c in cols if c in frame.columns]].copy()
    for c in ("weights_bytes", "peak_delta_bytes", "peak_memory_bytes"):
        if c in view:
            view[c] = view[c].map(fmt_bytes)
    return view.to_string(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}")
