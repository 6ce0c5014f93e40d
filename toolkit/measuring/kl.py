"""How far a quantized model's next-token distributions are from a reference's, in the statistics the
field reads: those ``llama-perplexity --kl-divergence`` prints, with the same formulas, so that the
two can be held side by side (``benchmarks/engine_parity.py`` does).

Per scored token i (N in all), with the reference B, the candidate Q and the true next token t_i:

    nllQ_i = -log pQ_i[t_i]        nllB_i = -log pB_i[t_i]
    KLD_i  = sum_v pB_i[v] (log pB_i[v] - log pQ_i[v]),  over the v with log pB_i[v] > -16 (as llama.cpp)
    dp_i   = pQ_i[t_i] - pB_i[t_i]
    same_i = [argmax pQ_i == argmax pB_i]

    mean ± standard error: se(x) = sqrt((mean(x^2) - mean(x)^2) / (N - 1))
    PPL(Q)/PPL(B) = exp(mean(nllQ) - mean(nllB)) ± that x sqrt(se(nllQ)^2 + se(nllB)^2 - 2 cov(nllQ, nllB))
    same top-1 = n_same / N ± sqrt(p (1 - p) / (N - 1))          (binomial)
    percentiles: linear interpolation between sorted values (llama.cpp's rule)

The reference is kept as llama.cpp keeps it: per row, log-probs within 16 nats of the row's maximum on
a 65535-step grid (2 bytes per vocabulary entry), everything lower at the floor. :func:`quantize`
and :func:`dequantize` do that; the statistics use the dequantized reference, as llama.cpp does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from toolkit.errors import ToolkitError

FLOOR_NATS = 16.0  # llama-perplexity keeps base log-probs within 16 nats of each row's maximum
KLD_CUTOFF = -16.0  # and sums the KL divergence over the tokens whose base log-prob is above this
KLD_PERCENTILES = (("max", 1.0), ("p99.9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.9), ("median", 0.5),
                   ("p10", 0.1), ("p5", 0.05), ("p1", 0.01), ("p0.1", 0.001), ("min", 0.0))
DP_PERCENTILES = (("max", 1.0), ("p99.9", 0.999), ("p99", 0.99), ("p95", 0.95), ("p90", 0.9), ("p75", 0.75),
                  ("median", 0.5), ("p25", 0.25), ("p10", 0.1), ("p5", 0.05), ("p1", 0.01), ("p0.1", 0.001),
                  ("min", 0.0))


@dataclass
class Quantized:
    """A [rows, vocab] block of log-probs as llama.cpp stores a KL base: uint16 codes and, per row,
    ``log p = scale * code + low``."""

    codes: np.ndarray
    scale: np.ndarray
    low: np.ndarray


def quantize(logprobs: np.ndarray) -> Quantized:
    """Log-probs [rows, vocab] to llama.cpp's 2-byte base format (see the module docstring)."""
    lp = np.asarray(logprobs, dtype=np.float32)
    top = lp.max(axis=1)
    low = np.maximum(lp.min(axis=1), top - FLOOR_NATS)
    scale = (top - low) / 65535.0
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    codes = np.where(lp > low[:, None], np.rint((lp - low[:, None]) / safe), 0.0)
    return Quantized(np.clip(codes, 0, 65535).astype(np.uint16), scale.astype(np.float32), low.astype(np.float32))


def dequantize(q: Quantized) -> np.ndarray:
    return (q.scale[:, None] * q.codes.astype(np.float32) + q.low[:, None]).astype(np.float32)


@dataclass
class TokenStats:
    """Per-token figures of a candidate against a reference on the same tokens."""

    nll_q: np.ndarray
    nll_b: np.ndarray
    kld: np.ndarray
    dp: np.ndarray
    same: np.ndarray

    @classmethod
    def of(cls, candidate: np.ndarray, reference: np.ndarray, targets: Sequence[int]) -> "TokenStats":
        """From log-probs [n, vocab] of the candidate and of the (dequantized) reference, and the n
        tokens that actually came next."""
        q = np.asarray(candidate, dtype=np.float64)
        b = np.asarray(reference, dtype=np.float64)
        if q.shape != b.shape:
            raise ToolkitError(f"reference and candidate log-probs differ in shape {b.shape} vs {q.shape}: they must "
                               "come from the same token windows and vocabulary")
        t = np.asarray(targets, dtype=np.int64)
        rows = np.arange(len(t))
        nll_q, nll_b = -q[rows, t], -b[rows, t]
        terms = np.where(b > KLD_CUTOFF, np.exp(b) * (b - q), 0.0)
        return cls(nll_q, nll_b, terms.sum(axis=1), np.exp(-nll_q) - np.exp(-nll_b),
                   q.argmax(axis=1) == b.argmax(axis=1))

    @classmethod
    def concat(cls, parts: Sequence["TokenStats"]) -> "TokenStats":
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("nll_q", "nll_b", "kld", "dp", "same")))


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error (0 for 10 values or fewer, as llama.cpp)."""
    n = x.size
    mean = float(x.mean())
    var = float((x * x).mean()) - mean * mean
    return mean, (math.sqrt(var / (n - 1)) if var > 0 and n > 10 else 0.0)


def percentile(sorted_values: np.ndarray, f: float) -> float:
    """llama.cpp's percentile: linear interpolation between neighbours of the sorted values (the median
    of an even count is the mean of the two middle values)."""
    n = sorted_values.size
    if f == 0.5:
        return float(0.5 * (sorted_values[n // 2] + sorted_values[n // 2 - 1]) if n % 2 == 0 else sorted_values[n // 2])
    p = min(max(f, 0.0), 1.0) * (n - 1)
    j = int(p)
    w = p - j
    return float((1 - w) * sorted_values[j] + w * sorted_values[min(j + 1, n - 1)])


@dataclass
class KLSummary:
    """Every statistic of :mod:`toolkit.measuring.kl` over N tokens. Δp figures are fractions (llama.cpp
    prints them as percentages); ``same_top1`` likewise."""

    tokens: int
    ppl_q: float
    ppl_q_err: float
    ppl_base: float
    ppl_base_err: float
    ln_ppl_ratio: float
    ln_ppl_ratio_err: float
    ppl_ratio: float
    ppl_ratio_err: float
    ppl_diff: float
    ppl_diff_err: float
    cor_ln_ppl: float
    kld_mean: float
    kld_err: float
    dp_mean: float
    dp_err: float
    dp_rms: float
    dp_rms_err: float
    same_top1: float
    same_top1_err: float
    kld_percentiles: dict[str, float] = field(default_factory=dict)
    dp_percentiles: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, s: TokenStats) -> "KLSummary":
        n = s.nll_q.size
        mq, sq = mean_se(s.nll_q)
        mb, sb = mean_se(s.nll_b)
        cov = (float((s.nll_q * s.nll_b).mean()) - mq * mb) / (n - 1) if n >= 10 else 0.0
        pq, pb = math.exp(mq), math.exp(mb)
        lr, lr_err = mq - mb, math.sqrt(max(sq * sq + sb * sb - 2 * cov, 0.0))
        kld, kld_err = mean_se(s.kld)
        dp, dp_err = mean_se(s.dp)
        msq, msq_err = mean_se(s.dp * s.dp)
        rms = math.sqrt(msq)
        same = float(s.same.mean())
        kld_sorted, dp_sorted = np.sort(s.kld), np.sort(s.dp)
        return cls(
            tokens=n, ppl_q=pq, ppl_q_err=pq * sq, ppl_base=pb, ppl_base_err=pb * sb,
            ln_ppl_ratio=lr, ln_ppl_ratio_err=lr_err, ppl_ratio=math.exp(lr), ppl_ratio_err=math.exp(lr) * lr_err,
            ppl_diff=pq - pb, ppl_diff_err=math.sqrt(max((pq * sq) ** 2 + (pb * sb) ** 2 - 2 * pq * pb * cov, 0.0)),
            cor_ln_ppl=cov / (sq * sb) if sq and sb else float("nan"),
            kld_mean=max(kld, 0.0), kld_err=kld_err, dp_mean=dp, dp_err=dp_err, dp_rms=rms,
            dp_rms_err=0.5 / rms * msq_err if rms else 0.0,
            same_top1=same, same_top1_err=math.sqrt(same * (1 - same) / (n - 1)) if n > 1 else 0.0,
            kld_percentiles={k: percentile(kld_sorted, f) for k, f in KLD_PERCENTILES},
            dp_percentiles={k: percentile(dp_sorted, f) for k, f in DP_PERCENTILES})

    def to_dict(self) -> dict:
        return asdict(self)
