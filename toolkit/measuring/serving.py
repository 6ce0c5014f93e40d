"""A serving load benchmark for OpenAI-compatible servers: TTFT, TPOT, ITL and end-to-end latency
percentiles and throughput, one row per concurrency level.

The protocol, per level (the numbers are defined as vLLM's ``benchmark_serving`` defines them):

* **Prompts**: ``requests`` distinct prompts per level, none shared with another level or the warm-up:
  seeded slices of the shipped held-out text from distinct random offsets, cut to ``prompt_tokens``
  tokens with the server's own tokenizer (where it has a tokenize endpoint; else about 4 characters
  a token). A server's prefix cache therefore cannot serve them; each row records the longest token
  prefix any two prompts of the run share (``prompt_shared_prefix_max``) so that can be checked.
* **Fixed lengths**: each request asks for ``new_tokens`` tokens with EOS ignored (``ignore_eos``
  for vLLM and llama.cpp's server, ``min_tokens = new_tokens`` for llama-cpp-python's); the row
  records the counts the server reported in its streamed ``usage``, or, where it streams none
  (llama-cpp-python), the tokens counted in the stream (``token_counts`` says which).
* **Arrivals**: without ``request_rate``, a closed loop keeps ``concurrency`` requests in flight
  until ``requests`` are done. With it, requests arrive as a Poisson process at ``request_rate``
  per second (seeded exponential gaps), at most ``concurrency`` in flight: an arrival that finds
  every slot busy waits (``dispatch_delay_*`` says how long).
* **Per request** (from the arrival time of each streamed chunk, on this machine's clock): TTFT =
  first chunk − send; end-to-end (E2E) = end of stream − send; TPOT = (E2E − TTFT) / (tokens − 1);
  ITL = the gaps between consecutive chunks, pooled over the level's requests (a chunk that carries
  several tokens counts as one gap). Each has mean, median, p90 and p99 over the completed requests.
* **Throughput** over the level's wall time (first send to last end of stream): completed requests
  per second, and output tokens per second (the completed requests' tokens).
* **Failures**: a request that errs (unreachable, HTTP error, a read waiting longer than
  ``timeout_s``, a stream cut short, one still running at the level's ``max_duration_s``) counts as a
  failure, with the first error kept; it never hangs the run. A level stops sending at
  ``max_duration_s`` (``sent`` < ``requests`` then).

One untimed warm-up request (``warmup``) goes first, so the server's cold start is not in level one.
"""

from __future__ import annotations

import html
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from toolkit.backends.generation import GenerationConfig
from toolkit.backends.openai import OpenAILoaded, TimedRequest
from toolkit.data import heldout_text
from toolkit.errors import InvalidSpec, ToolkitError
from toolkit.measuring.environment import environment
from toolkit.measuring.results import append_row

METRICS = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "median", "p90", "p99")
CHARS_PER_TOKEN = 4  # prompt length without a tokenizer endpoint


@dataclass
class ServingResult:
    """One concurrency level of a serving load test. Times in seconds; field names are a stable
    contract (``{metric}_{stat}_s`` for metric in ttft, tpot, itl, e2e and stat in mean, median,
    p90, p99; None when no request completed)."""

    model: str
    base_url: str
    concurrency: int
    request_rate: float | None  # Poisson arrivals per second; None: closed loop
    arrivals: str  # "closed loop" or "poisson"
    requests: int  # asked for
    sent: int
    completed: int
    failures: int
    first_error: str | None
    prompt_tokens: int  # asked for
    new_tokens: int  # asked for
    prompt_tokens_mean: float | None  # measured: the server's usage, else its tokenizer
    completion_tokens_total: int
    completion_tokens_min: int | None
    completion_tokens_max: int | None
    short_requests: int  # completed with fewer than new_tokens tokens
    token_counts: str  # "usage" (the server's) or "stream chunks" (counted here)
    duration_s: float
    request_throughput: float  # completed requests / duration_s
    output_throughput: float  # output tokens of completed requests / duration_s
    ttft_mean_s: float | None = None
    ttft_median_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_mean_s: float | None = None
    tpot_median_s: float | None = None
    tpot_p90_s: float | None = None
    tpot_p99_s: float | None = None
    itl_mean_s: float | None = None
    itl_median_s: float | None = None
    itl_p90_s: float | None = None
    itl_p99_s: float | None = None
    e2e_mean_s: float | None = None
    e2e_median_s: float | None = None
    e2e_p90_s: float | None = None
    e2e_p99_s: float | None = None
    dispatch_delay_mean_s: float | None = None  # Poisson mode: how late arrivals were sent (slots busy)
    dispatch_delay_max_s: float | None = None
    prompt_cache: str = "distinct prompts"
    prompt_shared_prefix_max: int | None = None  # tokens; None when the server cannot tokenise
    seed: int = 0
    warmup: int = 1
    timeout_s: float = 60.0
    max_duration_s: float = 600.0
    backend: str = "openai"
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: level, counts, medians and p99s in ms, throughput."""
        def ms(name: str) -> str:
            v = getattr(self, name)
            return "-" if v is None else f"{v * 1000:.1f}"

        rate = "closed" if self.request_rate is None else f"{self.request_rate:g}/s"
        return (f"c={self.concurrency:<3} rate {rate:<7} sent {self.sent} ok {self.completed} failed {self.failures}  "
                f"TTFT {ms('ttft_median_s')}/{ms('ttft_p99_s')} ms  TPOT {ms('tpot_median_s')}/{ms('tpot_p99_s')} ms  "
                f"ITL {ms('itl_median_s')}/{ms('itl_p99_s')} ms  E2E {ms('e2e_median_s')}/{ms('e2e_p99_s')} ms "
                f"(median/p99)  {self.request_throughput:.2f} req/s  {self.output_throughput:.1f} tok/s")

    def _repr_html_(self) -> str:
        head = (f"<p>concurrency {self.concurrency}, {self.arrivals}"
                f"{'' if self.request_rate is None else f' at {self.request_rate:g} req/s'}: "
                f"{self.completed}/{self.sent} completed, {self.failures} failed; "
                f"{self.request_throughput:.3g} req/s, {self.output_throughput:.4g} output tok/s "
                f"over {self.duration_s:.3g} s; {html.escape(self.prompt_cache)}</p>")
        cells = "".join(f"<th>{s}</th>" for s in STATS)
        rows = "".join(f"<tr><td>{m.upper()}</td>"
                       + "".join(f"<td>{_ms(getattr(self, f'{m}_{s}_s'))}</td>" for s in STATS) + "</tr>"
                       for m in METRICS)
        error = f"<p>first error: {html.escape(self.first_error)}</p>" if self.first_error else ""
        return f"{head}<table><tr><th>ms</th>{cells}</tr>{rows}</table>{error}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.4g}"


def stats(values: Sequence[float]) -> dict[str, float | None]:
    """Mean, median, p90 and p99 (numpy's linear interpolation) of the values; None when empty."""
    if not len(values):
        return {s: None for s in STATS}
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"mean": float(a.mean()), "median": float(p50), "p90": float(p90), "p99": float(p99)}


def distinct_prompts(client: OpenAILoaded, count: int, length: int, seed: int) -> tuple[list[str], list[int] | None,
                                                                                         int | None]:
    """``count`` distinct prompts of ``length`` tokens: held-out text from distinct seeded offsets.

    Returns:
        ``(prompts, token counts, longest token prefix any two share)``; the last two are None when
        the server has no tokenize endpoint (then a prompt is ``4 × length`` characters).
    """
    span = 8 * length + 64  # characters: enough for ``length`` tokens of source text
    text = heldout_text()
    text = text * math.ceil((span + count) / len(text) + 1)
    offsets = np.random.default_rng(seed).choice(len(text) - span, size=count, replace=False)
    try:
        client.encode("a")
    except ToolkitError:
        return [text[o:o + CHARS_PER_TOKEN * length] for o in offsets], None, None
    prompts, encoded = [], []
    for o in offsets:
        prompt = client.decode(client.encode(text[o:o + span])[:length])
        prompts.append(prompt)
        encoded.append(tuple(client.encode(prompt)))
    return prompts, [len(e) for e in encoded], _longest_shared_prefix(encoded)


def _longest_shared_prefix(seqs: list[tuple[int, ...]]) -> int:
    """The longest prefix any two sequences share (neighbours in sorted order have the longest)."""
    ordered = sorted(seqs)
    best = 0
    for a, b in zip(ordered, ordered[1:]):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        best = max(best, n)
    return best


def _closed_loop(client: OpenAILoaded, prompts: list[str], config: GenerationConfig, concurrency: int,
                 stop_at: float) -> list[TimedRequest | None]:
    """``concurrency`` workers, each sending the next prompt as soon as its last request ended."""
    records: list[TimedRequest | None] = [None] * len(prompts)
    lock = threading.Lock()
    queue = iter(range(len(prompts)))

    def worker() -> None:
        while time.perf_counter() < stop_at:
            with lock:
                i = next(queue, None)
            if i is None:
                return
            records[i] = client.timed_request(prompts[i], config, deadline_s=stop_at - time.perf_counter())

    _run_threads([threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, len(prompts)))],
                 stop_at + client.timeout)
    return records


def _poisson(client: OpenAILoaded, prompts: list[str], config: GenerationConfig, concurrency: int, rate: float,
             seed: int, start: float, stop_at: float) -> tuple[list[TimedRequest | None], list[float]]:
    """Requests at seeded exponential gaps (the first at once), at most ``concurrency`` in flight."""
    records: list[TimedRequest | None] = [None] * len(prompts)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=len(prompts))
    arrivals = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    slots = threading.BoundedSemaphore(concurrency)
    delays: list[float] = []
    threads: list[threading.Thread] = []

    def one(i: int) -> None:
        try:
            records[i] = client.timed_request(prompts[i], config, deadline_s=stop_at - time.perf_counter())
        finally:
            slots.release()

    for i, at in enumerate(arrivals):
        wait = start + float(at) - time.perf_counter()
        if wait > 0:
            time.sleep(min(wait, max(stop_at - time.perf_counter(), 0.0)))
        if time.perf_counter() >= stop_at or not slots.acquire(timeout=max(stop_at - time.perf_counter(), 0.0)):
            break
        delays.append(max(time.perf_counter() - (start + float(at)), 0.0))
        thread = threading.Thread(target=one, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
    _run_threads(threads, stop_at + client.timeout, started=True)
    return records, delays


def _run_threads(threads: list[threading.Thread], until: float, started: bool = False) -> None:
    """Start (unless started) and join the threads; each request is bounded, so they end by ``until``
    (plus a margin); a thread still running then is left behind, daemonic, and its request unsent."""
    if not started:
        for t in threads:
            t.start()
    for t in threads:
        t.join(timeout=max(until - time.perf_counter(), 0.0) + 5.0)


def _level(client: OpenAILoaded, prompts: list[str], prompt_counts: list[int] | None, config: GenerationConfig, *,
           concurrency: int, request_rate: float | None, seed: int, max_duration_s: float) -> dict[str, Any]:
    """Run one level and reduce it to the measured fields of a :class:`ServingResult`."""
    start = time.perf_counter()
    stop_at = start + max_duration_s
    delays: list[float] = []
    if request_rate is None:
        records = _closed_loop(client, prompts, config, concurrency, stop_at)
    else:
        records, delays = _poisson(client, prompts, config, concurrency, request_rate, seed, start, stop_at)
    sent = [(i, r) for i, r in enumerate(records) if r is not None]
    done = [(i, r) for i, r in sent if r.error is None and r.chunk_s]
    failed = [r for _, r in sent if r.error is not None or not r.chunk_s]
    end = max((r.sent_at + r.end_s for _, r in sent), default=start)
    duration = max(end - start, 1e-9)

    tokens = [r.completion_tokens if r.completion_tokens is not None else sum(r.chunk_tokens) for _, r in done]
    measured_prompt = [r.prompt_tokens if r.prompt_tokens is not None
                       else (prompt_counts[i] if prompt_counts is not None else None) for i, r in done]
    measured_prompt = [p for p in measured_prompt if p is not None]
    ttft = [r.chunk_s[0] for _, r in done]
    e2e = [r.end_s for _, r in done]
    tpot = [(r.end_s - r.chunk_s[0]) / (n - 1) for (_, r), n in zip(done, tokens) if n > 1]
    itl = [b - a for _, r in done for a, b in zip(r.chunk_s, r.chunk_s[1:])]
    out: dict[str, Any] = dict(
        sent=len(sent), completed=len(done), failures=len(failed),
        first_error=next((r.error or "no tokens in the stream" for r in failed), None),
        prompt_tokens_mean=float(np.mean(measured_prompt)) if measured_prompt else None,
        completion_tokens_total=int(sum(tokens)), completion_tokens_min=min(tokens, default=None),
        completion_tokens_max=max(tokens, default=None),
        short_requests=sum(1 for n in tokens if n < config.max_tokens),
        token_counts="usage" if done and all(r.completion_tokens is not None for _, r in done) else "stream chunks",
        duration_s=duration, request_throughput=len(done) / duration, output_throughput=sum(tokens) / duration,
        dispatch_delay_mean_s=float(np.mean(delays)) if delays else None,
        dispatch_delay_max_s=float(np.max(delays)) if delays else None)
    for metric, values in (("ttft", ttft), ("tpot", tpot), ("itl", itl), ("e2e", e2e)):
        for stat, value in stats(values).items():
            out[f"{metric}_{stat}_s"] = value
    return out


def load_test(loaded: OpenAILoaded, *, concurrency: int | Sequence[int] = (1, 4, 16), request_rate: float | None = None,
              requests: int | None = None, prompt_tokens: int = 128, new_tokens: int = 64, seed: int = 0,
              warmup: int = 1, timeout_s: float = 60.0, max_duration_s: float = 600.0,
              results: str | Path | None = None) -> list[ServingResult]:
    """Load-test an OpenAI-compatible server with the protocol in this module's docstring.

    Args:
        loaded: A model loaded with ``backend="openai"`` (``toolkit.load(name, "openai", base_url=...)``).
        concurrency: Requests in flight, one level per value (a sweep).
        request_rate: Poisson arrivals per second, capped by the concurrency; None: a closed loop.
        requests: Requests per level; default ``max(8, 4 × concurrency)``.
        prompt_tokens: Length of each prompt, in the server's tokens.
        new_tokens: Tokens asked of each request (EOS ignored where the server allows).
        seed: Seed of the prompts' offsets and of the arrival gaps.
        warmup: Untimed requests before the first level.
        timeout_s: Longest wait for the server's answer and for each read of a stream.
        max_duration_s: A level stops sending, and closes what is in flight, after this many seconds.
        results: A JSON-lines file; each finished level is appended to it at once.

    Returns:
        One :class:`ServingResult` per level, in the order given.

    Raises:
        InvalidSpec: ``loaded`` is not an OpenAI-compatible server, or a setting is out of range.
    """
    if not isinstance(loaded, OpenAILoaded):
        raise InvalidSpec("the serving load test sends requests to an OpenAI-compatible server: load the model "
                          "with backend='openai' and base_url=... (start one with `python -m llama_cpp.server` "
                          "or `vllm serve`)")
    levels = [int(c) for c in ([concurrency] if isinstance(concurrency, int) else concurrency)]
    if not levels or min(levels) < 1:
        raise InvalidSpec(f"concurrency must be one or more positive integers, got {concurrency!r}")
    if request_rate is not None and not request_rate > 0:
        raise InvalidSpec(f"request_rate must be a positive number of requests per second, got {request_rate!r}")
    if requests is not None and requests < 1 or prompt_tokens < 1 or new_tokens < 1 or warmup < 0:
        raise InvalidSpec("requests, prompt_tokens and new_tokens must be at least 1, warmup at least 0")
    if not timeout_s > 0 or not max_duration_s > 0:
        raise InvalidSpec("timeout_s and max_duration_s must be positive")
    counts = [requests or max(8, 4 * c) for c in levels]
    client = loaded.with_timeout(timeout_s)
    prompts, prompt_counts, shared = distinct_prompts(client, warmup + sum(counts), prompt_tokens, seed)
    config = GenerationConfig(max_tokens=new_tokens, ignore_eos=True)
    for prompt in prompts[:warmup]:
        client.timed_request(prompt, config, deadline_s=max_duration_s)
    env = environment()
    rows: list[ServingResult] = []
    first = warmup
    for level, (c, n) in enumerate(zip(levels, counts)):
        part = slice(first, first + n)
        first += n
        measured = _level(client, prompts[part], prompt_counts[part] if prompt_counts else None, config,
                          concurrency=c, request_rate=request_rate, seed=seed + 1000 + level,
                          max_duration_s=max_duration_s)
        row = ServingResult(
            model=loaded.model_name, base_url=loaded.base_url, concurrency=c, request_rate=request_rate,
            arrivals="closed loop" if request_rate is None else "poisson", requests=n, prompt_tokens=prompt_tokens,
            new_tokens=new_tokens, prompt_shared_prefix_max=shared, seed=seed, warmup=warmup, timeout_s=timeout_s,
            max_duration_s=max_duration_s, environment=env,
            prompt_cache="distinct prompts" if shared is not None else
                         "distinct prompts (not tokenised: the server has no tokenize endpoint)",
            **measured)
        if results is not None:
            append_row(Path(results), row.to_dict())
        rows.append(row)
    return rows


__all__ = ["ServingResult", "load_test", "stats", "distinct_prompts"]
