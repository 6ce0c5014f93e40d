"""HTTP for the openai backend, with the standard library only: JSON requests to an
OpenAI-compatible server, its server-sent events, and an API key that never shows in a repr, a log
or an error."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Generator, Iterator

from toolkit.errors import ToolkitError


class _Secret:
    """Holds the API key so that no repr, vars() dump or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "<secret>" if self._value else "<none>"


class _HTTPError(ToolkitError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class ServerConnection:
    """Requests to one server: ``base_url`` (…/v1), ``root_url`` (without /v1), a bearer key, a timeout."""

    base_url: str
    root_url: str
    timeout: float
    _api_key: _Secret

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
        return self._read_events(response)

    def _read_events(self, response: Any) -> Generator[dict[str, Any], None, None]:
        """The events of an opened streaming response; the response is closed when they end."""
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


@dataclass
class TimedRequest:
    """One streamed request as :meth:`OpenAILoaded.timed_request` saw it. Times are seconds after the
    request was sent (``sent_at``, a ``time.perf_counter()`` value).

    Attributes:
        sent_at: When the request was sent (``time.perf_counter()``).
        chunk_s: Arrival of each chunk that carried text or token ids.
        chunk_tokens: Tokens in each of those chunks: the ids' count where the server sends ids, else 1.
        end_s: When the stream ended (or failed).
        prompt_tokens: The server's ``usage.prompt_tokens``, when it reported usage.
        completion_tokens: The server's ``usage.completion_tokens``, when it reported usage.
        finish_reason: The server's own (``length``, ``stop``); None when the stream ended without one.
        text: The generated text.
        error: Why the request failed (unreachable, HTTP error, timeout, stream cut short), else None.
    """

    sent_at: float
    chunk_s: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    end_s: float = 0.0
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    text: str = ""
    error: str | None = None


def record_events(events: Iterator[dict[str, Any]], record: TimedRequest, deadline_s: float | None) -> None:
    for event in events:
        now = time.perf_counter() - record.sent_at
        usage = event.get("usage")
        if usage:
            record.prompt_tokens = _int_or_none(usage.get("prompt_tokens"))
            record.completion_tokens = _int_or_none(usage.get("completion_tokens"))
        for choice in event.get("choices") or []:
            text = choice.get("text") or ""
            ids = choice.get("token_ids") or event.get("tokens") or None
            if text or ids:
                record.chunk_s.append(now)
                record.chunk_tokens.append(len(ids) if ids else 1)
                record.text += text
            record.finish_reason = choice.get("finish_reason") or record.finish_reason
        if deadline_s is not None and now > deadline_s:
            record.error = f"still streaming after the request deadline of {deadline_s:g} s; closed"
            return

# -- scoring ------------------------------------------------------------------------------------


def _int_or_none(value: Any) -> int | None:
    return int(value) if value is not None else None
