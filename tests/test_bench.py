"""The benchmark protocol: no timed run is served from a prefix cache (llama.cpp's own counters say how
many prompt tokens it evaluated), every run has its own prompt, and the row keeps its samples."""

from __future__ import annotations

import importlib.util
import statistics

import pytest

import toolkit
from toolkit.builtin.tiny import BASE, tiny
from toolkit.measuring.bench import _Prompts, bench

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")


@pytest.fixture(scope="module")
def gguf():
    with toolkit.load(tiny("gguf-q4_k_m", progress=False), "llamacpp", n_threads=1) as model:
        yield model


@needs_llama
def test_no_timed_run_hits_the_prefix_cache(gguf):
    r = bench(gguf, prompt_tokens=48, new_tokens=8, repeats=5)
    assert r.prompt_tokens_evaluated == [48] * 5  # llama.cpp evaluated every prompt token of every run
    assert "engine evaluated every prompt token" in r.prompt_cache


@needs_llama
def test_the_same_prompt_twice_would_hit_it(gguf):
    """What the check guards against: llama-cpp-python reuses the KV of a prompt it already holds."""
    ids = list(range(100, 148))
    gguf.generate(ids, max_tokens=2, ignore_eos=True)
    before = gguf.engine_counters()["prompt_tokens"]
    gguf.generate(ids, max_tokens=2, ignore_eos=True)
    assert gguf.engine_counters()["prompt_tokens"] - before < len(ids)


@needs_llama
def test_a_reused_prefix_generates_what_a_fresh_context_does(gguf):
    """toolkit's own decode loop keeps llama-cpp-python's record of what the context holds: a prompt
    that extends the last one evaluates only its new tokens, and gives the ids a fresh context gives."""
    ids = list(range(200, 260))
    gguf.generate(ids[:30], max_tokens=6, ignore_eos=True)
    before = gguf.engine_counters()["prompt_tokens"]
    reused = gguf.generate(ids, max_tokens=8, ignore_eos=True).token_ids
    assert gguf.engine_counters()["prompt_tokens"] - before == len(ids) - 30
    with toolkit.load(tiny("gguf-q4_k_m", progress=False), "llamacpp", n_threads=1) as fresh:
        assert fresh.generate(ids, max_tokens=8, ignore_eos=True).token_ids == reused


def test_every_run_gets_its_own_prompt():
    class FakeVocab:  # only what _Prompts reads
        backend, vocab_size = "hf", 4096

    prompts = _Prompts(FakeVocab(), seed=0)
    seen = [tuple(p) for _ in range(20) for p in prompts.next(16, 3)]
    assert len(set(seen)) == len(seen) == 60


def test_row_keeps_samples_means_and_deviations():
    with toolkit.load(BASE, "hf", dtype="float32", n_threads=1) as model:
        r = bench(model, prompt_tokens=16, new_tokens=6, repeats=5, warmup=0)
        d = bench(model, prompt_tokens=16, new_tokens=6, repeats=3, warmup=0, depth=0)
    assert r.repeats == 5 and len(r.samples["decode_tok_s"]) == 5 and len(r.samples["ttft_s"]) == 5
    assert r.decode_tok_s == pytest.approx(statistics.fmean(r.samples["decode_tok_s"]))
    assert r.decode_std_tok_s == pytest.approx(statistics.stdev(r.samples["decode_tok_s"]))
    assert r.decode_p10_tok_s <= r.decode_median_tok_s and r.ttft_s <= r.ttft_p90_s
    assert r.prefill_tok_s == pytest.approx(statistics.fmean(16 / t for t in r.samples["ttft_s"]))
    assert r.threads == 1 and r.depth == 16 and d.depth == 0 and len(d.samples["decode_tok_s"]) == 3


def test_the_thread_probe_takes_turns_until_it_has_timed_enough(monkeypatch):
    """The candidates decode in turns (the host's drift falls on both), at least PROBE_TOKENS turns and until
    PROBE_SECONDS a candidate are timed; the faster median wins. A fake clock stands in for the decodes."""
    from toolkit.backends import threads

    clock = [0.0]
    cost = {1: 0.0005, 2: 0.0004}  # seconds a token
    calls: list[int] = []

    def decode_one(n):
        calls.append(n)
        clock[0] += cost[n]

    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(threads, "cpu_count", lambda: 2)
    best, rates = threads.probe_threads(decode_one, 1 << 20)
    assert best == 2 and rates[2] > rates[1]
    assert calls[:2] == [1, 2] and calls[2:6] == [1, 2, 1, 2]  # one untimed each, then turns
    turns = (len(calls) - 2) // 2
    assert (turns - 1) * 0.0009 < threads.PROBE_SECONDS * 2 <= turns * 0.0009  # stopped once enough was timed
    cost.update({1: 0.5, 2: 0.9})  # slow decodes: PROBE_TOKENS turns, no more
    calls.clear()
    assert threads.probe_threads(decode_one, 1 << 20)[0] == 1 and len(calls) == 2 + 2 * threads.PROBE_TOKENS
