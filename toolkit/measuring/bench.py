"""One benchmark protocol for every backend, held to llama-bench's.

Every timed run gets a fresh prompt — seeded random token ids, distinct per run (for
OpenAI-compatible servers a seeded slice of the shipped held-out text, since a server may take text
only) — so no run can be served from a prefix cache (llama-cpp-python's ``Llama.generate`` reuses
the KV of a prompt it already holds; vLLM and servers cache prefixes too). Where the engine counts
what it evaluated (llama.cpp's perf counters), the row records it: every prompt token evaluated.

One run generates ``new_tokens`` with EOS ignored, timed token by token:

* prefill (llama-bench's pp): the time to the first token on an empty context, so
  ``prefill_tok_s = batch x prompt_tokens / TTFT``;
* decode (llama-bench's tg): the tokens after the first over the time after the first,
  ``decode_tok_s = batch x (new_tokens - 1) / (t_last - t_first)``, at a depth of
  ``prompt_tokens`` tokens of context — or of ``depth`` tokens with ``depth=`` (a separate run whose
  prompt is that long; ``depth=0`` decodes from a one-token context, as llama-bench's tg does).

A cold call (reported apart) and ``warmup`` runs come first; then ``repeats`` (>= 5 by default)
timed runs: means with their standard deviation, as llama-bench reports them, plus medians, the
decode rate's slow tail (10th percentile) and every sample. Peak memory is the peak of what holds
the model (this process, an engine's worker processes, the CUDA allocator or MLX's heap: see
``Loaded.model_peak_bytes``). The decode roofline is the memory-bandwidth bound: every generated
token reads all weights once, so ``roofline_tok_s = bandwidth / weights_bytes``; on the CPU the
bandwidth is measured (a large array copy); elsewhere only a ``bandwidth_bytes_s`` passed in is used
(the GPU table's figure is not looked up yet), and the roofline fields are None without one.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from toolkit.backends.generation import GenerationConfig
from toolkit.data import HELDOUT
from toolkit.errors import InvalidSpec
from toolkit.measuring.environment import environment
from toolkit.measuring.trackers import MemoryTracker


@dataclass
class BenchResult:
    """One benchmark row. The fields of DESIGN.md's contract keep their names; means are means,
    medians medians, percentiles named for what they hold."""

    backend: str
    quantization: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    repeats: int
    ttft_s: float  # median
    ttft_mean_s: float
    ttft_std_s: float
    ttft_p90_s: float
    prefill_tok_s: float  # mean over runs (llama-bench's avg_ts of pp)
    prefill_std_tok_s: float
    decode_tok_s: float  # mean over runs (llama-bench's avg_ts of tg)
    decode_std_tok_s: float
    decode_median_tok_s: float
    decode_p10_tok_s: float  # the slow tail of a rate: its 10th percentile
    cold_ttft_s: float
    peak_memory_bytes: int
    weights_bytes: int | None
    load_s: float | None
    bandwidth_bytes_s: float | None
    roofline_tok_s: float | None
    roofline_fraction: float | None
    depth: int = 0  # tokens of context before the decoded ones
    threads: int | None = None
    prompt_cache: str = "fresh prompts"  # how runs avoid a prefix cache, and what the engine counted
    prompt_tokens_evaluated: list[int] | None = None  # per timed run, when the engine counts them
    samples: dict[str, list[float]] = field(default_factory=dict)
    engine: dict[str, float] = field(default_factory=dict)  # the engine's own timings, when it keeps them
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
    text = HELDOUT.read_text(encoding="utf-8")
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


def _run(loaded: Any, prompts: list[list[int]], config: GenerationConfig) -> tuple[float, float]:
    """(TTFT, decode tok/s over all sequences) of one generation of ``config.max_tokens``."""
    results = [loaded.generate(prompts[0], config)] if len(prompts) == 1 else loaded.generate_batch(prompts, config)
    _sync()
    ttft = max(r.ttft_s for r in results)
    end = max(r.total_s for r in results)
    after_first = sum(max(r.completion_tokens - 1, 0) for r in results)
    return ttft, after_first / (end - ttft) if end > ttft else 0.0


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


class _Prompts:
    """Fresh, distinct prompts: run k of batch slot i gets seed (seed, k, i); never the same twice."""

    def __init__(self, loaded: Any, seed: int) -> None:
        self.loaded, self.seed, self.k = loaded, seed, 0
        self.seen: set[tuple[int, ...]] = set()

    def next(self, length: int, batch: int) -> list[list[int]]:
        out = []
        for i in range(batch):
            s = self.seed * 1_000_003 + self.k * 1_009 + i
            ids = (text_prompt(self.loaded, length, s) if self.loaded.backend == "openai"
                   else random_prompt(self.loaded.vocab_size, max(length, 1), s))
            key = tuple(ids)
            if key in self.seen:  # a text slice can repeat on a short text: shift it
                ids = ids[1:] + ids[:1]
            self.seen.add(tuple(ids))
            out.append(ids)
        self.k += 1
        return out


def bench(loaded: Any, *, prompt_tokens: int = 128, new_tokens: int = 64, batch: int = 1, repeats: int = 5,
          warmup: int = 1, seed: int = 0, depth: int | None = None,
          bandwidth_bytes_s: float | None = None) -> BenchResult:
    """Benchmark a loaded model with the protocol in this module's docstring.

    Args:
        loaded: A model from :func:`toolkit.load`.
        prompt_tokens: Length of each prompt (the prefill measured, llama-bench's ``-p``).
        new_tokens: Tokens generated per run (EOS ignored), llama-bench's ``-n``; at least 2.
        batch: Prompts per call (native batching where the backend has it).
        repeats: Timed runs; means ± standard deviations and medians are reported.
        warmup: Untimed runs after the cold call.
        seed: Seed of the prompts (each run's prompt is distinct).
        depth: Tokens of context before the decoded ones (llama-bench's ``-d``); default
            ``prompt_tokens`` (decode follows the measured prefill, in the same run).
        bandwidth_bytes_s: Memory bandwidth for the roofline; measured on the CPU when omitted.
    """
    if new_tokens < 2:
        raise InvalidSpec("new_tokens must be at least 2: decode speed needs tokens after the first")
    if repeats < 1 or batch < 1 or prompt_tokens < 1:
        raise InvalidSpec("repeats, batch and prompt_tokens must be at least 1")
    if depth is not None and depth < 0:
        raise InvalidSpec(f"depth must be 0 or more tokens, got {depth}")
    prompts = _Prompts(loaded, seed)
    one = GenerationConfig(max_tokens=1, ignore_eos=True)
    full = GenerationConfig(max_tokens=new_tokens, ignore_eos=True)
    separate_tg = depth is not None and depth != prompt_tokens
    counted: list[int] = []
    with MemoryTracker() as mem:
        t = time.perf_counter()
        loaded.generate(prompts.next(prompt_tokens, 1)[0], one)
        cold = time.perf_counter() - t
        for _ in range(warmup):
            _run(loaded, prompts.next(prompt_tokens, batch), full)
        ttfts, prefill, decode = [], [], []
        for _ in range(repeats):
            before = loaded.engine_counters()
            ttft, rate = _run(loaded, prompts.next(prompt_tokens, batch), one if separate_tg else full)
            after = loaded.engine_counters()
            if before is not None and after is not None:
                counted.append(after["prompt_tokens"] - before["prompt_tokens"])
            if separate_tg:
                _, rate = _run(loaded, prompts.next(max(depth, 1), batch), full)
            ttfts.append(ttft)
            prefill.append(batch * prompt_tokens / ttft)
            decode.append(rate)
    peak = loaded.model_peak_bytes(mem.peak_bytes)
    weights = loaded.weights_bytes()
    device = getattr(loaded.target, "device", "cpu")
    if bandwidth_bytes_s is None and device == "cpu":
        bandwidth_bytes_s = cpu_bandwidth_bytes_s()
    roofline = bandwidth_bytes_s / weights if bandwidth_bytes_s and weights else None
    decode_mean = statistics.fmean(decode)
    cache = "fresh prompts" + (f"; engine evaluated every prompt token ({prompt_tokens} a run)"
                               if counted and all(c >= prompt_tokens * batch for c in counted) else "")
    return BenchResult(
        backend=loaded.backend, quantization=loaded.target.quantization, batch=batch, prompt_tokens=prompt_tokens,
        new_tokens=new_tokens, repeats=repeats, ttft_s=statistics.median(ttfts), ttft_mean_s=statistics.fmean(ttfts),
        ttft_std_s=_std(ttfts), ttft_p90_s=_p90(ttfts), prefill_tok_s=statistics.fmean(prefill),
        prefill_std_tok_s=_std(prefill), decode_tok_s=decode_mean, decode_std_tok_s=_std(decode),
        decode_median_tok_s=statistics.median(decode), decode_p10_tok_s=_p10(decode),
        cold_ttft_s=cold, peak_memory_bytes=peak, weights_bytes=weights, load_s=loaded.load_s,
        bandwidth_bytes_s=bandwidth_bytes_s, roofline_tok_s=roofline,
        roofline_fraction=(decode_mean / batch) / roofline if roofline else None,
        depth=prompt_tokens if depth is None else depth, threads=loaded.threads, prompt_cache=cache,
        prompt_tokens_evaluated=counted or None,
        samples={"ttft_s": ttfts, "prefill_tok_s": prefill, "decode_tok_s": decode},
        model=str(loaded.target.path), environment=environment())


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))


def _p10(values: list[float]) -> float:
    return float(np.percentile(values, 10))
