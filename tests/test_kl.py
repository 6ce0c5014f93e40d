"""The KL statistics (toolkit.measuring.kl) on arrays whose answers are known, and the compact
reference store (toolkit.measuring.reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from toolkit.measuring.kl import KLSummary, TokenStats, dequantize, percentile, quantize
from toolkit.measuring.reference import Reference


def _logsoftmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_quantized_base_keeps_the_top_16_nats_within_the_grid():
    rng = np.random.default_rng(0)
    lp = _logsoftmax(rng.normal(size=(50, 300)) * 5)
    back = dequantize(quantize(lp))
    top = lp.max(axis=1, keepdims=True)
    kept = lp > top - 16
    step = 16 / 65535
    assert np.abs(back - lp)[kept].max() <= step  # on the grid within 16 nats of the maximum
    floor = np.broadcast_to(top - 16, lp.shape)
    assert np.allclose(back[~kept], floor[~kept], atol=1e-4)  # the rest at the floor


def test_identical_distributions_give_zero_kld_and_full_agreement():
    rng = np.random.default_rng(1)
    lp = _logsoftmax(rng.normal(size=(100, 64)))
    targets = rng.integers(0, 64, size=100)
    s = KLSummary.of(TokenStats.of(lp, lp, targets))
    assert s.kld_mean == pytest.approx(0, abs=1e-12) and s.same_top1 == 1.0 and s.same_top1_err == 0
    assert s.ppl_ratio == pytest.approx(1.0) and s.ln_ppl_ratio_err == pytest.approx(0, abs=1e-9)
    assert s.dp_mean == 0 and s.dp_rms == 0


def test_kld_of_two_known_distributions():
    p = np.log(np.array([[0.5, 0.25, 0.25]] * 20))
    q = np.log(np.array([[0.25, 0.5, 0.25]] * 20))
    s = KLSummary.of(TokenStats.of(q, p, [0] * 20))
    assert s.kld_mean == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5))  # = 0.25 ln 2
    assert s.dp_mean == pytest.approx(-0.25) and s.same_top1 == 0.0
    assert s.ppl_ratio == pytest.approx(2.0)  # the true token's probability halved


def test_percentiles_interpolate_like_llama_cpp():
    v = np.arange(11, dtype=float)
    assert percentile(v, 0.99) == pytest.approx(9.9) and percentile(v, 0.0) == 0 and percentile(v, 1.0) == 10
    assert percentile(np.arange(10, dtype=float), 0.5) == 4.5  # even count: the mean of the middle two


def test_standard_errors_follow_the_sample_variance():
    rng = np.random.default_rng(2)
    q = _logsoftmax(rng.normal(size=(400, 32)))
    b = _logsoftmax(rng.normal(size=(400, 32)))
    stats = TokenStats.of(q, b, rng.integers(0, 32, size=400))
    s = KLSummary.of(stats)
    assert s.kld_err == pytest.approx(stats.kld.std(ddof=0) / math.sqrt(399), rel=1e-9)
    p = stats.same.mean()
    assert s.same_top1_err == pytest.approx(math.sqrt(p * (1 - p) / 399))


def test_reference_round_trip_and_window_check(tmp_path):
    rng = np.random.default_rng(3)
    windows = [list(range(10)), list(range(10, 20))]
    lps = [_logsoftmax(rng.normal(size=(9, 50))) for _ in windows]
    path = Reference.of(windows, lps).save(tmp_path / "ref.npz")
    ref = Reference.load(path, windows)
    assert ref is not None and ref.windows == windows and ref.nbytes() < sum(lp.nbytes for lp in lps)
    assert all(np.abs(a - b).max() < 1e-3 for a, b in zip(ref.logprobs(), lps))
    assert Reference.load(path, [list(range(1, 11)), list(range(10, 20))]) is None  # other windows
    assert Reference.load(tmp_path / "missing.npz") is None
