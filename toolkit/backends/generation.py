"""The values every backend's generation speaks: what to generate (``GenerationConfig``), each
streamed step (``Chunk``), a finished generation (``GenerationResult``), and the small pure helpers
that make every backend stop, finish and score the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence, Union

import numpy as np

from toolkit.errors import InvalidSpec

Messages = list[dict[str, str]]
Prompt = Union[str, Messages, Sequence[int]]


FINISH_REASONS = ("stop", "length", "eos")


@dataclass
class GenerationConfig:
    """How to generate. Greedy by default (temperature 0), so results are reproducible.

    Attributes:
        max_tokens: Upper bound on generated tokens.
        temperature: 0 means greedy decoding.
        top_p: Nucleus sampling mass, used when temperature > 0.
        stop: Strings that end generation; the stop string itself is not returned.
        seed: Sampling seed (ignored when greedy).
        system_prompt: Prepended as a system message when the prompt is a chat.
        ignore_eos: Keep generating past end-of-sequence (benchmarks use this for fixed lengths).
    """

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    system_prompt: str | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidSpec(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise InvalidSpec(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidSpec(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)


@dataclass
class Chunk:
    """One step of a stream: the new text and token ids, with running counts and timings."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    generated_tokens: int
    elapsed_s: float
    ttft_s: float
    tokens_per_s: float
    finish_reason: str | None = None


@dataclass
class GenerationResult:
    """A finished generation with its timings.

    ``prefill_tok_s`` is prompt tokens over time-to-first-token; ``decode_tok_s`` counts the tokens
    after the first over the time after the first.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    ttft_s: float
    total_s: float
    batch_size: int = 1  # sequences decoded together with this one

    @property
    def decode_tok_s(self) -> float:
        decode_time = self.total_s - self.ttft_s
        return (self.completion_tokens - 1) / decode_time if self.completion_tokens > 1 and decode_time > 0 else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(decode_tok_s=self.decode_tok_s, prefill_tok_s=self.prefill_tok_s)
        return d

    def _repr_markdown_(self) -> str:
        return (f"{self.text}\n\n*{self.prompt_tokens} prompt + {self.completion_tokens} new tokens, "
                f"{self.finish_reason}; TTFT {self.ttft_s*1000:.0f} ms, {self.decode_tok_s:.1f} tok/s*")


def merge_config(config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    """``config`` with keyword overrides (``max_tokens=8``...), or a new config of them."""
    if config is None:
        return GenerationConfig(**options)
    if options:
        return replace(config, **options)
    return config


def finish_reason(stopped: bool, hit_eos: bool, generated: int, config: GenerationConfig) -> str | None:
    """Why a generation ends after this token, or None: a stop string, then EOS (unless ignored),
    then ``max_tokens``."""
    if stopped:
        return "stop"
    if hit_eos and not config.ignore_eos:
        return "eos"
    if generated >= config.max_tokens:
        return "length"
    return None


def find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the first stop string starts in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def by_prefix(sequences: Sequence[Sequence[int]], score: Any) -> list[np.ndarray]:
    """Score each distinct sequence once, longest first: one that is a prefix of a sequence already
    scored gets a slice of that result. ``score(seq)`` returns its (len-1, vocab) log-probs."""
    results: dict[tuple[int, ...], np.ndarray] = {}
    seqs = [tuple(int(t) for t in s) for s in sequences]
    for seq in sorted(set(seqs), key=len, reverse=True):
        longer = next((k for k in results if len(k) >= len(seq) and k[: len(seq)] == seq), None)
        results[seq] = results[longer][: len(seq) - 1] if longer is not None else score(seq)
    return [results[s] for s in seqs]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float32."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
