"""The one protocol every backend implements.

A backend module exposes ``load(target: LoadTarget) -> Loaded``. ``Loaded`` subclasses implement
``_stream`` (token-by-token generation), ``logprobs`` and ``_unload``; everything else — the public
``stream`` with its timings, ``generate`` as a loop over ``stream``, batching fallbacks, async twins,
context-manager use — lives here once, so that every backend is measured the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Sequence

import numpy as np

from toolkit import capabilities as caps
from toolkit.backends.adapter_slots import AdapterSlots
from toolkit.backends.batching import Batcher
from toolkit.backends.generation import (Chunk, GenerationConfig, GenerationResult, Messages, Prompt, find_stop,
                                         finish_reason, merge_config, stop_prefix_len)
from toolkit.backends.oom import guard, out_of_memory
from toolkit.errors import InvalidSpec, OutOfMemory, ToolkitError, is_out_of_memory
from toolkit.facts.process import process_memory, release_memory, rss_bytes

if TYPE_CHECKING:
    from toolkit.planning.result import Plan


@dataclass
class LoadTarget:
    """What to load: a resolved local path plus the planned settings a backend needs."""

    path: Path
    backend: str
    quantization: str = "none"
    dtype: str = "auto"
    max_context: int | None = None
    device: str = "cpu"
    tensor_parallel: int = 1
    trust_remote_code: bool = False
    options: Any = None  # the backend's options dataclass (toolkit.capabilities); a dict is converted

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        record = caps.BACKENDS.get(self.backend)  # an unregistered backend class still gets the common options
        self.options = record.make_options(self.options) if record else caps.Options(**dict(self.options or {}))


class Loaded(AdapterSlots):
    """A loaded model. Subclasses implement ``_stream``, ``logprobs``, ``_unload`` and ``encode``,
    and ``_load_adapter`` / ``_set_adapter`` / ``_remove_adapter`` when they run LoRA adapters.

    Use as a context manager to unload on exit. All generation goes through :meth:`stream`;
    a lock keeps concurrent callers (threads, the async twins, widgets) from interleaving.
    """

    backend: str = "?"
    native_batching = False  # generate_batch decodes several sequences at once
    batch_window_s = 0.005  # how long agenerate waits for companions before a batch starts
    max_batch = 32

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A backend's own scoring and batched generation fail on memory like stream() does: the
        # allocator's error becomes OutOfMemory with measured numbers (see toolkit.backends.oom).
        super().__init_subclass__(**kwargs)
        for name, phase in (("logprobs", "scoring"), ("generate_batch", "batched generation")):
            if name in cls.__dict__:
                setattr(cls, name, guard(phase)(cls.__dict__[name]))

    def __init__(self, target: LoadTarget) -> None:
        self.target = target
        self.load_s: float | None = None
        self._lock = threading.RLock()
        self._closed = False
        self.attempts: list[dict[str, Any]] = []  # filled by toolkit.load when it fell back
        self._batcher: Batcher | None = None
        self._adapters: dict[str, str] = {}  # LoRA adapter name -> path, in load order
        self._active_adapter: str | None = None
        self.plan: Plan | None = None  # the plan toolkit.load loaded it from, when there was one
        self.notes: list[str] = []  # what the load did that the user should know (said by the CLI)

    # -- to implement -------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def apply_chat_template(self, messages: Messages) -> list[int]:
        raise NotImplementedError

    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        """Yield (new token ids, new text, hit_eos) per step; stop when the backend stops."""
        raise NotImplementedError

    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Next-token log-probabilities: for each sequence of n ids, an (n-1, vocab) float32 array
        whose row i is log p(· | ids[: i + 1]); each row's exp sums to 1."""
        raise NotImplementedError

    def _unload(self) -> None:
        raise NotImplementedError

    def weights_bytes(self) -> int | None:
        """Bytes of the weights as they are held, counted from the stored tensors when possible."""
        return None

    def engine_counters(self) -> dict[str, float] | None:
        """The engine's own running counts, for benchmarks: ``prompt_tokens`` evaluated (a prefix-cache
        hit shows up as fewer than sent), ``decoded_tokens``, and the engine's own ``prompt_s`` and
        ``decode_s`` timings. None when the engine keeps no such counters."""
        return None

    @property
    def threads(self) -> int | None:
        """CPU threads the model runs with, when the backend sets them."""
        return None

    # -- shared ---------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def prompt_ids(self, prompt: Prompt, config: GenerationConfig | None = None) -> list[int]:
        """Token ids for a prompt: a string, chat messages, or ids passed through."""
        config = config or GenerationConfig()
        if isinstance(prompt, str):
            return self.encode(prompt)
        if len(prompt) and isinstance(prompt[0], dict):
            messages = list(prompt)  # type: ignore[arg-type]
            if config.system_prompt and messages[0].get("role") != "system":
                messages = [{"role": "system", "content": config.system_prompt}] + messages
            return self.apply_chat_template(messages)
        return [int(t) for t in prompt]  # type: ignore[union-attr]

    def stream(self, prompt: Prompt, config: GenerationConfig | None = None, **options: Any) -> Iterator[Chunk]:
        """Stream a generation chunk by chunk; the last chunk carries ``finish_reason``."""
        config = merge_config(config, options)
        self._check_open()
        ids = self.prompt_ids(prompt, config)
        config = self._within_context(ids, config)
        yield from self._guarded(ids, config, self._timed_stream(ids, config))

    def _guarded(self, ids: list[int], config: GenerationConfig, steps: Iterator[Any]) -> Iterator[Any]:
        """``steps`` of one generation under the model's lock, an allocator failure in them turned into
        OutOfMemory, raised after the failed step's memory is released (outside the except block, so the
        error holds no traceback of the failure, nor its tensors)."""
        before = rss_bytes()
        failure: tuple[str, str] | None = None
        with self._lock:
            try:
                yield from steps
            except Exception as exc:
                if isinstance(exc, OutOfMemory) or not is_out_of_memory(exc):
                    raise
                failure = (type(exc).__name__, str(exc))  # the traceback (and its tensors) goes here
        if failure is not None:
            raise self._out_of_memory(failure, "generation", before, wanted_tokens=len(ids) + config.max_tokens)

    @property
    def max_context(self) -> int | None:
        """The context this model was loaded with (prompt + generated tokens): what the plan
        allocated. llama.cpp and vLLM allocate it up front; transformers and mlx-lm grow their caches
        as they fill, and toolkit holds them to it. None: no limit known (a server's)."""
        return self.target.max_context

    def _within_context(self, ids: list[int], config: GenerationConfig) -> GenerationConfig:
        """Refuse a prompt that fills the context; end a generation where the context ends ("length")."""
        limit = self.max_context
        if not limit:
            return config
        if not ids:
            raise InvalidSpec(f"the {self.backend} backend needs at least one prompt token: pass a non-empty prompt")
        if len(ids) >= limit:
            raise InvalidSpec(f"the prompt has {len(ids)} tokens but the context holds {limit}: shorten it or load "
                              "with a larger context (--context N)")
        return config if len(ids) + config.max_tokens <= limit else replace(config, max_tokens=limit - len(ids))

    def _timed_stream(self, ids: list[int], config: GenerationConfig) -> Iterator[Chunk]:
        start = time.perf_counter()
        ttft = 0.0
        generated = 0
        text = ""  # everything generated so far
        sent = 0  # characters of ``text`` already yielded
        finish: str | None = None
        pending: Chunk | None = None
        failure: Exception | None = None
        try:
            for new_ids, new_text, hit_eos in self._stream(ids, config):
                now = time.perf_counter() - start
                if generated == 0:
                    ttft = now
                generated += len(new_ids)
                text += new_text
                end = len(text)
                cut = find_stop(text, config.stop) if config.stop else None
                if cut is not None:
                    end = cut
                elif config.stop:  # hold back a tail that could still grow into a stop string
                    end = len(text) - stop_prefix_len(text, config.stop)
                finish = finish_reason(cut is not None, hit_eos, generated, config)
                if finish is not None and finish != "stop":
                    end = len(text)  # nothing more will come: release what was held back
                rate = (generated - 1) / (now - ttft) if generated > 1 and now > ttft else 0.0
                if pending is not None:
                    yield pending
                pending = Chunk(text[sent:max(sent, end)], list(new_ids), len(ids), generated, now, ttft, rate, finish)
                sent = max(sent, end)
                if finish is not None:
                    break
        except Exception as exc:  # deliver what was generated, then the error
            failure = exc
        if failure is not None:
            if pending is not None:
                yield pending
            raise failure
        if pending is not None:
            if pending.finish_reason is None:  # the backend stopped by itself
                pending.text += text[sent:]
                pending.finish_reason = "length"
            yield pending

    def generate(self, prompt: Prompt, config: GenerationConfig | None = None, **options: Any) -> GenerationResult:
        """Generate to completion: a loop over :meth:`stream`, or, without stop strings, over the backend's
        tokens directly (:meth:`_collect`: the same result without a Chunk a token)."""
        config = merge_config(config, options)
        if not config.stop and type(self).stream is Loaded.stream:  # a backend with its own stream keeps it
            return self._collect(prompt, config)
        parts: list[str] = []
        token_ids: list[int] = []
        last: Chunk | None = None
        for chunk in self.stream(prompt, config):
            parts.append(chunk.text)
            token_ids.extend(chunk.token_ids)
            last = chunk
        if last is None:
            return GenerationResult("", [], len(self.prompt_ids(prompt, config)), 0, "length", 0.0, 0.0)
        return GenerationResult("".join(parts), token_ids, last.prompt_tokens, last.generated_tokens,
                                last.finish_reason or "length", last.ttft_s, last.elapsed_s)

    def _collect(self, prompt: Prompt, config: GenerationConfig) -> GenerationResult:
        """:meth:`generate` without stop strings: the tokens and timings :meth:`_timed_stream` would give, with
        its per-token work cut to a clock read and two appends. On the tiny model at one thread (0.25 ms a
        token) the Chunk-a-token path cost 3.5 us a token over the backend's own loop, 1.4 % of its speed."""
        self._check_open()
        ids = self.prompt_ids(prompt, config)
        config = self._within_context(ids, config)
        token_ids: list[int] = []
        parts: list[str] = []
        finish: str | None = None
        with self._lock, contextlib.closing(self._guarded(ids, config, self._stream(ids, config))) as steps:
            start = now = ttft = time.perf_counter()  # as _timed_stream's: once the lock is held
            for new_ids, new_text, hit_eos in steps:
                now = time.perf_counter()
                if not token_ids:
                    ttft = now
                token_ids += new_ids
                parts.append(new_text)
                finish = finish_reason(False, hit_eos, len(token_ids), config)
                if finish is not None:
                    break
        if not parts:  # the backend yielded nothing
            return GenerationResult("", [], len(ids), 0, "length", 0.0, 0.0)
        return GenerationResult("".join(parts), token_ids, len(ids), len(token_ids), finish or "length",
                                ttft - start, now - start)

    def generate_batch(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None,
                       **options: Any) -> list[GenerationResult]:
        """Generate for several prompts. Backends that batch natively override this."""
        config = merge_config(config, options)
        return [self.generate(p, config) for p in prompts]

    async def astream(self, prompt: Prompt, config: GenerationConfig | None = None,
                      **options: Any) -> AsyncIterator[Chunk]:
        """Async twin of :meth:`stream`: runs the stream in a worker thread."""
        config = merge_config(config, options)
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        done = object()

        def worker() -> None:
            try:
                for chunk in self.stream(prompt, config):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # surfaced in the awaiting task
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        while True:
            item = await queue.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item

    async def agenerate(self, prompt: Prompt, config: GenerationConfig | None = None,
                        **options: Any) -> GenerationResult:
        """Async twin of :meth:`generate`. On a backend that batches (``native_batching``), requests
        that arrive together — ``asyncio.gather`` of many, or callers awaiting while a batch runs —
        are grouped by config and decoded as one :meth:`generate_batch`; each caller gets its own
        result (``result.batch_size`` says how many were decoded with it)."""
        config = merge_config(config, options)
        if not self.native_batching:
            return await asyncio.to_thread(self.generate, prompt, config)
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher.loop is not loop:
            self._batcher = Batcher(self, loop)
        return await self._batcher.submit(prompt, config)

    def memory(self) -> dict[str, Any]:
        """Measured memory: this process's RSS now and its peak, the weights as held, and
        ``model_peak_bytes``: the peak of what holds the model (see :meth:`model_peak_bytes`)."""
        info = process_memory()
        info["weights_bytes"] = self.weights_bytes()
        info["model_peak_bytes"] = self.model_peak_bytes(info["peak_rss_bytes"])
        return info

    def model_peak_bytes(self, process_peak: int) -> int:
        """Peak memory of what holds the model, given this process's peak over the measured region.
        In-process backends hold it here; a backend whose engine lives elsewhere (vLLM's worker
        processes) or on a device (the CUDA allocator, MLX's Metal heap) overrides this."""
        cuda = (process_memory().get("cuda_peak_allocated_bytes") or 0) if self.target.device == "cuda" else 0
        return max(process_peak, cuda)

    def unload(self) -> None:
        """Free the model. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._unload()
            self._closed = True
            self._adapters.clear()
            self._active_adapter = None

        release_memory()

    def _out_of_memory(self, failure: tuple[str, str], phase: str, rss_before: int | None,
                       wanted_tokens: int | None = None) -> Exception:
        """The OutOfMemory error for a failed step of this model (memory released, numbers measured)."""
        plan = self.plan
        model = "" if self.backend == "openai" else str(self.target.path)
        return out_of_memory(failure[0], failure[1], phase=phase, model=model, device=self.target.device,
                             backend=self.backend, quantization=self.target.quantization, rss_before=rss_before,
                             predicted_bytes=plan.memory.total_bytes if plan is not None else None,
                             wanted_tokens=wanted_tokens)

    def _check_open(self) -> None:
        if self._closed:
            raise ToolkitError(f"this {self.backend} model was unloaded: load it again with toolkit.load(...)")

    def __enter__(self) -> "Loaded":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload()

    def __repr__(self) -> str:
        state = "unloaded" if self._closed else "loaded"
        return (f"<{type(self).__name__} {self.target.path.name} backend={self.backend} "
                f"quantization={self.target.quantization} dtype={self.target.dtype} {state}>")
