"""Tokenizing for backends that hold a Hugging Face tokenizer (hf, mlx, vllm)."""

from __future__ import annotations

from typing import Any, Sequence

from toolkit.backends.generation import Messages
from toolkit.errors import InvalidSpec


class HFTokenizerMixin:
    """encode/decode/chat template for backends that hold a Hugging Face tokenizer (``self.tokenizer``)."""

    tokenizer: Any
    target: Any  # the LoadTarget; its path names the model in errors

    def encode(self, text: str) -> list[int]:
        # verbose=False: a text longer than model_max_length is fine here (windows and prompts are cut and
        # checked against the loaded context later); transformers would warn about it on every call
        return list(self.tokenizer.encode(text, verbose=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def apply_chat_template(self, messages: Messages) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidSpec(f"{self.target.path.name} has no chat template: pass a plain string prompt")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(text, add_special_tokens=False))
