"""The one protocol every backend implements.

A backend module exposes ``load(target: LoadTarget) -> Loaded``. ``Loaded`` subclasses implement
``_stream`` (token-by-token generation), ``logprobs`` and ``_unload``; everything else — the public
``stream`` with its timings, ``generate`` as a loop over ``stream``, batching fallbacks, async twins,
context-manager use — lives here once, so that every backend is measured the same way.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Sequence, Union

import numpy as np

Messages = list[dict[str, str]]
Prompt = Union[str, Messages, Sequence[int]]

FINISH_REASONS = ("stop", "length", "eos")
ADAPTER_BACKENDS = ("hf", "llamacpp", "mlx", "vllm", "openai (vLLM servers)")  # those with LoRA adapters


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
        from toolkit.errors import InvalidSpec

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
    options: dict[str, Any] = field(default_factory=dict)


class Loaded:
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
        from toolkit.backends.oom import guard

        for name, phase in (("logprobs", "scoring"), ("generate_batch", "batched generation")):
            if name in cls.__dict__:
                setattr(cls, name, guard(phase)(cls.__dict__[name]))

    def __init__(self, target: LoadTarget) -> None:
        self.target = target
        self.load_s: float | None = None
        self._lock = threading.RLock()
        self._closed = False
        self.attempts: list[dict[str, Any]] = []  # filled by toolkit.load when it fell back
        self._batcher: _Batcher | None = None
        self._adapters: dict[str, str] = {}  # LoRA adapter name -> path, in load order
        self._active_adapter: str | None = None

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

    def _load_adapter(self, path: Path, name: str) -> None:
        """Load a LoRA adapter and check it fits the model, leaving the active adapter as it is."""
        from toolkit.errors import InvalidSpec

        raise InvalidSpec(f"the {self.backend} backend does not support LoRA adapters; "
                          f"{', '.join(ADAPTER_BACKENDS)} do")

    def _set_adapter(self, name: str | None) -> None:
        """Make ``name`` (a loaded adapter) the one applied, or none; nothing cached may outlive it."""
        raise NotImplementedError

    def _remove_adapter(self, name: str) -> None:
        """Free an adapter that is loaded and not active."""
        raise NotImplementedError

    # -- LoRA adapters --------------------------------------------------------------------------
    def load_adapter(self, path: str | os.PathLike, name: str | None = None) -> str:
        """Load a LoRA adapter made for this model. It is not applied until :meth:`set_adapter`.

        Formats: a peft folder (``adapter_config.json`` + ``adapter_model.safetensors``) on hf, vllm
        and mlx; an mlx-lm adapter folder (``adapters.safetensors``) on mlx; a GGUF LoRA file (from
        llama.cpp's ``convert_lora_to_gguf.py``) on llamacpp; on openai, a path the vLLM server reads.

        Args:
            path: The adapter folder or file.
            name: What to call it; default: the folder's name, or the file's without its suffix.

        Returns:
            The adapter's name, for :meth:`set_adapter` and :meth:`remove_adapter`.

        Raises:
            ModelNotFound: nothing is at ``path``.
            InvalidModel: not an adapter this backend reads, or made for a model of other shapes.
            InvalidSpec: the name is taken, or this backend does not support adapters.
        """
        from toolkit.errors import InvalidSpec

        path = Path(path).expanduser()
        name = name or (path.stem if path.suffix in (".gguf", ".safetensors") else path.name)
        with self._lock:
            self._check_open()
            if name in self._adapters:
                raise InvalidSpec(f"an adapter named {name!r} is already loaded: pass another name= or "
                                  f"remove_adapter({name!r}) first")
            self._load_adapter(path, name)
            self._adapters[name] = str(path)
        return name

    def set_adapter(self, name: str | None) -> None:
        """Apply the loaded adapter ``name`` to every later stream, generate, generate_batch and
        logprobs call, in place of the one active before; ``None`` returns to the base model."""
        with self._lock:
            self._check_open()
            self._known_adapter(name)
            if name != self._active_adapter:
                self._set_adapter(name)
                self._active_adapter = name

    def adapters(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return list(self._adapters)

    @property
    def active_adapter(self) -> str | None:
        """The adapter applied now, or ``None`` for the base model."""
        return self._active_adapter

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter (first returning to the base model if it is the active one)."""
        with self._lock:
            self._check_open()
            self._known_adapter(name)
            if name == self._active_adapter:
                self.set_adapter(None)
            self._remove_adapter(name)
            del self._adapters[name]

    def _activate_load_option(self, path: str | os.PathLike | None) -> None:
        """Load and apply the adapter a load option names (llamacpp ``lora_path``, mlx ``adapter_path``,
        vllm ``lora``). An adapter that fails fails the load: the model is unloaded again."""
        if not path:
            return
        try:
            self.set_adapter(self.load_adapter(path))
        except BaseException:
            self.unload()
            raise

    def _known_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters:
            from toolkit.errors import InvalidSpec

            loaded = ", ".join(self._adapters) or "none"
            raise InvalidSpec(f"no adapter named {name!r} is loaded (loaded: {loaded}): load it with "
                              "load_adapter(path, name) first")

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
        config = _config(config, options)
        self._check_open()
        ids = self.prompt_ids(prompt, config)
        from toolkit.errors import OutOfMemory, is_out_of_memory
        from toolkit.trackers import rss_bytes

        before = rss_bytes()
        failure: tuple[str, str] | None = None
        with self._lock:
            try:
                yield from self._timed_stream(ids, config)
            except Exception as exc:
                if isinstance(exc, OutOfMemory) or not is_out_of_memory(exc):
                    raise
                failure = (type(exc).__name__, str(exc))  # the traceback (and its tensors) goes here
        if failure is not None:
            raise self._out_of_memory(failure, "generation", before, wanted_tokens=len(ids) + config.max_tokens)

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
                cut = _find_stop(text, config.stop) if config.stop else None
                if cut is not None:
                    end = cut
                elif config.stop:  # hold back a tail that could still grow into a stop string
                    end = len(text) - _stop_prefix_len(text, config.stop)
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
        """Generate to completion: a loop over :meth:`stream`."""
        config = _config(config, options)
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

    def generate_batch(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None,
                       **options: Any) -> list[GenerationResult]:
        """Generate for several prompts. Backends that batch natively override this."""
        config = _config(config, options)
        return [self.generate(p, config) for p in prompts]

    async def astream(self, prompt: Prompt, config: GenerationConfig | None = None,
                      **options: Any) -> AsyncIterator[Chunk]:
        """Async twin of :meth:`stream`: runs the stream in a worker thread."""
        config = _config(config, options)
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
        config = _config(config, options)
        if not self.native_batching:
            return await asyncio.to_thread(self.generate, prompt, config)
        self._check_open()
        loop = asyncio.get_running_loop()
        if self._batcher is None or self._batcher.loop is not loop:
            self._batcher = _Batcher(self, loop)
        return await self._batcher.submit(prompt, config)

    def memory(self) -> dict[str, Any]:
        """Measured memory: process RSS now and its peak, plus the weights as held."""
        from toolkit.trackers import process_memory

        info = process_memory()
        info["weights_bytes"] = self.weights_bytes()
        return info

    def unload(self) -> None:
        """Free the model. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._unload()
            self._closed = True
            self._adapters.clear()
            self._active_adapter = None
        from toolkit.trackers import release_memory

        release_memory()

    def _out_of_memory(self, failure: tuple[str, str], phase: str, rss_before: int | None,
                       wanted_tokens: int | None = None) -> Exception:
        """The OutOfMemory error for a failed step of this model (memory released, numbers measured)."""
        from toolkit.backends.oom import out_of_memory

        plan = getattr(self, "plan", None)
        model = "" if self.backend == "openai" else str(self.target.path)
        return out_of_memory(failure[0], failure[1], phase=phase, model=model, device=self.target.device,
                             backend=self.backend, quantization=self.target.quantization, rss_before=rss_before,
                             predicted_bytes=plan.memory.total_bytes if plan is not None else None,
                             wanted_tokens=wanted_tokens)

    def _check_open(self) -> None:
        if self._closed:
            from toolkit.errors import ToolkitError

            raise ToolkitError(f"this {self.backend} model was unloaded: load it again with toolkit.load(...)")

    def __enter__(self) -> "Loaded":
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload()

    def __repr__(self) -> str:
        state = "unloaded" if self._closed else "loaded"
        return (f"<{type(self).__name__} {self.target.path.name} backend={self.backend} "
                f"quantization={self.target.quantization} dtype={self.target.dtype} {state}>")


class _Batcher:
    """Collects concurrent :meth:`Loaded.agenerate` calls on one event loop into batches. While a batch
    runs, new requests queue and form the next one, so a busy model keeps batching."""

    def __init__(self, model: Loaded, loop: asyncio.AbstractEventLoop) -> None:
        self.model = model
        self.loop = loop
        self.pending: list[tuple[Prompt, GenerationConfig, asyncio.Future]] = []
        self.running = False

    def submit(self, prompt: Prompt, config: GenerationConfig) -> asyncio.Future:
        future = self.loop.create_future()
        self.pending.append((prompt, config, future))
        if not self.running:
            self.running = True
            self.loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(self.model.batch_window_s)
            while self.pending:
                batch, self.pending = self.pending[:self.model.max_batch], self.pending[self.model.max_batch:]
                groups: dict[str, tuple[GenerationConfig, list[tuple[Prompt, asyncio.Future]]]] = {}
                for prompt, config, future in batch:
                    groups.setdefault(repr(config), (config, []))[1].append((prompt, future))
                for config, items in groups.values():
                    await self._run(config, items)
        finally:
            self.running = False

    async def _run(self, config: GenerationConfig, items: list[tuple[Prompt, asyncio.Future]]) -> None:
        live = [(p, f) for p, f in items if not f.cancelled()]
        if not live:
            return
        try:
            results = await asyncio.to_thread(self.model.generate_batch, [p for p, _ in live], config)
        except Exception as exc:  # every caller of this batch sees the error
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results):
            result.batch_size = max(result.batch_size, len(live))
            if not future.done():
                future.set_result(result)


SMALL_MODEL_BYTES = 100 * 2**20


def default_threads(weights_bytes: int, requested: int | None = None) -> int:
    """CPU threads for a model: ``requested`` if given; else 1 below 100 MiB of weights, where
    thread synchronisation costs more than it saves (measured here on the tiny model with the
    other core busy: 113 tok/s on 1 thread, 2.3 tok/s on 2), else every core this process may use."""
    if requested:
        return int(requested)
    if weights_bytes < SMALL_MODEL_BYTES:
        return 1
    from toolkit.trackers import cpu_count

    return cpu_count()


def _config(config: GenerationConfig | None, options: dict[str, Any]) -> GenerationConfig:
    if config is None:
        return GenerationConfig(**options)
    if options:
        from dataclasses import replace

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


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def by_prefix(sequences: Sequence[Sequence[int]], score: Any) -> list[np.ndarray]:
    """Score each distinct sequence once, longest first: one that is a prefix of a sequence already
    scored gets a slice of that result. ``score(seq)`` returns its (len-1, vocab) log-probs."""
    results: dict[tuple[int, ...], np.ndarray] = {}
    seqs = [tuple(int(t) for t in s) for s in sequences]
    for seq in sorted(set(seqs), key=len, reverse=True):
        longer = next((k for k in results if len(k) >= len(seq) and k[: len(seq)] == seq), None)
        results[seq] = results[longer][: len(seq) - 1] if longer is not None else score(seq)
    return [results[s] for s in seqs]


def peft_adapter_config(path: Path, backend: str) -> dict[str, Any]:
    """The ``adapter_config.json`` of a peft LoRA folder, or the error that says what ``path`` is instead."""
    import json

    from toolkit.errors import InvalidModel, ModelNotFound

    wanted = "a peft adapter folder (adapter_config.json + adapter_model.safetensors)"
    if not path.exists():
        raise ModelNotFound(f"LoRA adapter {path} does not exist: pass {wanted}")
    if not path.is_dir():
        hint = ": that is a GGUF adapter, for backend='llamacpp'" if path.suffix == ".gguf" else ""
        raise InvalidModel(f"the {backend} backend loads a LoRA adapter from {wanted}, but {path} is a file{hint}")
    if not (path / "adapter_config.json").is_file():
        raise InvalidModel(f"{path} has no adapter_config.json, so it is not a peft adapter: pass {wanted}")
    config = json.loads((path / "adapter_config.json").read_text())
    kind = config.get("peft_type", "LORA")
    if kind != "LORA" or config.get("use_dora"):
        raise InvalidModel(f"{path} holds a {'DoRA' if kind == 'LORA' else kind} adapter; toolkit runs LoRA adapters only")
    if not (path / "adapter_model.safetensors").is_file():
        raise InvalidModel(f"{path} has no adapter_model.safetensors (pickled adapter_model.bin files are not "
                           "loaded: they can run code): save the adapter with safe_serialization=True")
    return config


def peft_lora_shapes(path: Path) -> dict[str, tuple[int, int]]:
    """The layers a peft LoRA folder adapts, ``{module name: (in_features, out_features)}``, read from
    the safetensors header: lora_A is (r, in), lora_B is (out, r)."""
    from toolkit.inspect import read_safetensors_header

    dims: dict[str, list[int]] = {}
    for key, info in read_safetensors_header(path / "adapter_model.safetensors").items():
        for suffix, side in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if key.endswith(suffix):
                name = key[: -len(suffix)].removeprefix("base_model.model.")
                dims.setdefault(name, [0, 0])[side] = int(info["shape"][1 - side])
    return {name: (d[0], d[1]) for name, d in dims.items()}


def check_adapter_fits(path: Path, shapes: dict[str, tuple[int, int]], layer_dims: Any, model: str) -> None:
    """Raise InvalidModel naming the layers the adapter does not fit. ``layer_dims(name)`` gives the
    model's ``(in_features, out_features)`` of a layer, or None when it has no such layer."""
    from toolkit.errors import InvalidModel

    problems = []
    for name, want in sorted(shapes.items()):
        have = layer_dims(name)
        if have is None:
            problems.append(f"{name}: no such layer in {model}")
        elif tuple(have) != want:
            problems.append(f"{name}: {want[0]}->{want[1]} in the adapter, {have[0]}->{have[1]} in {model}")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise InvalidModel(f"the LoRA adapter {path} was made for a model with other layers or dimensions: "
                           f"{'; '.join(problems[:3])}{more}")


class HFTokenizerMixin:
    """encode/decode/chat template for backends that hold a Hugging Face tokenizer (``self.tokenizer``)."""

    tokenizer: Any
    target: LoadTarget

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def apply_chat_template(self, messages: Messages) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            from toolkit.errors import InvalidSpec

            raise InvalidSpec(f"{self.target.path.name} has no chat template: pass a plain string prompt")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float32."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
