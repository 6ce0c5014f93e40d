"""A backend that exists only for tests/test_registry.py: registering it takes one record in
toolkit.capabilities and this one module. It runs no model: its "model" repeats the prompt's bytes,
which is all a registry test needs."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig, Messages

VOCAB = 257  # byte values + 1, and an end-of-sequence id


class DummyLoaded(Loaded):
    backend = "dummy"

    @property
    def vocab_size(self) -> int:
        return VOCAB

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - 1 for i in ids if 0 < i < VOCAB).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Messages) -> list[int]:
        return self.encode("".join(m["content"] for m in messages))

    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        for i in range(config.max_tokens):
            token = prompt_ids[i % len(prompt_ids)]
            yield [token], self.decode([token]), False

    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return [np.full((len(s) - 1, VOCAB), -np.log(VOCAB), dtype=np.float32) for s in sequences]

    def _unload(self) -> None:
        pass


def load(target: LoadTarget) -> DummyLoaded:
    return DummyLoaded(target)
