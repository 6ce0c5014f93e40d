"""What the caller asked the planner for, and the context rules that apply when they did not say."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.planning.estimate import Candidate

# Never plan below this context unless the model's own maximum is smaller: 2048 tokens holds a
# typical chat turn and its answer (and is Llama-1/2-era models' training length).
MIN_CONTEXT = 2048
# Without --context, the plan takes the largest context that fits up to this cap (a long chat or a
# document of ~6,000 words); context="max" (--context max) lifts it to the model's maximum.
DEFAULT_CONTEXT = 8192

@dataclass
class Wishes:
    backend: str | None
    quantization: str | None
    dtype: str | None
    context: int | str | None
    batch: int
    kv_dtype: str | None
    nodes: int = 1

    @property
    def fixed(self) -> bool:
        """An exact context was asked for: the plan allocates it or refuses."""
        return isinstance(self.context, int)

    def wanted(self, c: Candidate) -> bool:
        return ((self.backend is None or c.backend == self.backend)
                and (self.quantization is None or c.quantization == self.quantization))
