"""Quality of a loaded model: perplexity on held-out text, and KL divergence and top-1 agreement of
its next-token distributions against a reference (usually the full-precision model) on the same
tokens. Every backend's ``logprobs`` feeds the same formulas, so variants compare fairly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

DEFAULT_SEQ = 256
DEFAULT_WINDOWS = 16


def heldout_text() -> str:
    """The bundled held-out text: standard-library source files the tiny model never trained on."""
    from toolkit.tiny import HELDOUT

    return HELDOUT.read_text(encoding="utf-8")


def token_windows(loaded: Any, text: str | Path | None = None, *, seq_len: int = DEFAULT_SEQ,
                  windows: int = DEFAULT_WINDOWS) -> list[list[int]]:
    """Cut a text (a string, a file path, or the bundled held-out text) into ``windows``
    non-overlapping windows of ``seq_len`` token ids, tokenised by ``loaded`` and spread evenly over
    the whole text (so a short sample still represents all of it)."""

    if isinstance(text, Path) or (isinstance(text, str) and len(text) < 4096 and "\n" not in text
                                  and Path(text).is_file()):
        text = Path(text).read_text(encoding="utf-8")
    ids = loaded.encode(text if text is not None else heldout_text())
    return spread_windows(ids, seq_len, windows)


def spread_windows(ids: Sequence[int], seq_len: int, windows: int) -> list[list[int]]:
    """``windows`` non-overlapping slices of ``seq_len`` ids, evenly spaced over ``ids``."""
    from toolkit.errors import InvalidSpec

    slots = len(ids) // seq_len
    if slots < 1:
        raise InvalidSpec(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}: "
                          "pass a longer text or a smaller seq_len")
    n = min(windows, slots)
    starts = [(i * slots // n) * seq_len for i in range(n)]
    return [list(ids[s:s + seq_len]) for s in starts]


@dataclass
class Quality:
    """Quality figures on ``tokens`` scored positions."""

    perplexity: float
    nll: float
    tokens: int
    kl_divergence: float | None = None
    top1_agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def perplexity_from(logprobs: Sequence[np.ndarray], windows: Sequence[Sequence[int]]) -> tuple[float, float, int]:
    """(perplexity, mean negative log-likelihood, scored tokens) of the actual next tokens."""
    total, count = 0.0, 0
    for lp, ids in zip(logprobs, windows):
        targets = np.asarray(ids[1:], dtype=np.int64)
        total -= float(lp[np.arange(len(targets)), targets].astype(np.float64).sum())
        count += len(targets)
    nll = total / count
    return math.exp(nll), nll, count


def kl_and_top1(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> tuple[float, float]:
    """Mean KL(reference || candidate) per position (nats) and top-1 agreement."""
    kl_sum, agree, count = 0.0, 0, 0
    for ref, cand in zip(reference, candidate):
        if ref.shape != cand.shape:
            from toolkit.errors import ToolkitError

            raise ToolkitError(f"reference and candidate log-probs differ in shape {ref.shape} vs {cand.shape}: "
                               "they must come from the same token windows and vocabulary")
        ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
        kl_sum += float((np.exp(ref64) * (ref64 - cand64)).sum())
        agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        count += ref.shape[0]
    return max(kl_sum / count, 0.0), agree / count


def evaluate(loaded: Any, windows: Sequence[Sequence[int]], reference: Sequence[np.ndarray] | None = None,
             *, return_logprobs: bool = False) -> Quality | tuple[Quality, list[np.ndarray]]:
    """Score ``loaded`` on fixed token windows; with a reference, add KL and top-1 agreement."""
    logprobs = loaded.logprobs(windows)
    ppl, nll, count = perplexity_from(logprobs, windows)
    quality = Quality(ppl, nll, count)
    if reference is not None:
        quality.kl_divergence, quality.top1_agreement = kl_and_top1(reference, logprobs)
    return (quality, logprobs) if return_logprobs else quality


def perplexity(loaded: Any, text: str | Path | None = None, *, seq_len: int = DEFAULT_SEQ,
               windows: int = DEFAULT_WINDOWS) -> float:
    """Perplexity of ``loaded`` on a text (default: the bundled held-out text)."""
    result = evaluate(loaded, token_windows(loaded, text, seq_len=seq_len, windows=windows))
    assert isinstance(result, Quality)
    return result.perplexity
