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
PROBE_TOKENS = 4


def probe_threads(decode_one: Callable[[int], None], weights_bytes: int,
                  candidates: tuple[int, ...] | None = None) -> tuple[int, dict[int, float]]:
    """The thread count whose decoding is fastest, and the tokens/s measured for each.

    ``decode_one(n)`` sets ``n`` threads and decodes one token; it is called ``PROBE_TOKENS`` times
    per candidate (after one untimed call). Single-core machines and large models skip the probe.
    """
    cores = cpu_count()
    if cores <= 1 or weights_bytes >= PROBE_MAX_BYTES:
        return cores, {}
    rates: dict[int, float] = {}
    for n in candidates or (1, cores):
        decode_one(n)
        times = []
        for _ in range(PROBE_TOKENS):
            start = time.perf_counter()
            decode_one(n)
            times.append(time.perf_counter() - start)
        rates[n] = 1.0 / max(statistics.median(times), 1e-9)
    return max(rates, key=lambda n: (rates[n], n)), rates


def default_threads(weights_bytes: int, requested: int | None = None) -> int:
    """CPU threads when no probe can run: ``requested`` if given, else every core this process may use."""
    return int(requested) if requested else cpu_count()
