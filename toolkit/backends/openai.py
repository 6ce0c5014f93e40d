"""OpenAI-compatible servers (vLLM serve, llama.cpp's server, llama-cpp-python's server, Ollama, SGLang),
with the standard library only: ``urllib.request`` and a small server-sent-events reader.

``target.path`` is the model name the server knows. The base URL comes from ``options["base_url"]``,
else ``$OPENAI_BASE_URL``, else ``http://127.0.0.1:8000/v1``; the API key from ``options["api_key"]``
or ``$OPENAI_API_KEY``. The key is sent as a bearer token and appears in no repr, log or error.

What depends on the server:

* The server tokenises. ``encode``/``decode`` use its tokenize endpoints where it has them
  (``/tokenize`` + ``/detokenize`` on vLLM and llama.cpp's server, ``/extras/tokenize`` on
  llama-cpp-python's); otherwise they raise ToolkitError.
* Streamed token ids: servers that send them (vLLM with ``return_token_ids``, llama.cpp's
  ``tokens``) give real ids; others (llama-cpp-python) send one chunk per token without its id, so
  the chunk carries ``-1`` and :meth:`generate` re-tokenises the finished text when the count agrees.
* Stop strings are applied here, not sent, so that "stop" and "eos" are told apart the same way
  as on every other backend (a server's ``finish_reason: "stop"`` covers both).
* ``logprobs`` uses ``echo`` + ``logprobs`` on ``/v1/completions``: servers return only the top-k
  entries per position (``options["top_logprobs"]``, default 20), so each row holds those entries
  renormalised to sum to 1 and ``-inf`` elsewhere. A server that cannot echo raises ToolkitError.
* :meth:`OpenAILoaded.timed_request` sends one streaming request outside the model's lock (so a load
  test can keep many in flight from threads), reads it to the end of the stream and returns when
  each chunk arrived and what the server counted (``usage``, where it streams it: vLLM does,
  llama-cpp-python does not). With ``ignore_eos`` it also sends ``min_tokens = max_tokens``, which
  llama-cpp-python's server honours where it ignores ``ignore_eos``.
* LoRA adapters (``load_adapter`` / ``set_adapter``) use vLLM's ``/v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter`` (``vllm serve --enable-lora`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``)
  and send the active adapter's name as the request's model; other servers answer with an error.
"""

from __future__ import annotations

import copy
import http.client
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig, GenerationResult, Messages, Prompt, merge_config
from toolkit.backends.openai_http import ServerConnection, TimedRequest, _HTTPError, _Secret, record_events
from toolkit.errors import InvalidSpec, ToolkitError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
UNKNOWN_ID = -1
# (tokenize path, its request body builder, detokenize path, the detokenize response's text field)
TOKENIZERS = {
    "llama-cpp-python": ("/extras/tokenize", lambda m, t: {"model": m, "input": t}, "/extras/detokenize", "text"),
    "vllm/llama.cpp": ("/tokenize", lambda m, t: {"model": m, "prompt": t, "content": t}, "/detokenize", None),
}


class _Request(list):
    """Prompt token ids (when known) plus the original prompt, passed through ``_timed_stream``;
    ``len()`` is the prompt's token count, which the server may report only at the end."""

    def __init__(self, prompt: Prompt, ids: list[int] | None, count: int) -> None:
        super().__init__(ids or [])
        self.prompt = prompt
        self.count = count

    def __len__(self) -> int:
        return self.count


class OpenAILoaded(ServerConnection, Loaded):
    backend = "openai"
    native_batching = True  # concurrent requests, which a batching server (vLLM, SGLang) batches

    def __init__(self, target: LoadTarget, base_url: str, api_key: str | None, timeout: float) -> None:
        super().__init__(target)
        self.model_name = str(target.path)
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self._api_key = _Secret(api_key)
        self.timeout = timeout
        self._tokenizer: str | None = None  # which TOKENIZERS entry works, once probed
        self._vocab_size: int | None = target.options.vocab_size
        self._piece_ids: dict[str, int | None] = {}

    def __repr__(self) -> str:
        state = "unloaded" if self._closed else "loaded"
        return f"<OpenAILoaded {self.model_name!r} at {self.base_url} {state}>"

    # -- tokenizer --------------------------------------------------------------------------------
    def _tokenizer_kind(self) -> str:
        if self._tokenizer is None:
            for kind, (path, body, _, _) in TOKENIZERS.items():
                try:
                    self._post(path, body(self.model_name, "a"), root=True)
                except _HTTPError:
                    continue
                self._tokenizer = kind
                break
            else:
                self._tokenizer = ""
        if not self._tokenizer:
            raise ToolkitError(f"the server at {self.base_url} offers no tokenize endpoint (/tokenize or "
                               "/extras/tokenize), so token ids, id prompts and logprobs are unavailable: "
                               "pass text or chat prompts, or use a server that tokenises (vLLM, llama.cpp)")
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        self._check_open()
        path, body, _, _ = TOKENIZERS[self._tokenizer_kind()]
        return [int(t) for t in self._post(path, body(self.model_name, text), root=True)["tokens"]]

    def decode(self, ids: Sequence[int]) -> str:
        self._check_open()
        _, _, path, field = TOKENIZERS[self._tokenizer_kind()]
        out = self._post(path, {"model": self.model_name, "tokens": [int(i) for i in ids]}, root=True)
        return str(out[field] if field else out.get("prompt", out.get("content", "")))

    def apply_chat_template(self, messages: Messages) -> list[int]:
        self._check_open()
        if self._tokenizer_kind() == "vllm/llama.cpp":
            try:  # vLLM tokenizes chats itself
                out = self._post("/tokenize", {"model": self.model_name, "messages": messages,
                                               "add_generation_prompt": True}, root=True)
                return [int(t) for t in out["tokens"]]
            except (_HTTPError, KeyError):
                pass
            try:  # llama.cpp's server renders the template, then tokenizes
                prompt = self._post("/apply-template", {"messages": messages}, root=True)["prompt"]
                return self.encode(prompt)
            except (_HTTPError, KeyError):
                pass
        raise ToolkitError(f"the server at {self.base_url} does not expose its chat template: pass the messages "
                           "as the prompt (they go to /v1/chat/completions) rather than asking for their ids")

    @property
    def vocab_size(self) -> int:
        if self._vocab_size is None:
            raise ToolkitError("an OpenAI-compatible server does not report its vocabulary size: pass "
                               "the option vocab_size=N when loading")
        return int(self._vocab_size)

    # -- generation -------------------------------------------------------------------------------
    def stream(self, prompt: Prompt, config: GenerationConfig | None = None, **options: Any) -> Iterator[Any]:
        config = merge_config(config, options)
        self._check_open()
        request = self._request(prompt, config)
        with self._lock:
            yield from self._timed_stream(request, config)  # type: ignore[arg-type]

    def _request(self, prompt: Prompt, config: GenerationConfig) -> _Request:
        if isinstance(prompt, str):
            try:
                ids = self.encode(prompt)
            except ToolkitError:
                return _Request(prompt, None, 0)  # counted from the server's usage, if it reports it
            return _Request(prompt, ids, len(ids))
        if len(prompt) and isinstance(prompt[0], dict):
            messages = list(prompt)  # type: ignore[arg-type]
            if config.system_prompt and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": config.system_prompt}] + messages
            return _Request(messages, None, 0)
        ids = [int(t) for t in prompt]  # type: ignore[union-attr]
        return _Request(ids, ids, len(ids))

    def _body(self, config: GenerationConfig) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name, "stream": True, "max_tokens": config.max_tokens,
            "temperature": config.temperature, "top_p": config.top_p,
            "repeat_penalty": 1.0,  # llama.cpp servers default to 1.1, which changes greedy text
            "stream_options": {"include_usage": True}, "return_token_ids": True, "return_tokens": True,
        }
        if config.temperature > 0:
            body["top_k"] = 0  # llama.cpp servers default to 40 and min_p 0.05; plain temperature/top_p here
            body["min_p"] = 0.0
        if config.seed is not None:
            body["seed"] = config.seed
        if config.ignore_eos:
            body["ignore_eos"] = True  # vLLM and llama.cpp's server; others stop at EOS regardless
        return body

    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        request = prompt_ids if isinstance(prompt_ids, _Request) else _Request(list(prompt_ids), list(prompt_ids),
                                                                             len(prompt_ids))
        body = self._body(config)
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            path, body["messages"] = "/chat/completions", prompt
        else:
            path = "/completions"
            if isinstance(prompt, str):
                body["prompt"] = prompt
            elif self._tokenizer_kind() == "llama-cpp-python":
                body["prompt"] = self.decode(prompt)  # its server takes text prompts only
            else:
                body["prompt"] = prompt
        for event in self._events(path, body):
            usage = event.get("usage")
            if usage and usage.get("prompt_tokens") is not None:
                request.count = int(usage["prompt_tokens"])
            for choice in event.get("choices") or []:
                text = choice.get("text")
                if text is None:
                    text = (choice.get("delta") or {}).get("content") or ""
                ids = choice.get("token_ids") or event.get("tokens") or None
                finish = choice.get("finish_reason")
                if text or ids:
                    yield ([int(i) for i in ids] if ids else [UNKNOWN_ID]), text, False
                if finish == "stop":
                    # The server stopped by itself: EOS (stop strings are never sent to it).
                    yield [], "", True
                    return

    def generate(self, prompt: Prompt, config: GenerationConfig | None = None, **options: Any) -> GenerationResult:
        return self._fill_ids(super().generate(prompt, config, **options))

    def _fill_ids(self, result: GenerationResult) -> GenerationResult:
        """Replace the -1 placeholders by re-tokenising the text, when that gives as many tokens."""
        if UNKNOWN_ID in result.token_ids and result.text:
            try:
                ids = self.encode(result.text)
            except ToolkitError:
                return result
            if len(ids) == len(result.token_ids):
                result = replace(result, token_ids=ids)
        return result

    def generate_batch(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None,
                       **options: Any) -> list[GenerationResult]:
        """Send the prompts concurrently (``options["max_concurrency"]``, default 8), so a batching server
        (vLLM, llama.cpp's server with slots) batches them; one at a time to llama-cpp-python's server."""
        config = merge_config(config, options)
        self._check_open()
        workers = int(self.target.options.max_concurrency)
        try:
            if self._tokenizer_kind() == "llama-cpp-python":
                workers = 1  # its server runs one request at a time and, by default, a new one interrupts it
        except ToolkitError:
            pass
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(prompts)))) as pool:
            return list(pool.map(lambda p: self._generate_unlocked(p, config), prompts))

    def _generate_unlocked(self, prompt: Prompt, config: GenerationConfig) -> GenerationResult:
        parts, ids, last = [], [], None
        for chunk in self._timed_stream(self._request(prompt, config), config):  # type: ignore[arg-type]
            parts.append(chunk.text)
            ids.extend(chunk.token_ids)
            last = chunk
        if last is None:
            return GenerationResult("", [], 0, 0, "length", 0.0, 0.0)
        return self._fill_ids(GenerationResult("".join(parts), ids, last.prompt_tokens, last.generated_tokens,
                                               last.finish_reason or "length", last.ttft_s, last.elapsed_s))

    # -- load testing -------------------------------------------------------------------------------
    def with_timeout(self, seconds: float) -> "OpenAILoaded":
        """A copy of this connection whose every request (and each read of a stream) waits at most
        ``seconds``; it shares the server, model name and key."""
        clone = copy.copy(self)
        clone.timeout = float(seconds)
        return clone

    def timed_request(self, prompt: str, config: GenerationConfig, deadline_s: float | None = None) -> TimedRequest:
        """Send one streaming ``/v1/completions`` request for a text prompt, without the model's lock,
        and read it to the server's end of stream (so its usage, sent after the last token, is counted).

        Never raises for what the server does: an unreachable server, an HTTP error, a read that waits
        longer than ``self.timeout``, a stream cut short or one still running after ``deadline_s``
        seconds are returned as ``error``, with the chunks that came before.
        """
        self._check_open()
        body = self._body(config)
        body["prompt"] = prompt
        if config.ignore_eos:
            body["min_tokens"] = config.max_tokens  # llama-cpp-python's server: EOS masked until then
        record = TimedRequest(sent_at=time.perf_counter())
        try:
            response = self._open(self.base_url + "/completions", body)
            events = self._read_events(response)
            try:
                record_events(events, record, deadline_s)
            finally:
                events.close()
                response.close()  # closing early tells the server to stop generating
            if record.error is None and record.finish_reason is None:
                record.error = "the stream ended before the server finished the completion (connection closed?)"
        except (ToolkitError, OSError, ValueError, http.client.HTTPException) as exc:
            reason = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else str(exc) or type(exc).__name__
            record.error = reason if isinstance(exc, ToolkitError) else f"{type(exc).__name__}: {reason}"
        record.end_s = time.perf_counter() - record.sent_at
        return record

    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self._check_open()
        vocab = self.vocab_size
        k = int(self.target.options.top_logprobs)
        kind = self._tokenizer_kind()
        results: dict[tuple[int, ...], np.ndarray] = {}
        seqs = [tuple(int(t) for t in s) for s in sequences]
        for seq in sorted(set(seqs), key=len, reverse=True):
            longer = next((s for s in results if len(s) >= len(seq) and s[: len(seq)] == seq), None)
            if longer is not None:
                results[seq] = results[longer][: len(seq) - 1]
                continue
            rows = np.full((max(len(seq) - 1, 0), vocab), -np.inf, dtype=np.float32)
            if len(seq) >= 2:
                tops = self._echo_top_logprobs(list(seq), k, kind)
                for i in range(len(seq) - 1):
                    for piece, value in (tops[i] or {}).items():
                        token = self._piece_id(piece)
                        if token is not None and 0 <= token < vocab:
                            rows[i, token] = value
                    kept = np.isfinite(rows[i])
                    if kept.any():  # renormalise over the entries the server returned
                        rows[i, kept] -= np.logaddexp.reduce(rows[i, kept])
            results[seq] = rows
        return [results[s] for s in seqs]

    def _echo_top_logprobs(self, seq: list[int], k: int, kind: str) -> list[dict[str, float] | None]:
        """Per row i, the server's top-k {token: logprob} for the position after ``seq[: i + 1]``."""
        body = {"model": self.model_name, "echo": True, "logprobs": k, "max_tokens": 1, "temperature": 0.0,
                "return_tokens_as_token_ids": True, "repeat_penalty": 1.0}
        try:
            if kind == "llama-cpp-python":
                # Its echo rows are shifted by one (row i sits at index i) and row 0 is blanked to
                # null, so row 0 comes from a one-token prompt's completion logprobs.
                out = self._post("/completions", dict(body, prompt=self.decode(seq)))
                tops = out["choices"][0]["logprobs"]["top_logprobs"]
                first = self._post("/completions", dict(body, prompt=self.decode(seq[:1]), echo=False))
                return [first["choices"][0]["logprobs"]["top_logprobs"][0]] + tops[1: len(seq) - 1]
            out = self._post("/completions", dict(body, prompt=seq))
            return out["choices"][0]["logprobs"]["top_logprobs"][1: len(seq)]
        except (_HTTPError, KeyError, IndexError, TypeError) as exc:
            raise ToolkitError(f"the server at {self.base_url} cannot return prompt logprobs (echo + logprobs on "
                               f"/v1/completions): {exc}. For llama-cpp-python's server start it with "
                               "--logits_all true") from None

    def _piece_id(self, piece: str) -> int | None:
        if piece.startswith("token_id:"):
            return int(piece[9:])
        if piece not in self._piece_ids:
            ids = self.encode(piece) if piece else []
            self._piece_ids[piece] = ids[0] if len(ids) == 1 else None
        return self._piece_ids[piece]

    # -- LoRA adapters (vLLM servers) -----------------------------------------------------------------
    # vLLM serves each loaded adapter as a model of its own name: the active adapter's name becomes
    # the request's "model"; ``path`` is read by the server, on its machine.
    def _load_adapter(self, path: Path, name: str) -> None:
        self._post_text("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def _set_adapter(self, name: str | None) -> None:
        self.model_name = name or str(self.target.path)

    def _remove_adapter(self, name: str) -> None:
        self._post_text("/unload_lora_adapter", {"lora_name": name})

    def weights_bytes(self) -> int | None:
        return None  # held by the server process, not this one

    def _unload(self) -> None:
        pass  # nothing held here; the server keeps running


def load(target: LoadTarget) -> OpenAILoaded:
    """Connect to a server and check that it answers and serves ``target.path`` (its model name)."""
    options = target.options
    base_url = options.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if not str(base_url).startswith(("http://", "https://")):
        raise InvalidSpec(f"base_url must start with http:// or https://, got {base_url!r}")
    api_key = options.api_key or os.environ.get("OPENAI_API_KEY")
    # The key lives only inside the loaded model's _Secret, not in the target it keeps and shows.
    target = replace(target, options=replace(options, api_key=None))
    start = time.perf_counter()
    loaded = OpenAILoaded(target, str(base_url), api_key, float(options.timeout))
    served = loaded.models()
    if served and loaded.model_name not in served and not options.skip_model_check:
        raise ToolkitError(f"the server at {loaded.base_url} does not serve {loaded.model_name!r}: it serves "
                           f"{', '.join(served[:10])}")
    loaded.load_s = time.perf_counter() - start
    return loaded


__all__ = ["OpenAILoaded", "TimedRequest", "load"]
