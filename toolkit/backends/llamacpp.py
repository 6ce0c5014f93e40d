"""llama.cpp backend (llama-cpp-python) on a GGUF file.

Generation is toolkit's own loop over llama.cpp's C API, as lean as llama-bench's: the prompt goes
through ``Llama.eval`` (after the prefix the context already holds, as ``Llama.generate`` reuses it),
then each token is one pick (greedy: the argmax of the logits in place; sampling: a C sampler chain of
top-p + temperature + a seeded draw) and one ``llama_decode`` of a one-token batch, so each token is
timed as it comes. The context runs on persistent ggml threadpools, as llama-bench's does
(:func:`_attach_threadpools`), not on the one ggml otherwise makes and frees for every graph.
``Llama.generate`` cost 5 % of SmolLM2-135M's decode speed at 2 threads here (71.3 tok/s against 75.2
for these C calls with a greedy sampler and 75.4 for llama-bench's tg64, one process, alternating). Log-probs
need the logits of every position (``logits_all=True``), which costs memory and time on every
eval, so they use a second context created on first use — or the main one when the target was
loaded with the option ``logprobs=True``.

LoRA adapters (GGUF files from llama.cpp's ``convert_lora_to_gguf.py``) are loaded onto the model
with ``llama_adapter_lora_init`` and switched per context with ``llama_set_adapters_lora``, without
reloading the model; switching drops the KV cache, which was computed under the previous adapter.
"""

from __future__ import annotations

import codecs
import ctypes
import re
import random
import sys
import time
from functools import cache, partial
from pathlib import Path
from typing import Any, Iterator, Sequence

import llama_cpp
import numpy as np
from llama_cpp import Llama

from toolkit import logs
from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig, Messages, by_prefix, log_softmax
from toolkit.backends.threads import default_threads, probe_threads
from toolkit.errors import InvalidModel, InvalidSpec, ModelNotFound, ToolkitError, is_out_of_memory
from toolkit.formats.gguf import read_gguf

DEFAULT_CONTEXT = 2048


class LlamaCppLoaded(Loaded):
    backend = "llamacpp"

    def __init__(self, target: LoadTarget, llama: Llama, kwargs: dict[str, Any]) -> None:
        super().__init__(target)
        self.llama: Llama | None = llama
        self._kwargs = kwargs  # how the main context was made, reused for the logprobs context
        self._scorer: Llama | None = llama if kwargs.get("logits_all") else None
        # LoRA adapters belong to a llama.cpp model, and the scoring context has a model of its own:
        # adapter name -> {id(Llama): llama_adapter_lora pointer}, each made on first use.
        self._lora: dict[str, dict[int, Any]] = {}
        # EOS only, like the hf and mlx backends (their generation_config's eos_token_id), so that
        # the same weights stop at the same place on every backend.
        self.eos_ids = {int(llama.token_eos())}
        self._pieces: dict[int, bytes] = {}  # token id -> its text's bytes (special=False), filled as met
        self.n_ctx = int(llama.n_ctx())
        # what llama.cpp logged it allocated while loading (model buffers by type, KV, compute, output)
        self.engine_buffers: dict[str, Any] = {}
        self._pools: list[int] = []  # the ggml threadpools attached to the main context (see _attach_threadpools)

    @property
    def max_context(self) -> int:
        return self.n_ctx  # llama.cpp pads the asked-for context to a multiple of 256

    def _model(self) -> Llama:
        self._check_open()
        assert self.llama is not None
        return self.llama

    @property
    def vocab_size(self) -> int:
        return int(self._model().n_vocab())

    def encode(self, text: str) -> list[int]:
        # add_bos=True adds BOS only when the model's GGUF metadata asks for it; special=True
        # parses "<|im_start|>"-style tokens in the text, as transformers' tokenizers do.
        return list(self._model().tokenize(text.encode("utf-8"), add_bos=True, special=True))

    def decode(self, ids: Sequence[int]) -> str:
        return self._model().detokenize([int(i) for i in ids], special=True).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: Messages) -> list[int]:
        llama = self._model()
        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise InvalidSpec(f"{self.target.path.name} has no chat template in its GGUF metadata: "
                              "pass a plain string prompt")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise InvalidSpec(f"the chat template rejected the messages: {message}")

        vocab_text = lambda i: llama.detokenize([i], special=True).decode("utf-8", errors="replace")  # noqa: E731
        text = env.from_string(template).render(
            messages=messages, add_generation_prompt=True, raise_exception=raise_exception,
            bos_token=vocab_text(llama.token_bos()), eos_token=vocab_text(llama.token_eos()))
        return list(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        llama = self._model()
        ctx = llama.ctx
        sampler = _sampler(config) if config.temperature > 0 else None
        # the pick of the next token: the argmax in place (greedy), else the C sampler chain
        pick = _greedy(llama) if sampler is None else partial(llama_cpp.llama_sampler_sample, sampler, ctx, -1)
        text_of = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
        token_buf = (ctypes.c_int32 * 1)()
        # the next position: one token, llama.cpp's own one-token batch (it points at token_buf), logits
        # of it alone. The per-token work is kept to the two C calls and a few local names: at 0.25 ms a
        # token (the tiny model, one thread) every Python-side microsecond is 0.4 % of the decode speed.
        batch = llama_cpp.llama_batch_get_one(token_buf, 1)
        decode = llama_cpp.llama_decode
        pieces, piece_of = self._pieces, self._piece
        eos = self.eos_ids
        held = llama.input_ids  # Llama's record of the context, for the prefix reuse
        last = config.max_tokens
        pos = -1
        try:
            _eval_prompt(llama, prompt_ids)
            pos = llama.n_tokens
            for n in range(1, last + 1):
                token = pick()
                # special=False renders control tokens (EOS) as "", as hf's skip_special_tokens does;
                # the incremental decoder holds back a partial UTF-8 character until it completes.
                piece = pieces.get(token)
                yield [token], text_of(piece if piece is not None else piece_of(token)), token in eos
                if n == last:
                    break
                token_buf[0] = token
                rc = decode(ctx, batch)
                if rc:
                    raise ToolkitError(f"llama_decode returned {rc} at position {pos} (1: no KV cache slot left, "
                                       "the context is full; 2: aborted): load with a larger context (--context N)")
                held[pos] = token
                pos += 1
        finally:
            if pos >= 0:
                llama.n_tokens = pos
            if sampler is not None:
                llama_cpp.llama_sampler_free(sampler)

    def _piece(self, token: int) -> bytes:
        piece = self._pieces[token] = self._model().detokenize([token], special=False)
        return piece

    def _scoring_context(self) -> Llama:
        self._check_open()
        if self._scorer is None:
            kwargs = dict(self._kwargs, logits_all=True)
            self._scorer = Llama(**kwargs)
            if self.active_adapter is not None:
                self._apply_lora(self._scorer, self.active_adapter)
        return self._scorer

    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        with self._lock:
            scorer = self._scoring_context()

            def score(seq: tuple[int, ...]) -> np.ndarray:
                if len(seq) > self.n_ctx:
                    raise InvalidSpec(f"a sequence of {len(seq)} tokens does not fit the context of {self.n_ctx}: "
                                      "score shorter windows or load with a larger max_context")
                if len(seq) < 2:
                    return np.zeros((0, scorer.n_vocab()), dtype=np.float32)
                scorer.reset()
                scorer.eval(list(seq[:-1]))
                return log_softmax(np.array(scorer.scores[: len(seq) - 1], dtype=np.float32))

            return by_prefix(sequences, score)

    # -- LoRA adapters: llama.cpp applies them at run time, without merging them into the weights --
    def _load_adapter(self, path: Path, name: str) -> None:
        _check_lora_file(path)
        self._lora[name] = {}
        try:
            self._lora_handle(self._model(), name, path)
        except InvalidModel:
            del self._lora[name]
            raise

    def _lora_handle(self, llama: Llama, name: str, path: Path | None = None) -> Any:
        handles = self._lora[name]
        if id(llama) not in handles:
            handles[id(llama)] = _init_lora(llama, path or Path(self._adapters[name]), self.target.path.name)
        return handles[id(llama)]

    def _apply_lora(self, llama: Llama, name: str | None) -> None:
        if name is None:
            rc = llama_cpp.llama_set_adapters_lora(llama.ctx, None, 0, None)
        else:
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._lora_handle(llama, name))
            rc = llama_cpp.llama_set_adapters_lora(llama.ctx, adapters, 1, (ctypes.c_float * 1)(1.0))
        if rc != 0:
            raise ToolkitError(f"llama.cpp could not set the LoRA adapter {name!r} (llama_set_adapters_lora returned {rc})")
        # The KV cache, which generation reuses for a shared prompt prefix, was computed with the
        # previous adapter: drop it.
        llama.reset()

    def _set_adapter(self, name: str | None) -> None:
        for llama in {id(x): x for x in (self.llama, self._scorer) if x is not None}.values():
            self._apply_lora(llama, name)

    def _remove_adapter(self, name: str) -> None:
        for handle in self._lora.pop(name).values():
            llama_cpp.llama_adapter_lora_free(handle)

    def engine_counters(self) -> dict[str, float]:
        perf = llama_cpp.llama_perf_context(self._model().ctx)
        return {"prompt_tokens": int(perf.n_p_eval), "decoded_tokens": int(perf.n_eval),
                "prompt_s": perf.t_p_eval_ms / 1e3, "decode_s": perf.t_eval_ms / 1e3}

    @property
    def threads(self) -> int:
        return int(self._kwargs["n_threads"])

    def weights_bytes(self) -> int:
        return int(sum(t["bytes"] for t in read_gguf(self.target.path)["tensors"]))

    def _unload(self) -> None:
        for llama in {id(x): x for x in (self.llama, self._scorer) if x is not None}.values():
            llama.close()  # frees its model's LoRA adapters too
        self.llama = None
        self._scorer = None
        _free_threadpools(self._pools)  # after the context that used them
        self._pools = []


def _greedy(llama: Llama) -> Any:
    """Greedy decoding's pick: the argmax of the last position's logits, read in place. It is llama.cpp's
    greedy sampler (the first of equal maxima, as ``np.argmax``) without the sampler's copy of the
    vocabulary into a candidate array each token: 13 against 6 us a token on a 4096-token vocabulary
    here, 3 % of the tiny model's decode. The logits buffer moves only when llama.cpp reallocates its
    outputs, so the view is made again only when the address changes."""
    # llama_get_logits_ith itself, returning the address as an int (ctypes.cast of the returned pointer
    # cost more than the argmax)
    prototype = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32)
    logits_at = prototype(ctypes.cast(llama_cpp.llama_get_logits_ith, ctypes.c_void_p).value)
    ctx, n_vocab = llama.ctx, int(llama.n_vocab())
    views: dict[int, np.ndarray] = {}

    def pick() -> int:
        address = logits_at(ctx, -1)
        view = views.get(address) if address else None
        if view is None:
            if not address:
                raise ToolkitError("llama.cpp returned no logits for the last position (llama_get_logits_ith)")
            view = views[address] = np.ctypeslib.as_array((ctypes.c_float * n_vocab).from_address(address))
        return int(view.argmax())

    return pick


def _sampler(config: GenerationConfig) -> Any:
    """A llama.cpp sampler chain for ``config``: greedy at temperature 0, else top-p, temperature and a
    seeded draw (no penalties: every backend samples from the plain distribution)."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if config.temperature > 0:
        seed = config.seed if config.seed is not None else random.randrange(2**31)
        for stage in (llama_cpp.llama_sampler_init_top_p(config.top_p, 1),
                      llama_cpp.llama_sampler_init_temp(config.temperature),
                      llama_cpp.llama_sampler_init_dist(seed)):
            llama_cpp.llama_sampler_chain_add(chain, stage)
    else:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    return chain


def _eval_prompt(llama: Llama, ids: list[int]) -> None:
    """Evaluate ``ids`` after the longest prefix the context already holds (as ``Llama.generate``
    reuses it), at least the last token, so that the logits are those of the prompt's end. Where
    llama.cpp cannot drop part of a cache (recurrent or sliding-window caches) it starts over."""
    held = llama.n_tokens
    common = 0
    for a, b in zip(llama.input_ids[:held].tolist(), ids):
        if a != b:
            break
        common += 1
    common = min(common, len(ids) - 1)
    if common and not llama._ctx.kv_cache_seq_rm(-1, common, -1):
        common = 0
    llama.n_tokens = common
    llama.eval(ids[common:])  # drops the cache from n_tokens on, evaluates in n_batch chunks


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelNotFound(f"{path} does not exist: pass the path of a .gguf file")
    if path.is_dir():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (it holds {', '.join(ggufs[:3])}: pass one of them)" if ggufs else (
            ": for a transformers folder use backend='hf' or 'mlx', or convert it with llama.cpp's "
            "convert_hf_to_gguf.py")
        raise InvalidModel(f"the llamacpp backend loads a .gguf file, but {path} is a folder{hint}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidModel(f"{path.name} is not a GGUF file (bad magic): the llamacpp backend needs a .gguf "
                               "from llama.cpp's convert scripts")


def _check_lora_file(path: Path) -> None:
    if not path.exists():
        raise ModelNotFound(f"LoRA adapter {path} does not exist: pass a GGUF LoRA file")
    if path.is_dir():
        hint = (": it is a peft adapter; convert it with llama.cpp's convert_lora_to_gguf.py --base <model folder>"
                if (path / "adapter_config.json").exists() else "")
        raise InvalidModel(f"the llamacpp backend loads a LoRA adapter from a GGUF file, but {path} is a folder{hint}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise InvalidModel(f"{path.name} is not a GGUF file (bad magic): the llamacpp backend needs a GGUF LoRA "
                               "adapter from llama.cpp's convert_lora_to_gguf.py")


class _LlamaLog:
    """llama.cpp's log while a block runs: every line kept (``lines``, with its ggml level in
    ``levels``), forwarded to stderr only when ``forward``; llama-cpp-python's own logger restored after."""

    def __init__(self, forward: bool = False) -> None:
        self.forward = forward
        self.lines: list[str] = []
        self.levels: list[int] = []
        self._pending = ""

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            piece = text.decode("utf-8", errors="replace")
            if self.forward:
                print(piece, end="", file=sys.stderr, flush=True)
            self._pending += piece
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                self.lines.append(line)
                self.levels.append(level)

        self._callback = callback  # kept alive as long as llama.cpp may call it

    def __enter__(self) -> "_LlamaLog":
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def buffers(self) -> dict[str, Any]:
        """The buffer sizes llama.cpp logged, in bytes: model buffers by type, KV caches, compute, output."""
        out: dict[str, Any] = {"model": {}, "kv_bytes": 0, "kv_caches": [], "compute_bytes": 0, "output_bytes": 0}
        for line in self.lines:
            if m := _BUFFER_LINES["model"].search(line):
                out["model"][m[1]] = out["model"].get(m[1], 0) + round(float(m[2]) * 2**20)
            elif m := _BUFFER_LINES["kv"].search(line):
                out["kv_bytes"] += round(float(m[1]) * 2**20)
                out["kv_caches"].append((int(m[2]), int(m[3])))
            elif m := _BUFFER_LINES["compute"].search(line):
                out["compute_bytes"] += round(float(m[1]) * 2**20)
            elif m := _BUFFER_LINES["output"].search(line):
                out["output_bytes"] += round(float(m[1]) * 2**20)
            elif m := _BUFFER_LINES["n_ctx"].search(line):
                out["n_ctx"] = int(m[1])
        return out


# llama.cpp's log lines that say what it allocated (llama-model.cpp load_tensors, llama-kv-cache.cpp,
# llama-context.cpp sched_reserve and output_reserve)
_BUFFER_LINES = {
    "model": re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB"),
    "kv": re.compile(r"llama_kv_cache: size =\s+([\d.]+) MiB \(\s*(\d+) cells,\s+(\d+) layers"),
    "compute": re.compile(r"sched_reserve:\s+\S+ compute buffer size =\s+([\d.]+) MiB"),
    "output": re.compile(r"output buffer size =\s+([\d.]+) MiB"),
    "n_ctx": re.compile(r"llama_context: n_ctx\s+=\s+(\d+)"),
}


def _init_lora(llama: Llama, path: Path, model: str) -> Any:
    """``llama_adapter_lora_init``, with llama.cpp's own words (its log) in the error when it refuses."""
    with _LlamaLog() as log:
        adapter = llama_cpp.llama_adapter_lora_init(llama.model, str(path).encode("utf-8"))
    if not adapter:
        # GGML_LOG_LEVEL_WARN and _ERROR in this ggml are 3 and 4 (llama_cpp._logger's table is older)
        said = [line.strip() for line, level in zip(log.lines, log.levels) if level in (3, 4)]
        raise InvalidModel(f"llama.cpp could not load the LoRA adapter {path.name} for {model}: "
                           f"{' '.join(said) or 'it did not say why'}. A LoRA adapter must be a GGUF LoRA made for this "
                           "model's architecture and dimensions")
    return adapter


def _load_error(path: Path, exc: Exception) -> str:
    """Why llama.cpp refused a GGUF file whose header toolkit could read, and what to do."""
    import llama_cpp


    try:
        arch = read_gguf(path)["metadata"].get("general.architecture")
        what = f" (architecture {arch!r})"
    except Exception:  # the header itself is unreadable: the message below still applies
        what = ""
    return (f"llama.cpp could not load {path.name}{what}: {' '.join(str(exc).split()).rstrip('.')}. The file may be corrupt, or its architecture or "
            f"tensor types may be newer than this llama-cpp-python {llama_cpp.__version__}: re-download the file, "
            "or upgrade llama-cpp-python (pip install -U llama-cpp-python)")


def _probe_threads(llama: Llama, kwargs: dict[str, Any], weights_bytes: int, batch_threads: int | None) -> None:
    """Pick the threads by timing single-token decodes (see toolkit.backends.threads); prompts use the
    same count unless ``n_threads_batch`` was given. The choice goes into ``kwargs`` too, so a scoring
    context made later uses it."""
    token = int(llama.token_bos()) if llama.token_bos() >= 0 else 1

    def decode(n: int) -> None:
        llama_cpp.llama_set_n_threads(llama.ctx, n, n)
        llama.reset()
        llama.eval([token])

    threads, _ = probe_threads(decode, weights_bytes)
    batch = batch_threads or threads
    llama_cpp.llama_set_n_threads(llama.ctx, threads, batch)
    llama.reset()
    llama.n_threads, llama.n_threads_batch = threads, batch
    kwargs.update(n_threads=threads, n_threads_batch=batch)


@cache
def _ggml_cpu() -> tuple[Any, Any]:
    """(libggml-base, libggml-cpu) of the wheel, as ctypes libraries with the threadpool functions typed:
    llama-cpp-python binds neither ``ggml_threadpool_new`` nor ``llama_attach_threadpool``. Opened and
    typed once a process, for every load's attach and every unload's free."""
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    base, cpu = (ctypes.CDLL(str(lib_dir / name)) for name in ("libggml-base.so", "libggml-cpu.so"))
    base.ggml_threadpool_params_init.argtypes = [ctypes.c_void_p, ctypes.c_int]
    base.ggml_threadpool_params_init.restype = None
    cpu.ggml_threadpool_new.argtypes = [ctypes.c_void_p]
    cpu.ggml_threadpool_new.restype = ctypes.c_void_p
    cpu.ggml_threadpool_free.argtypes = [ctypes.c_void_p]
    cpu.ggml_threadpool_free.restype = None
    lib = llama_cpp.llama_cpp._lib
    lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.llama_attach_threadpool.restype = None
    return base, cpu


def _attach_threadpools(llama: Llama, threads: int, batch_threads: int) -> list[int]:
    """Give the context persistent ggml threadpools (one for decoding, one for prompts when their thread
    counts differ), as llama-bench does; returns them, to free after the context.

    Without one, ggml makes and frees a threadpool on every graph it computes, which on the tiny model
    at one thread cost 1.4 % of the decode speed (3919 against 3973 tok/s, a bare ``llama_decode``
    loop, 7 alternating rounds here). Where the library lacks the functions (another build), nothing is
    attached and llama.cpp keeps its own way."""
    try:
        base, cpu = _ggml_cpu()
    except (OSError, AttributeError):
        return []
    pools: list[int] = []
    for n in dict.fromkeys((threads, batch_threads)):  # one pool per distinct count
        params = ctypes.create_string_buffer(4096)  # struct ggml_threadpool_params: 528 bytes in ggml 0.25
        base.ggml_threadpool_params_init(params, int(n))
        pool = cpu.ggml_threadpool_new(params)
        if not pool:
            _free_threadpools(pools)
            return []
        pools.append(pool)
    llama_cpp.llama_cpp._lib.llama_attach_threadpool(llama.ctx, pools[0], pools[-1])
    return pools


def _free_threadpools(pools: list[int]) -> None:
    if pools:
        _, cpu = _ggml_cpu()
        for pool in pools:
            cpu.ggml_threadpool_free(pool)


_GGML_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20,
                  "bf16": 30}  # enum ggml_type (ggml.h)


def _ggml_type(name: str) -> int:
    key = {"float16": "f16", "float32": "f32", "bfloat16": "bf16"}.get(name, name)
    if key not in _GGML_TYPE_IDS:
        raise InvalidSpec(f"llama.cpp has no KV cache type {name!r}: use one of {', '.join(_GGML_TYPE_IDS)}")
    return _GGML_TYPE_IDS[key]


def load(target: LoadTarget) -> LlamaCppLoaded:
    """Load a GGUF file with llama-cpp-python.

    Options (:class:`toolkit.capabilities.LlamaCppOptions`): ``n_threads`` (default: probed at load, see
    :mod:`toolkit.backends.threads`), ``adapter`` (a GGUF LoRA, loaded and set active), ``logprobs`` (the
    main context keeps every position's logits), the planned context settings (``n_batch``, ``n_ubatch``,
    ``type_k``/``type_v``, ``flash_attn``, ``swa_full``, ``n_gpu_layers``) and ``verbose``.
    """
    path = Path(target.path)
    _check_file(path)
    opts = target.options
    threads = default_threads(path.stat().st_size, opts.n_threads)
    kwargs: dict[str, Any] = dict(
        model_path=str(path), n_ctx=int(target.max_context or DEFAULT_CONTEXT),
        n_gpu_layers=-1 if target.device == "cuda" else 0, n_threads=threads,
        n_threads_batch=int(opts.n_threads_batch or threads), logits_all=opts.logprobs,
        verbose=opts.verbose or logs.verbose())  # llama.cpp's own log, to stderr
    for name in ("n_batch", "n_ubatch", "flash_attn", "swa_full"):
        if getattr(opts, name) is not None:
            kwargs[name] = getattr(opts, name)
    for name in ("type_k", "type_v"):  # llama-cpp-python takes ggml type ids
        if getattr(opts, name):
            kwargs[name] = _ggml_type(getattr(opts, name))
    if opts.n_gpu_layers is not None:
        kwargs["n_gpu_layers"] = int(opts.n_gpu_layers)
    start = time.perf_counter()
    try:
        with _LlamaLog(forward=kwargs["verbose"]) as log:
            llama = Llama(**kwargs)
    except ValueError as exc:
        if is_out_of_memory(exc):
            raise  # toolkit.load reports it with the measured memory
        raise InvalidModel(_load_error(path, exc)) from exc
    if not opts.n_threads and target.device != "cuda":
        _probe_threads(llama, kwargs, path.stat().st_size, opts.n_threads_batch)
    loaded = LlamaCppLoaded(target, llama, kwargs)
    if target.device != "cuda":
        loaded._pools = _attach_threadpools(llama, kwargs["n_threads"], kwargs["n_threads_batch"])
    loaded.engine_buffers = log.buffers()
    loaded._activate_load_option()  # so that set_adapter(None) can switch it off
    loaded.load_s = time.perf_counter() - start
    return loaded


# --- llama.cpp's own figures without loading the weights ----------------------------------------------

def dry_run(path: str | Path, *, n_ctx: int, n_batch: int = 512, n_ubatch: int = 512, flash_attn: bool = False,
            swa_full: bool | None = None, type_k: str | None = None, type_v: str | None = None,
            n_seq_max: int = 1) -> dict[str, Any]:
    """What llama.cpp itself would allocate on the CPU for this GGUF and context, from a ``no_alloc``
    load (``llama_model_params.no_alloc``: metadata only, allocations simulated; the weights are not
    read). The figures are llama.cpp's own log lines (its structured memory breakdown is a C++ map,
    out of reach of ctypes): KV caches, compute buffer and output buffer in bytes, the padded
    context, and the tensors' total bytes (``llama_model_size``). Defaults are ``Llama()``'s."""
    llama_cpp.llama_backend_init()
    start = time.perf_counter()
    with _LlamaLog() as log:
        mp = llama_cpp.llama_model_default_params()
        mp.no_alloc = True
        mp.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # the mmap path refuses no_alloc
        mp.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode("utf-8"), mp)
        if not model:
            raise InvalidModel(f"llama.cpp could not read {Path(path).name} for a dry run: {' '.join(log.lines[-3:])}")
        try:
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx, cp.n_batch = n_ctx, min(n_ctx, n_batch)
            cp.n_ubatch, cp.n_seq_max = min(cp.n_batch, n_ubatch), n_seq_max
            cp.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                  else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)  # Llama() never passes AUTO
            if swa_full is not None:
                cp.swa_full = swa_full
            if type_k:
                cp.type_k = _ggml_type(type_k)
            if type_v:
                cp.type_v = _ggml_type(type_v)
            ctx = llama_cpp.llama_init_from_model(model, cp)
            if not ctx:
                raise InvalidSpec(f"llama.cpp refused these settings: {' '.join(log.lines[-3:])}")
            weights = int(llama_cpp.llama_model_size(model))
            llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)
    out = log.buffers()
    del out["model"]  # a dry run's model buffers are 0-byte placeholders; the tensors' bytes stand in
    out.update(tensor_bytes=weights, seconds=time.perf_counter() - start)
    return out
