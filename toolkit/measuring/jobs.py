"""One row of a comparison: load a variant, benchmark it, score its quality, unload it — in this
process (:func:`run_job`) or, for honest memory figures and a sweep that survives crashes, in a
fresh one (:func:`run_job_isolated`, through :mod:`toolkit.launcher`)."""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit import launcher
from toolkit.errors import ToolkitError
from toolkit.facts.process import rss_bytes

ROW_FIELDS = ("variant", "backend", "quantization", "dtype", "path", "params", "weights_bytes",
              "predicted_weights_bytes", "peak_memory_bytes", "runtime_bytes", "peak_delta_bytes", "build_s", "load_s",
              "ttft_s", "prefill_tok_s", "decode_tok_s", "perplexity", "kl_divergence", "kl_divergence_err",
              "top1_agreement", "top1_agreement_err", "ppl_ratio", "ppl_ratio_err", "tokens_scored", "error")


@dataclass
class Job:
    """One row to measure.

    Attributes:
        variant: Its name in the table.
        backend: The backend that runs it.
        path: The model; ``<builtin>:<variant>`` (``tiny:gptq-4bit``) for a built-in model's variant,
            built when the job runs.
        quantization: The quantization asked of ``load`` (``bnb-*`` is made at load time).
        source: A model folder to quantize with the method ``variant`` when the job runs
            (:func:`toolkit.builtin.quantize.quantize`, cached), instead of loading ``path``.
        dtype: A compute dtype to ask of ``load`` (the ``bf16`` row of a full-precision model).
    """

    variant: str
    backend: str
    path: Path
    quantization: str
    source: str | None = None
    dtype: str | None = None


def empty_row(job: Job) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in ROW_FIELDS}
    row.update(variant=job.variant, backend=job.backend, quantization=job.quantization)
    return row


def builtin_spec(path: Path | str) -> tuple[str, str] | None:
    """``(model, variant)`` of a ``<builtin>:<variant>`` job path, else None."""
    from toolkit.builtin import BUILTIN_MODELS

    name, sep, variant = str(path).partition(":")
    return (name, variant) if sep and name in BUILTIN_MODELS else None


def resolve(job: Job) -> Path:
    """The job's local path; a built-in variant (``tiny:gptq-4bit``) or a method to apply to a
    folder (``source``) is built on first use."""
    spec = builtin_spec(job.path)
    if spec is not None:
        from toolkit.builtin import variant_path

        return variant_path(*spec, progress=False)
    if job.source is not None:
        from toolkit.builtin.quantize import quantize

        return quantize(job.source, job.variant, progress=False)
    return job.path


def build_seconds(path: Path) -> float | None:
    """How long the build of a variant took, from its manifest (None: not built by toolkit)."""
    import json

    from toolkit.builtin.quantize import MANIFEST

    manifest = (path if path.is_dir() else path.parent) / MANIFEST
    try:
        return float(json.loads(manifest.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_job(job: Job, windows: list[list[int]] | None, reference: str | None = None, *, prompt_tokens: int,
            new_tokens: int, repeats: int, device: str | None = None, save_reference: str | None = None,
            threads: int | None = None) -> dict[str, Any]:
    """Load, bench, score and unload one variant; return its row.

    Args:
        windows: Quality windows (token ids), or None to skip quality.
        reference: A reference file (:mod:`toolkit.measuring.reference`) to score KL against.
        save_reference: Write this variant's log-probs there as the reference for the others.
        threads: CPU threads for the backend (default: its own choice).
    """
    from toolkit.backends import backend_module, load
    from toolkit.measuring.bench import bench
    from toolkit.measuring.quality import score
    from toolkit.measuring.reference import Reference
    from toolkit.measuring.trackers import MemoryTracker

    row = empty_row(job)
    start = time.perf_counter()
    try:
        path = resolve(job)
        row["path"] = str(path)
        row["build_s"] = build_seconds(path)
        quant = job.quantization if job.quantization.startswith("bnb-") else None
        backend_module(job.backend)  # import the backend's libraries before the baseline is read
        row["runtime_bytes"] = rss_bytes()
        ref = Reference.load(Path(reference), windows) if reference and windows is not None else None
        if reference and windows is not None and ref is None:
            raise ToolkitError(f"the reference {reference} is missing or was made on other windows: rerun the "
                               "reference variant (compare does this by itself)")
        options = {"n_threads": threads} if threads else {}
        with MemoryTracker() as mem:
            loaded = load(str(path), job.backend, quantization=quant, dtype=job.dtype, device=device,
                          fallback=False, **options)
            try:
                if loaded.plan is not None:
                    row["predicted_weights_bytes"] = loaded.plan.memory.weights_bytes
                    row["quantization"] = loaded.plan.quantization
                    row["params"] = loaded.plan.params
                    row["dtype"] = loaded.plan.dtype
                result = bench(loaded, prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats)
                row.update(weights_bytes=result.weights_bytes, load_s=loaded.load_s, ttft_s=result.ttft_s,
                           prefill_tok_s=result.prefill_tok_s, decode_tok_s=result.decode_tok_s,
                           roofline_fraction=result.roofline_fraction)
                if windows is not None:
                    quality, logprobs = score(loaded, windows, ref.logprobs() if ref else None)
                    row.update(perplexity=quality.perplexity, kl_divergence=quality.kl_divergence,
                               kl_divergence_err=quality.kl_divergence_err, top1_agreement=quality.top1_agreement,
                               top1_agreement_err=quality.top1_agreement_err, ppl_ratio=quality.ppl_ratio,
                               ppl_ratio_err=quality.ppl_ratio_err, kl=quality.kl, tokens_scored=quality.tokens)
                    if save_reference:
                        Reference.of(windows, logprobs).save(Path(save_reference))
                    del logprobs
            finally:
                loaded.unload()
        row["peak_memory_bytes"] = max(mem.peak_bytes, loaded.model_peak_bytes(mem.peak_bytes))
        row["peak_delta_bytes"] = mem.delta_peak_bytes
    except (Exception, MemoryError) as exc:  # one failed variant must not end the sweep
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        row["traceback"] = traceback.format_exc(limit=6)
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def job_worker(job: dict[str, Any], settings: dict[str, Any], arrays: dict[str, Any] | None = None) -> dict[str, Any]:
    """The child's side of :func:`run_job_isolated` (called by :mod:`toolkit.launcher`)."""
    windows = arrays["windows"].tolist() if arrays and "windows" in arrays else None
    return {"row": run_job(Job(**{**job, "path": Path(job["path"])}), windows, **settings)}


def run_job_isolated(job: Job, windows: list[list[int]] | None, reference: str | None = None,
                     **settings: Any) -> dict[str, Any]:
    """:func:`run_job` in a fresh Python process, so that its memory figures are its own (a
    notebook kernel or an earlier variant's allocations and imports do not count) and a crash or
    an out-of-memory kill becomes an error row instead of ending the sweep."""
    spec = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(job).items()}
    outcome = launcher.run("toolkit.measuring.jobs:job_worker",
                           {"job": spec, "settings": {"reference": reference, **settings}},
                           arrays={"windows": np.asarray(windows)} if windows is not None else None)
    if outcome.ok and outcome.value is not None:
        return outcome.value["row"]
    row = empty_row(job)
    row["path"] = str(job.path)
    row["error"] = f"WorkerDied: {' '.join(str(outcome.error).split())[:600]}"
    return row
