"""The quality half of benchmarks/engine_parity.py: toolkit's perplexity (llama.cpp protocol) and KL
statistics beside llama-perplexity's, on the same GGUFs, text and chunks, with flash attention off in
both (llama-cpp-python's default; llama-perplexity's "auto" turns it on for the CPU, which moves the
KLD of q8_0 vs f32 by 2% and its same-top-p by 0.44 points, more than its error bar).

The pair for the KL statistics is made from the real model: its shipped Q4_1 GGUF requantized to f32
(``llama_model_quantize`` with ``allow_requantize``: an f32 file whose outputs are the Q4_1 model's),
then that f32 quantized to q4_k_m and q8_0 — real quantizations of one base, as a user would compare.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

import numpy as np

from benchmarks._worker import run_worker

CTX, CHUNKS = 256, 16


def _requantize(src: Path, dst: Path, ftype: int) -> Path:
    if dst.exists():
        return dst
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread, params.allow_requantize = ftype, 2, True
    tmp = dst.with_suffix(".tmp")
    if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize {src} -> {dst} failed")
    tmp.rename(dst)
    return dst


def pair(smol: Path) -> dict[str, Path]:
    import llama_cpp

    from toolkit.builtin.tiny import cache_root

    folder = cache_root() / "parity"
    folder.mkdir(parents=True, exist_ok=True)
    f32 = _requantize(smol, folder / "smollm2-f32.gguf", llama_cpp.LLAMA_FTYPE_ALL_F32)
    return {"f32": f32, "q8_0": _requantize(f32, folder / "smollm2-q8_0.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0),
            "q4_k_m": _requantize(f32, folder / "smollm2-q4_k_m.gguf", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)}


def _text() -> Path:
    from toolkit.data import HELDOUT

    return HELDOUT


def llama_perplexity(bin_dir: Path, model: Path, *extra: str) -> str:
    out = subprocess.run([str(bin_dir / "llama-perplexity"), "-m", str(model), "-f", str(_text()), "-c", str(CTX),
                          "--chunks", str(CHUNKS), "-t", "2", "-fa", "off", *extra], capture_output=True, text=True, check=True)
    return out.stdout + out.stderr


def _num(pattern: str, text: str) -> tuple[float, float]:
    m = re.search(pattern, text)
    if not m:
        raise RuntimeError(f"llama-perplexity printed no {pattern!r}")
    return float(m[1]), float(m[2])


def toolkit_perplexity(model: str) -> dict:
    import toolkit
    from toolkit.measuring.quality import protocol_perplexity

    with toolkit.load(model, "llamacpp") as loaded:
        r = protocol_perplexity(loaded, _text(), protocol="llama.cpp", ctx=CTX, chunks=CHUNKS)
        return {"perplexity": r.perplexity, "uncertainty": r.uncertainty, "tokens": r.tokens}


def toolkit_kl(base: str, quant: str) -> dict:
    """The llama.cpp protocol's chunks scored by both models; statistics of quant against base."""
    import toolkit
    from toolkit.measuring.kl import KLSummary, TokenStats, dequantize, quantize
    from toolkit.measuring.quality import added_bos, llamacpp_first_scored, llamacpp_protocol_windows

    text = _text().read_text(encoding="utf-8").removesuffix("\n")
    first = llamacpp_first_scored(CTX)
    refs = []
    with toolkit.load(base, "llamacpp") as b:
        windows = llamacpp_protocol_windows(b.encode(text), CTX, CHUNKS, added_bos(b))
        for w in windows:  # the base as llama.cpp keeps it: 2-byte codes within 16 nats of each row's max
            refs.append(quantize(b.logprobs([w])[0][first:]))
    parts = []
    with toolkit.load(quant, "llamacpp") as q:
        for w, ref in zip(windows, refs):
            parts.append(TokenStats.of(q.logprobs([w])[0][first:], dequantize(ref), np.asarray(w[first + 1:])))
    s = KLSummary.of(TokenStats.concat(parts))
    return {"kld_mean": s.kld_mean, "kld_err": s.kld_err, "same_top1": s.same_top1, "same_top1_err": s.same_top1_err,
            "ppl_ratio": s.ppl_ratio, "ppl_ratio_err": s.ppl_ratio_err, "kld_median": s.kld_percentiles["median"],
            "kld_p99": s.kld_percentiles["p99"], "tokens": s.tokens}


def quality(bin_dir: Path, smol: Path | None, timeout: float) -> list[dict]:
    if smol is None:
        print("quality: skipped (the smollm2 extra is not installed)", flush=True)
        return []
    here = Path(__file__).resolve()
    rows = []
    theirs = llama_perplexity(bin_dir, smol)
    ppl, err = _num(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", theirs)
    ours = run_worker(f"{here}:toolkit_perplexity", {"model": str(smol)}, timeout)
    row = {"what": "perplexity, SmolLM2 Q4_1 (llama.cpp protocol, c=256, 16 chunks)", "llama_perplexity": ppl,
           "llama_perplexity_err": err, "toolkit": ours.get("perplexity"), "error": ours.get("error")}
    if ours.get("perplexity"):
        row["ratio"] = ours["perplexity"] / ppl
    rows.append(row)
    print(row, flush=True)
    files = pair(smol)
    base_file = files["f32"].with_suffix(".fa-off.kld")  # flash attention off in both, as Llama() has it
    if not base_file.exists():
        llama_perplexity(bin_dir, files["f32"], "--kl-divergence-base", str(base_file))
    for name in ("q8_0", "q4_k_m"):
        text = llama_perplexity(bin_dir, files[name], "--kl-divergence-base", str(base_file), "--kl-divergence")
        kld, kld_err = _num(r"Mean\s+KLD:\s+([\d.]+)\s*±\s*([\d.]+)", text)
        same, same_err = _num(r"Same top p:\s+([\d.]+)\s*±\s*([\d.]+) %", text)
        ratio, ratio_err = _num(r"Mean PPL\(Q\)/PPL\(base\)\s+:\s+([\d.]+)\s*±\s*([\d.]+)", text)
        ours = run_worker(f"{here}:toolkit_kl", {"base": str(files["f32"]), "quant": str(files[name])}, timeout)
        row = {"what": f"KL statistics, SmolLM2 {name} vs f32", "llama_kld": kld, "llama_kld_err": kld_err,
               "llama_same_top_p": same / 100, "llama_same_top_p_err": same_err / 100, "llama_ppl_ratio": ratio,
               "llama_ppl_ratio_err": ratio_err, **{f"toolkit_{k}": v for k, v in ours.items()}}
        if ours.get("kld_mean") is not None:
            row["kld_ratio"] = ours["kld_mean"] / kld
            row["same_top_p_within_error"] = abs(ours["same_top1"] - same / 100) <= same_err / 100
        rows.append(row)
        print(row, flush=True)
    return rows
