"""How many CPU threads a backend runs a model with.

Asked for (``n_threads=``): that many. Otherwise a short probe at load time decodes a few tokens
with one thread and with every core this process may use, and keeps the faster: whether more
threads help depends on the model's size and on what else the machine is running (measured here: on
the 6M-parameter tiny model with the other core busy, 1 thread gave 113 tok/s and 2 gave 2.3; on
SmolLM2-135M on an idle machine, llama-bench tg64 gave 54 tok/s on 1 thread and 98 on 2), and a
rule of thumb on weights alone got the second case wrong. Models of ``PROBE_MAX_BYTES`` and more
take every core without a probe: there the weights' bandwidth dominates and more threads help.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

from toolkit.facts.process import cpu_count

PROBE_MAX_BYTES = 2 * 2**30
PROBE_TOKENS = 4  # turns at least (a turn: one timed single-token decode per candidate)
# and turns until the timed decodes add up to PROBE_SECONDS a candidate, at most PROBE_MAX_TOKENS: 4 tokens of
# the tiny model take 1 ms, less than this shared host's jitter. With 4 tokens and no turns, one 7-round
# engine_parity run (2026-12-06) saw the probe keep 1 thread in 4 rounds, in one of which 2 threads were 1.24x
# faster (llama-bench's tg64 in the same round).
PROBE_SECONDS = 0.04
PROBE_MAX_TOKENS = 256


def probe_threads(decode_one: Callable[[int], None], weights_bytes: int,
                  candidates: tuple[int, ...] | None = None) -> tuple[int, dict[int, float]]:
    """The thread count whose decoding is fastest, and the tokens/s measured for each (the median decode).

    ``decode_one(n)`` sets ``n`` threads and decodes one token. Each candidate gets one untimed call, then
    the candidates take turns (so that the host's drift falls on all of them), at least ``PROBE_TOKENS``
    turns and until the timed decodes add up to ``PROBE_SECONDS`` a candidate, at most
    ``PROBE_MAX_TOKENS`` turns. Single-core machines and large models skip the probe.
    """
    cores = cpu_count()
    if cores <= 1 or weights_bytes >= PROBE_MAX_BYTES:
        return cores, {}
    names = candidates or (1, cores)
    times: dict[int, list[float]] = {n: [] for n in names}
    for n in names:
        decode_one(n)

    spent, rounds = 0.0, 0
    while rounds < PROBE_MAX_TOKENS and (rounds < PROBE_TOKENS or spent < PROBE_SECONDS * len(names)):
        rounds += 1
        for n in names:
            start = time.perf_counter()
            decode_one(n)
            times[n].append(time.perf_counter() - start)
            spent += times[n][-1]
    rates = {n: 1.0 / max(statistics.median(times[n]), 1e-9) for n in names}
    return max(rates, key=lambda n: (rates[n], n)), rates


def default_threads(weights_bytes: int, requested: int | None = None) -> int:
    """CPU threads when no probe can run: ``requested`` if given, else every core this process may use."""
    return int(requested) if requested else cpu_count()
