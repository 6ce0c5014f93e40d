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
* LoRA adapters (``load_adapter`` / ``set_adapter``) use vLLM's ``/v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter`` (``vllm serve --enable-lora`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``)
  and send the active adapter's name as the request's model; other servers answer with an error.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from toolkit.backends.base import (GenerationConfig, GenerationResult, Loaded, LoadTarget, Messages, Prompt,
                                   _config)
from toolkit.errors import InvalidSpec, ToolkitError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
UNKNOWN_ID = -1
# (tokenize path, its request body builder, detokenize path, the detokenize response's text field)
TOKENIZERS = {
    "llama-cpp-python": ("/extras/tokenize", lambda m, t: {"model": m, "input": t}, "/extras/detokenize", "text"),
    "vllm/llama.cpp": ("/tokenize", lambda m, t: {"model": m, "prompt": t, "content": t}, "/detokenize", None),
}


class _Secret:
    """Holds the API key so that no repr, vars() dump or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<secret>" if self._value else "<none>"


class _Request(list):
    """Prompt token ids (when known) plus the original prompt, passed through ``_timed_stream``;
    ``len()`` is the prompt's token count, which the server may report only at the end."""

    def __init__(self, prompt: Prompt, ids: list[int] | None, count: int) -> None:
        super().__init__(ids or [])
        self.prompt = prompt
        self.count = count

    def __len__(self) -> int:
        return self.count


class OpenAILoaded(Loaded):
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
        self._vocab_size: int | None = target.options.get("vocab_size")
        self._piece_ids: dict[str, int | None] = {}

    def __repr__(self) -> str:
        state = "unloaded" if self._closed else "loaded"
        return f"<OpenAILoaded {self.model_name!r} at {self.base_url} {state}>"

    # -- HTTP -----------------------------------------------------------------------------------
    def _open(self, url: str, body: dict[str, Any] | None, timeout: float | None = None) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self._api_key.get():
            headers["Authorization"] = f"Bearer {self._api_key.get()}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
        try:
            return urllib.request.urlopen(request, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            detail = exc.read(2000).decode("utf-8", errors="replace").strip()
            raise _HTTPError(exc.code, f"{url} answered HTTP {exc.code}: {detail[:500]}") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ToolkitError(f"cannot reach the server at {self.base_url} ({reason}): start it, or pass "
                               "base_url=... / set OPENAI_BASE_URL") from None

    def _post(self, path: str, body: dict[str, Any] | None = None, root: bool = False) -> Any:
        url = (self.root_url if root else self.base_url) + path
        with self._open(url, body) as response:
            return json.loads(response.read().decode("utf-8"))

    def _events(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Server-sent events of a streaming request, as parsed JSON, until ``[DONE]``."""
        response = self._open(self.base_url + path, body)
        try:
            data: list[str] = []
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].lstrip(" "))
                    continue
                if line or not data:
                    continue  # comments (": ping"), event names, blank keep-alives
                payload, data = "\n".join(data), []
                if payload.strip() == "[DONE]":
                    return
                event = json.loads(payload)
                if isinstance(event, dict) and event.get("error"):
                    raise ToolkitError(f"the server reported an error mid-stream: {event['error']}")
                yield event
        finally:
            response.close()  # closing early tells the server to stop generating

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
                               "options={'vocab_size': N} when loading")
        return int(self._vocab_size)

    # -- generation -------------------------------------------------------------------------------
    def stream(self, prompt: Prompt, config: GenerationConfig | None = None, **options: Any) -> Iterator[Any]:
        config = _config(config, options)
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
        config = _config(config, options)
        self._check_open()
        workers = int(self.target.options.get("max_concurrency", 8))
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

    # -- scoring ------------------------------------------------------------------------------------
    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self._check_open()
        vocab = self.vocab_size
        k = int(self.target.options.get("top_logprobs", 20))
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

    def _post_text(self, path: str, body: dict[str, Any]) -> str:
        try:
            with self._open(self.base_url + path, body) as response:
                return response.read().decode("utf-8", errors="replace")
        except _HTTPError as exc:
            raise ToolkitError(f"{exc}. (LoRA adapters on an OpenAI-compatible server need vLLM started with "
                               "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; the server reads the "
                               "adapter path on its own machine.)") from None

    def models(self) -> list[str]:
        """Model names the server serves."""
        with self._open(self.base_url + "/models", None) as response:
            return [m["id"] for m in json.loads(response.read().decode("utf-8")).get("data", [])]

    def weights_bytes(self) -> int | None:
        return None  # held by the server process, not this one

    def _unload(self) -> None:
        pass  # nothing held here; the server keeps running


class _HTTPError(ToolkitError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def load(target: LoadTarget) -> OpenAILoaded:
    """Connect to a server and check that it answers and serves ``target.path`` (its model name)."""
    options = target.options
    base_url = options.get("base_url") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if not str(base_url).startswith(("http://", "https://")):
        raise InvalidSpec(f"base_url must start with http:// or https://, got {base_url!r}")
    api_key = options.get("api_key") or os.environ.get("OPENAI_API_KEY")
    # The key lives only inside the loaded model's _Secret, not in the target it keeps and shows.
    target = replace(target, options={k: v for k, v in options.items() if k != "api_key"})
    start = time.perf_counter()
    loaded = OpenAILoaded(target, str(base_url), api_key, float(options.get("timeout", 600)))
    served = loaded.models()
    if served and loaded.model_name not in served and not options.get("skip_model_check"):
        raise ToolkitError(f"the server at {loaded.base_url} does not serve {loaded.model_name!r}: it serves "
                           f"{', '.join(served[:10])}")
    loaded.load_s = time.perf_counter() - start
    return loaded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_llama_server(gguf_path: str | os.PathLike, port: int | None = None, *, n_ctx: int = 2048,
                       timeout: float = 30.0, log: str | os.PathLike | None = None) -> tuple[subprocess.Popen, str]:
    """Start llama-cpp-python's OpenAI-compatible server on 127.0.0.1 for a GGUF file.

    Returns:
        ``(process, base_url)``; the model name is the file's stem. Stop it with
        ``process.terminate()``.

    Raises:
        ToolkitError: when the server does not answer ``/v1/models`` within ``timeout`` seconds.
    """
    path = Path(gguf_path)
    port = port or _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--host", "127.0.0.1", "--port", str(port),
           "--model", str(path), "--model_alias", path.stem, "--n_ctx", str(n_ctx), "--n_threads", "1",
           "--logits_all", "true", "--interrupt_requests", "false"]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ToolkitError(f"the llama.cpp server exited with code {process.returncode} while starting: "
                               f"run `{' '.join(cmd)}` to see why (the server needs llama-cpp-python[server])")
        try:
            with urllib.request.urlopen(base_url + "/models", timeout=1) as response:
                if response.status == 200:
                    return process, base_url
        except (urllib.error.URLError, ConnectionError, socket.timeout):
            time.sleep(0.2)
    process.terminate()
    raise ToolkitError(f"the llama.cpp server on port {port} did not answer within {timeout:.0f} s")


__all__ = ["OpenAILoaded", "load", "start_llama_server"]
