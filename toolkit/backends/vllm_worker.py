"""The vLLM engine in a child process (option ``worker_process=True``), behind a small proxy.

Every call is forwarded to a :class:`toolkit.launcher.Worker` that loads the engine in-process and
serves the proxy's requests; ``unload()`` ends that process, so its memory really goes back to the
system (vLLM does not free everything in-process, a long-standing complaint in notebooks).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig, GenerationResult, Messages, Prompt, merge_config
from toolkit.facts.process import children_peak_rss_bytes, children_rss_bytes
from toolkit.launcher import Worker, portable

_STOP = "__stop__"


def _serve(requests: Any, replies: Any, target: LoadTarget, load_in_process: Callable[[LoadTarget], Loaded]) -> None:
    """Child process: load in-process, then serve calls from the proxy until told to exit."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process to end, not two
    try:
        # the adapter option is loaded by the parent (load_adapter through the proxy), so both sides know it
        options = replace(target.options, worker_process=False, adapter=None,
                          enable_lora=bool(target.options.adapter or target.options.enable_lora))
        loaded = load_in_process(replace(target, options=options))
    except BaseException as exc:  # noqa: BLE001 - sent to the parent
        replies.put(("err", portable(exc)))
        return
    replies.put(("ok", {"vocab_size": loaded.vocab_size, "load_s": loaded.load_s,
                        "logprobs_top_k": loaded.logprobs_top_k, "max_model_len": loaded.max_model_len}))
    stream: Iterator[Any] | None = None
    while True:
        kind, name, args = requests.get()
        try:
            if kind == "exit":
                if stream is not None:
                    stream.close()
                loaded.unload()
                replies.put(("ok", None))
                return
            if kind == "stream":
                stream = loaded._stream(*args)
                result: Any = None
            elif kind == "next":
                try:
                    result = next(stream)  # type: ignore[arg-type]
                except StopIteration:
                    stream, result = None, _STOP
            elif kind == "close":
                if stream is not None:
                    stream.close()
                stream, result = None, None
            else:
                result = getattr(loaded, name)(*args)
            replies.put(("ok", result))
        except BaseException as exc:  # noqa: BLE001 - sent to the parent
            replies.put(("err", portable(exc)))


class VLLMProcessLoaded(Loaded):
    """The engine in a spawned child process; every call is forwarded through the worker's queues.
    ``unload()`` asks the child to shut down and ends it, so all of its memory is returned."""

    backend = "vllm"
    native_batching = True

    def __init__(self, target: LoadTarget, load_in_process: Callable[[LoadTarget], Loaded]) -> None:
        """``load_in_process`` is what the child calls to start the engine (a module-level function)."""
        super().__init__(target)
        start = time.perf_counter()
        self.worker = Worker(_serve, target, load_in_process, name="toolkit-vllm-worker",
                             timeout_s=target.options.worker_timeout_s)
        try:
            info = self.worker.reply()
        except BaseException:
            self.worker.close(goodbye=None)
            raise
        self._info = info
        self.logprobs_top_k = info["logprobs_top_k"]
        self.max_model_len = info["max_model_len"]
        self._activate_load_option()
        self.load_s = time.perf_counter() - start

    @property
    def process(self) -> Any:
        return self.worker.process

    @property
    def pid(self) -> int | None:
        return self.worker.pid

    def _call(self, kind: str, name: str = "", *args: Any) -> Any:
        with self._lock:
            self._check_open()
            return self.worker.call(kind, name, *args)

    @property
    def vocab_size(self) -> int:
        return int(self._info["vocab_size"])

    @property
    def max_context(self) -> int:
        return int(self.max_model_len)  # what the engine allocated its KV blocks for

    def encode(self, text: str) -> list[int]:
        return self._call("call", "encode", text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._call("call", "decode", list(ids))

    def apply_chat_template(self, messages: Messages) -> list[int]:
        return self._call("call", "apply_chat_template", messages)

    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        self._call("stream", "", list(prompt_ids), config)
        finished = False
        try:
            while True:
                item = self._call("next")
                if item == _STOP:
                    finished = True
                    return
                yield item
        finally:
            if not finished and not self._closed and self.worker.alive():
                self._call("close")

    def generate_batch(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None,
                       **options: Any) -> list[GenerationResult]:
        config = merge_config(config, options)
        ids = [self.prompt_ids(p, config) for p in prompts]
        return self._call("call", "generate_batch", ids, config)

    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        return self._call("call", "logprobs", [list(s) for s in sequences])

    def _load_adapter(self, path: Path, name: str) -> None:
        self._call("call", "load_adapter", path, name)

    def _set_adapter(self, name: str | None) -> None:
        self._call("call", "set_adapter", name)

    def _remove_adapter(self, name: str) -> None:
        self._call("call", "remove_adapter", name)

    def weights_bytes(self) -> int | None:
        return self._call("call", "weights_bytes")

    def memory(self) -> dict[str, Any]:
        info = super().memory()
        info["engine_rss_bytes"] = children_rss_bytes()
        info["engine_peak_rss_bytes"] = children_peak_rss_bytes()
        info["worker_pid"] = self.pid
        return info

    def model_peak_bytes(self, process_peak: int) -> int:
        # the engine is the worker process (and any children of its own), not this one
        return children_peak_rss_bytes()

    def _unload(self) -> None:
        self.worker.close()
