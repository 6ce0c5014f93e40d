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

from toolkit.data import heldout_text
from toolkit.errors import InvalidSpec, ToolkitError
from toolkit.measuring.kl import KLSummary, TokenStats

DEFAULT_SEQ = 256
DEFAULT_WINDOWS = 16


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
    slots = len(ids) // seq_len
    if slots < 1:
        raise InvalidSpec(f"the text has {len(ids)} tokens, fewer than one window of {seq_len}: "
                          "pass a longer text or a smaller seq_len")
    n = min(windows, slots)
    starts = [(i * slots // n) * seq_len for i in range(n)]
    return [list(ids[s:s + seq_len]) for s in starts]


@dataclass
class Quality:
    """Quality figures on ``tokens`` scored positions. Against a reference, ``kl_divergence`` and
    ``top1_agreement`` are means with their standard errors beside them, and ``kl`` holds every
    statistic of :class:`toolkit.measuring.kl.KLSummary` (percentiles, Δp, the perplexity ratio)."""

    perplexity: float
    nll: float
    tokens: int
    kl_divergence: float | None = None
    kl_divergence_err: float | None = None
    top1_agreement: float | None = None
    top1_agreement_err: float | None = None
    ppl_ratio: float | None = None
    ppl_ratio_err: float | None = None
    kl: dict[str, Any] | None = None

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


def compare_to(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
               windows: Sequence[Sequence[int]]) -> KLSummary:
    """The KL statistics of a candidate's log-probs against a reference's on the same windows."""
    if len(reference) != len(candidate):
        raise ToolkitError(f"the reference has {len(reference)} windows, the candidate {len(candidate)}: they must "
                           "be scored on the same token windows")
    parts = [TokenStats.of(cand, ref, ids[1:]) for ref, cand, ids in zip(reference, candidate, windows)]
    return KLSummary.of(TokenStats.concat(parts))


def score(loaded: Any, windows: Sequence[Sequence[int]], reference: Sequence[np.ndarray] | None = None
          ) -> tuple[Quality, list[np.ndarray]]:
    """Score ``loaded`` on fixed token windows: its quality (with the KL statistics against a
    reference's log-probs, when given) and the log-probs it gave, for use as a reference."""
    logprobs = loaded.logprobs(windows)
    ppl, nll, count = perplexity_from(logprobs, windows)
    quality = Quality(ppl, nll, count)
    if reference is not None:
        kl = compare_to(reference, logprobs, windows)
        quality.kl_divergence, quality.kl_divergence_err = kl.kld_mean, kl.kld_err
        quality.top1_agreement, quality.top1_agreement_err = kl.same_top1, kl.same_top1_err
        quality.ppl_ratio, quality.ppl_ratio_err = kl.ppl_ratio, kl.ppl_ratio_err
        quality.kl = kl.to_dict()
    return quality, logprobs


def evaluate(loaded: Any, windows: Sequence[Sequence[int]], reference: Sequence[np.ndarray] | None = None) -> Quality:
    """Score ``loaded`` on fixed token windows; with a reference, add KL and top-1 agreement."""
    return score(loaded, windows, reference)[0]


def perplexity(loaded: Any, text: str | Path | None = None, *, seq_len: int = DEFAULT_SEQ,
               windows: int = DEFAULT_WINDOWS) -> float:
    """Perplexity of ``loaded`` on a text (default: the bundled held-out text)."""
    return evaluate(loaded, token_windows(loaded, text, seq_len=seq_len, windows=windows)).perplexity


# --- llama-perplexity's protocol ---------------------------------------------------------------------
#
# llama.cpp's `llama-perplexity -f FILE -c N_CTX [--chunks K]` (tools/perplexity/perplexity.cpp,
# perplexity()): the file with one trailing newline removed is tokenized whole, BOS added at its start
# when the vocabulary says so; it is cut into consecutive chunks of N_CTX tokens from the start (the
# tail that fills no chunk is dropped; at least 2 chunks' worth of tokens are needed); each chunk is
# evaluated on a fresh context with its first token *replaced* by BOS (when the vocabulary adds BOS),
# and only the second half is scored: the logits at positions N_CTX/2 .. N_CTX-2 against the tokens at
# N_CTX/2+1 .. N_CTX-1, so every scored token has at least N_CTX/2 tokens of context.

PROTOCOLS = ("toolkit", "llama.cpp")


def llamacpp_protocol_windows(ids: Sequence[int], n_ctx: int, chunks: int | None = None,
                              bos_id: int | None = None) -> list[list[int]]:
    """llama-perplexity's chunks of a whole text's token ids: consecutive ``n_ctx``-token windows from
    the start (at most ``chunks``), each one's first token replaced by ``bos_id`` when given."""
    if n_ctx < 4:
        raise InvalidSpec(f"--ctx {n_ctx} is too small: the protocol scores the second half of each chunk")
    if len(ids) < 2 * n_ctx:
        raise InvalidSpec(f"the text has {len(ids)} tokens; llama-perplexity's protocol needs at least 2 x ctx = "
                          f"{2 * n_ctx}: pass a longer text or a smaller --ctx")
    n = len(ids) // n_ctx
    if chunks is not None:
        if chunks < 1:
            raise InvalidSpec(f"--chunks must be at least 1, got {chunks}")
        n = min(n, chunks)
    out = []
    for k in range(n):
        window = [int(i) for i in ids[k * n_ctx:(k + 1) * n_ctx]]
        if bos_id is not None:
            window[0] = int(bos_id)
        out.append(window)
    return out


def llamacpp_first_scored(n_ctx: int) -> int:
    """Index of the first log-prob row llama-perplexity scores in an ``n_ctx`` chunk (row j predicts token j+1)."""
    return n_ctx // 2


def token_nlls(loaded: Any, windows: Sequence[Sequence[int]], first_row: int = 0) -> np.ndarray:
    """Negative log-likelihood of each scored next token (float64), one window at a time (full-vocabulary
    log-probs of a whole sweep at once would not fit for large vocabularies): rows ``first_row`` onwards
    of each window, row j predicting token j+1."""
    parts = []
    for ids in windows:
        lp = loaded.logprobs([list(ids)])[0]
        targets = np.asarray(ids[first_row + 1:], dtype=np.int64)
        rows = np.arange(first_row, first_row + len(targets))
        parts.append(-lp[rows, targets].astype(np.float64))
    return np.concatenate(parts) if parts else np.zeros(0)


def added_bos(loaded: Any) -> int | None:
    """The token id ``loaded.encode`` puts before every text (a BOS), or None when it adds none: two
    one-letter texts that start with the same id start with an added token."""
    a, b = loaded.encode("a"), loaded.encode("Z")
    return int(a[0]) if len(a) > 1 and len(b) > 1 and a[0] == b[0] else None


@dataclass
class PerplexityResult:
    """A perplexity measured by one protocol.

    Attributes:
        perplexity: exp(mean NLL) over the scored tokens.
        nll: Mean negative log-likelihood (nats/token).
        tokens: Scored tokens.
        protocol: ``toolkit`` (windows spread over the text, every next token scored) or ``llama.cpp``.
        ctx: Tokens per window/chunk.
        chunks: Windows/chunks evaluated.
        text_tokens: Tokens of the whole text.
        uncertainty: llama-perplexity's ± (perplexity × the standard error of the mean NLL).
        bos_id: The BOS id put first in each chunk (llama.cpp protocol), or None.
    """

    perplexity: float
    nll: float
    tokens: int
    protocol: str
    ctx: int
    chunks: int
    text_tokens: int
    uncertainty: float
    bos_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def protocol_perplexity(loaded: Any, text: str | Path | None = None, *, protocol: str = "toolkit",
                        ctx: int | None = None, chunks: int | None = None) -> PerplexityResult:
    """Perplexity of ``loaded`` by ``protocol``.

    Args:
        loaded: Any loaded model (its ``encode`` and ``logprobs`` are used).
        text: A string, a file path, or None for the bundled held-out text. With the ``llama.cpp``
            protocol, one trailing newline of a file is removed, as ``llama-perplexity -f`` does.
        protocol: ``toolkit`` (``ctx`` default 256, ``chunks`` default 16 windows spread evenly over the
            text, every next token scored) or ``llama.cpp`` (``ctx`` default 512, consecutive chunks from
            the start, all that fit unless ``chunks``, the second half of each scored; see above).
        ctx, chunks: Window length and count.

    Note: the text is tokenized by ``loaded.encode``, which parses special-token text such as
    ``<|im_end|>`` (llama-perplexity does not); the bundled texts contain none.
    """
    if protocol not in PROTOCOLS:
        raise InvalidSpec(f"unknown perplexity protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    from_file = isinstance(text, Path) or (isinstance(text, str) and len(text) < 4096 and "\n" not in text
                                           and Path(text).is_file())
    if from_file:
        text = Path(text).read_text(encoding="utf-8")  # type: ignore[arg-type]
        if protocol == "llama.cpp" and text.endswith("\n"):
            text = text[:-1]
    ids = loaded.encode(text if text is not None else heldout_text())
    bos = None
    if protocol == "llama.cpp":
        n_ctx = ctx or 512
        bos = added_bos(loaded)
        windows = llamacpp_protocol_windows(ids, n_ctx, chunks, bos)
        first = llamacpp_first_scored(n_ctx)
    else:
        n_ctx = ctx or DEFAULT_SEQ
        windows = spread_windows(ids, n_ctx, chunks or DEFAULT_WINDOWS)
        first = 0
    nlls = token_nlls(loaded, windows, first)
    nll = float(nlls.mean())
    n = len(nlls)
    spread = math.sqrt(max(float((nlls ** 2).mean()) - nll ** 2, 0.0) / (n - 1)) if n > 1 else 0.0
    return PerplexityResult(perplexity=math.exp(nll), nll=nll, tokens=n, protocol=protocol, ctx=n_ctx,
                            chunks=len(windows), text_tokens=len(ids), uncertainty=math.exp(nll) * spread, bos_id=bos)
