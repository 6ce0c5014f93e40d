"""llama.cpp backend (llama-cpp-python) on a GGUF file.

Generation drives ``Llama.generate`` token by token, so each token is timed as it comes. Log-probs
need the logits of every position (``logits_all=True``), which costs memory and time on every
eval, so they use a second context created on first use — or the main one when the target was
loaded with ``options={"logprobs": True}``.

LoRA adapters (GGUF files from llama.cpp's ``convert_lora_to_gguf.py``) are loaded onto the model
with ``llama_adapter_lora_init`` and switched per context with ``llama_set_adapters_lora``, without
reloading the model; switching drops the KV cache, which was computed under the previous adapter.
"""

from __future__ import annotations

import codecs
import ctypes
import random
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import llama_cpp
import numpy as np
from llama_cpp import Llama

from toolkit.backends.base import (GenerationConfig, LoadTarget, Loaded,
                                   Messages, by_prefix, default_threads, log_softmax)
from toolkit.errors import InvalidModel, InvalidSpec, ModelNotFound, ToolkitError

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
        self.n_ctx = int(llama.n_ctx())

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
        if not prompt_ids:
            raise InvalidSpec("the llamacpp backend needs at least one prompt token: pass a non-empty prompt")
        if len(prompt_ids) >= self.n_ctx:
            raise InvalidSpec(f"the prompt has {len(prompt_ids)} tokens but the context holds {self.n_ctx}: "
                              "shorten it or load with a larger max_context")
        if config.temperature > 0:
            llama.set_seed(config.seed if config.seed is not None else random.randrange(2**31))
            sampling = dict(temp=config.temperature, top_p=config.top_p, top_k=0, min_p=0.0)
        else:
            sampling = dict(temp=0.0, top_k=1, top_p=1.0, min_p=0.0)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        steps = llama.generate(prompt_ids, repeat_penalty=1.0, typical_p=1.0, **sampling)
        room = self.n_ctx - len(prompt_ids)
        try:
            for n, token in enumerate(steps, start=1):
                token = int(token)
                # special=False renders control tokens (EOS) as "", as hf's skip_special_tokens does;
                # the incremental decoder holds back a partial UTF-8 character until it completes.
                text = decoder.decode(llama.detokenize([token], special=False))
                yield [token], text, token in self.eos_ids
                if n >= config.max_tokens or n >= room:
                    break
        finally:
            steps.close()

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
        # The KV cache, which Llama.generate reuses for a shared prompt prefix, was computed with the
        # previous adapter: drop it.
        llama.reset()

    def _set_adapter(self, name: str | None) -> None:
        for llama in {id(x): x for x in (self.llama, self._scorer) if x is not None}.values():
            self._apply_lora(llama, name)

    def _remove_adapter(self, name: str) -> None:
        for handle in self._lora.pop(name).values():
            llama_cpp.llama_adapter_lora_free(handle)

    def weights_bytes(self) -> int:
        from toolkit.inspect import read_gguf

        return int(sum(t["bytes"] for t in read_gguf(self.target.path)["tensors"]))

    def _unload(self) -> None:
        for llama in {id(x): x for x in (self.llama, self._scorer) if x is not None}.values():
            llama.close()  # frees its model's LoRA adapters too
        self.llama = None
        self._scorer = None


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


def _init_lora(llama: Llama, path: Path, model: str) -> Any:
    """``llama_adapter_lora_init``, with llama.cpp's own words (its log) in the error when it refuses."""
    from llama_cpp import _logger

    said: list[str] = []

    @llama_cpp.llama_log_callback
    def capture(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level in (3, 4):  # GGML_LOG_LEVEL_WARN, _ERROR in this ggml (llama_cpp._logger's table is older)
            said.append(text.decode("utf-8", errors="replace").strip())

    llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
    try:
        adapter = llama_cpp.llama_adapter_lora_init(llama.model, str(path).encode("utf-8"))
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    if not adapter:
        raise InvalidModel(f"llama.cpp could not load the LoRA adapter {path.name} for {model}: "
                           f"{' '.join(said) or 'it did not say why'}. A LoRA adapter must be a GGUF LoRA made for this "
                           "model's architecture and dimensions")
    return adapter


def _load_error(path: Path, exc: Exception) -> str:
    """Why llama.cpp refused a GGUF file whose header toolkit could read, and what to do."""
    import llama_cpp

    from toolkit.inspect import read_gguf

    try:
        arch = read_gguf(path)["metadata"].get("general.architecture")
        what = f" (architecture {arch!r})"
    except Exception:  # the header itself is unreadable: the message below still applies
        what = ""
    return (f"llama.cpp could not load {path.name}{what}: {' '.join(str(exc).split()).rstrip('.')}. The file may be corrupt, or its architecture or "
            f"tensor types may be newer than this llama-cpp-python {llama_cpp.__version__}: re-download the file, "
            "or upgrade llama-cpp-python (pip install -U llama-cpp-python)")


def load(target: LoadTarget) -> LlamaCppLoaded:
    """Load a GGUF file with llama-cpp-python.

    Options: ``n_threads`` (default: :func:`toolkit.backends.base.default_threads` of the file size), ``lora_path``
    (a GGUF LoRA adapter, loaded and set active: see ``Loaded.load_adapter``),
    ``logprobs`` (make the main context keep every position's logits), ``n_batch``.
    """
    path = Path(target.path)
    _check_file(path)
    if target.quantization not in (None, "none") and not str(target.quantization).startswith("gguf-"):
        raise InvalidSpec(f"the llamacpp backend cannot apply {target.quantization!r}: a GGUF file carries its own "
                          "quantization; pass quantization='none' or a gguf-<type> name")
    opts = target.options
    threads = default_threads(path.stat().st_size, opts.get("n_threads"))
    kwargs: dict[str, Any] = dict(
        model_path=str(path), n_ctx=int(target.max_context or DEFAULT_CONTEXT),
        n_gpu_layers=-1 if target.device == "cuda" else 0, n_threads=threads,
        n_threads_batch=int(opts.get("n_threads_batch", threads)), logits_all=bool(opts.get("logprobs", False)),
        verbose=bool(opts.get("verbose", False)))
    if opts.get("n_batch"):
        kwargs["n_batch"] = int(opts["n_batch"])
    start = time.perf_counter()
    try:
        llama = Llama(**kwargs)
    except ValueError as exc:
        from toolkit.errors import is_out_of_memory

        if is_out_of_memory(exc):
            raise  # toolkit.load reports it with the measured memory
        raise InvalidModel(_load_error(path, exc)) from exc
    loaded = LlamaCppLoaded(target, llama, kwargs)
    loaded._activate_load_option(opts.get("lora_path"))  # so that set_adapter(None) can switch it off
    loaded.load_s = time.perf_counter() - start
    return loaded
