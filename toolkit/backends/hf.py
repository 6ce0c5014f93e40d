"""transformers backend: full precision, bitsandbytes 4/8-bit at load time, and prequantized GPTQ,
AWQ and compressed-tensors checkpoints (their kernels come from gptqmodel/optimum and
compressed-tensors). Generation is a token-by-token loop over the KV cache so every token is timed.
LoRA adapters (peft folders) go through transformers' peft integration: ``load_adapter``,
``set_adapter``, ``disable_adapters`` for the base model, ``delete_adapter``.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from toolkit import logs
from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import (GenerationConfig, GenerationResult, Prompt, by_prefix, find_stop,
                                         finish_reason, log_softmax, merge_config)
from toolkit.backends.hf_checks import check_model_folder, check_prequantized, library_error, shipped_files
from toolkit.backends.threads import probe_threads
from toolkit.backends.tokenizer import HFTokenizerMixin
from toolkit.errors import InvalidModel, InvalidSpec
from toolkit.facts.process import large_frees_returned

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _torch_dtype(name: str | None, device: str) -> torch.dtype | str:
    if name in (None, "auto"):
        return torch.float32 if device == "cpu" else "auto"
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidSpec(f"unknown dtype {name!r} for the hf backend: choose one of {', '.join(DTYPES)} or auto") from None


def _quantization_config(quantization: str, dtype: torch.dtype | str) -> Any:
    if quantization in ("none", None) or not quantization.startswith("bnb-"):
        return None  # prequantized checkpoints carry their own quantization_config
    from transformers import BitsAndBytesConfig

    compute = dtype if isinstance(dtype, torch.dtype) else torch.float32
    if quantization == "bnb-8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization in ("bnb-4bit", "bnb-nf4", "bnb-fp4"):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4" if quantization == "bnb-fp4" else "nf4",
                                  bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=True)
    raise InvalidSpec(f"unknown bitsandbytes quantization {quantization!r}: use bnb-4bit or bnb-8bit")


class HFLoaded(HFTokenizerMixin, Loaded):
    backend = "hf"
    native_batching = True

    def __init__(self, target: LoadTarget, model: Any, tokenizer: Any) -> None:
        super().__init__(target)
        self.model = model
        self.tokenizer = tokenizer
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.device = next(model.parameters()).device
        # compressed-tensors decompresses the weights in a hook on the first forward, drawing progress bars
        self._first_forward = hasattr(model, "ct_decompress_hook")

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def _forward(self, **inputs: Any) -> Any:
        if self._first_forward:
            self._first_forward = False
            with logs.no_library_bars():
                return self.model(**inputs)
        return self.model(**inputs)

    @torch.inference_mode()
    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        generator = _generator(config, self.device)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        generated: list[int] = []
        shown = ""
        for _ in range(config.max_tokens):
            out = self._forward(input_ids=input_ids, past_key_values=past, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            next_id = _pick(out.logits[0, -1], config, generator)
            generated.append(next_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            # Hold back a trailing partial UTF-8 character until the next token completes it.
            new_text = "" if text.endswith("\ufffd") else text[len(shown):]
            shown += new_text
            yield [next_id], new_text, next_id in self.eos_ids
            input_ids = torch.tensor([[next_id]], device=self.device)

    def generate_batch(self, prompts: Sequence[Prompt], config: GenerationConfig | None = None,
                       **options: Any) -> list[GenerationResult]:
        """Native batching: the prompts are left-padded and decoded together, one forward pass per
        step for the whole batch. Each result is timed on its own (TTFT is the first step, total
        when that sequence finished). Greedy results equal one-at-a-time decoding up to float
        rounding between batch shapes; a seeded sampled batch repeats for the same batch."""
        config = merge_config(config, options)
        self._check_open()
        if len(prompts) < 2:
            return [self.generate(p, config) for p in prompts]
        ids = [self.prompt_ids(p, config) for p in prompts]
        with self._lock:
            return self._decode_batch(ids, config)

    @torch.inference_mode()
    def _decode_batch(self, ids: list[list[int]], config: GenerationConfig) -> list[GenerationResult]:
        start = time.perf_counter()
        n, width = len(ids), max(len(seq) for seq in ids)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = min(self.eos_ids) if self.eos_ids else 0
        tokens = torch.full((n, width), pad, dtype=torch.long, device=self.device)
        mask = torch.zeros((n, width), dtype=torch.long, device=self.device)
        for i, seq in enumerate(ids):
            tokens[i, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[i, width - len(seq):] = 1
        generator = _generator(config, self.device)
        out_ids: list[list[int]] = [[] for _ in ids]
        texts = [""] * n
        finish: list[str | None] = [None] * n
        ends = [0.0] * n
        past, ttft, now = None, 0.0, 0.0
        for step in range(config.max_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self._forward(input_ids=tokens, attention_mask=mask, use_cache=True, logits_to_keep=1,
                             position_ids=positions if past is None else positions[:, -1:], past_key_values=past)
            past = out.past_key_values
            now = time.perf_counter() - start
            ttft = ttft or now
            step_ids = []
            for i in range(n):
                if finish[i] is not None:
                    step_ids.append(pad)
                    continue
                token = _pick(out.logits[i, -1], config, generator)
                out_ids[i].append(token)
                step_ids.append(token)
                text = self.tokenizer.decode(out_ids[i], skip_special_tokens=True)
                cut = find_stop(text, config.stop) if config.stop else None
                texts[i] = text if cut is None else text[:cut]
                finish[i] = finish_reason(cut is not None, token in self.eos_ids, len(out_ids[i]), config)
                if finish[i] is not None:
                    ends[i] = now
            if all(f is not None for f in finish):
                break
            tokens = torch.tensor(step_ids, dtype=torch.long, device=self.device)[:, None]
            mask = torch.cat([mask, mask.new_ones((n, 1))], dim=1)
        return [GenerationResult(texts[i], out_ids[i], len(ids[i]), len(out_ids[i]), finish[i] or "length",
                                 ttft, ends[i] or now, batch_size=n) for i in range(n)]

    @torch.inference_mode()
    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        def score(seq: tuple[int, ...]) -> np.ndarray:
            ids = torch.tensor([seq], device=self.device)
            return log_softmax(self._forward(input_ids=ids).logits[0, :-1].float().cpu().numpy())

        return by_prefix(sequences, score)

    # -- LoRA adapters, through transformers' peft integration ---------------------------------------
    def _load_adapter(self, path: Path, name: str) -> None:
        from toolkit.backends.adapters import check_adapter_fits, peft_adapter_config, peft_lora_shapes

        peft_adapter_config(path, self.backend)
        modules = dict(self.model.named_modules())

        def layer_dims(name: str) -> tuple[int, int] | None:
            layer = modules.get(name)
            dims = (getattr(layer, "in_features", None), getattr(layer, "out_features", None))
            return dims if None not in dims else None  # type: ignore[return-value]

        check_adapter_fits(path, peft_lora_shapes(path), layer_dims, self.target.path.name)
        try:
            info = self.model.load_adapter(str(path), adapter_name=name)
            wrong = sorted(info.missing_keys) + sorted(info.unexpected_keys)
            if wrong:  # a weight that did not land would leave a silent no-op (or random) adapter
                raise ValueError(f"its weights do not match the model's layers ({', '.join(wrong[:3])})")
        except (RuntimeError, ValueError, KeyError, OSError) as exc:
            if name in (getattr(self.model, "peft_config", None) or {}):
                self.model.delete_adapter(name)  # a failed load leaves the adapter injected, and active
            self._set_adapter(self.active_adapter)
            raise InvalidModel(f"peft could not apply the LoRA adapter {path} to {self.target.path.name}: "
                               f"{str(exc).splitlines()[0]}") from exc
        self._set_adapter(self.active_adapter)  # peft activates what it loads; keep the current choice

    def _set_adapter(self, name: str | None) -> None:
        if not getattr(self.model, "_hf_peft_config_loaded", False):
            return  # no adapter is loaded: the model is the base model
        if name is None:
            self.model.disable_adapters()  # the LoRA layers then run their base layer only: exact base outputs
        else:
            self.model.enable_adapters()
            self.model.set_adapter(name)

    def _remove_adapter(self, name: str) -> None:
        self.model.delete_adapter(name)

    def weights_bytes(self) -> int:
        return model_bytes(self.model)

    @property
    def threads(self) -> int | None:
        return torch.get_num_threads() if self.device.type == "cpu" else None

    def _unload(self) -> None:
        del self.model
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@torch.inference_mode()
def _probe_threads(model: Any) -> None:
    """torch's CPU threads for this model: the faster of one and all, timed on single-token forwards."""
    ids = torch.tensor([[1]], device="cpu")

    def decode(n: int) -> None:
        torch.set_num_threads(n)
        model(input_ids=ids, use_cache=False, logits_to_keep=1)

    torch.set_num_threads(probe_threads(decode, model_bytes(model))[0])


def _generator(config: GenerationConfig, device: torch.device) -> torch.Generator | None:
    """The seeded sampling generator of a config, or None when decoding is greedy."""
    if config.temperature <= 0:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed if config.seed is not None else torch.seed())
    return generator


def _pick(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> int:
    if config.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / config.temperature, dim=-1)
    if config.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < config.top_p
        sorted_probs = sorted_probs * keep
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class _OnceFilter(logging.Filter):
    """Let each distinct log message through once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def _warn_once(logger_name: str) -> None:
    log = logging.getLogger(logger_name)
    if not any(isinstance(f, _OnceFilter) for f in log.filters):
        log.addFilter(_OnceFilter())


def model_bytes(model: Any) -> int:
    """Bytes of every parameter and buffer as stored (packed int4/int8 counted as stored),
    plus bitsandbytes' per-block scales. ``get_memory_footprint()`` miscounts some quantized layers."""
    seen: set[int] = set()
    total = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            total += _quant_state_bytes(state)
    for module in model.modules():  # bnb int8 keeps its row scales on the module's weight
        scb = getattr(getattr(module, "weight", None), "SCB", None)
        if isinstance(scb, torch.Tensor) and id(scb) not in seen:
            seen.add(id(scb))
            total += scb.numel() * scb.element_size()
    return total


def _quant_state_bytes(state: Any) -> int:
    total = 0
    for name in ("absmax", "code", "offset"):
        t = getattr(state, name, None)
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)


def load(target: LoadTarget) -> HFLoaded:
    """Load a local model folder with transformers according to ``target``."""
    path = Path(target.path)
    check_model_folder(path)
    check_prequantized(path, target.quantization)
    device = "cuda" if target.device == "cuda" and torch.cuda.is_available() else "cpu"
    dtype = _torch_dtype(target.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": target.trust_remote_code}
    qconfig = _quantization_config(target.quantization, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        _warn_once("bitsandbytes.autograd._functions")  # int8 logs a cast warning on every forward
    if device == "cuda":
        kwargs["device_map"] = "auto"
        if target.options.max_memory:  # a planned offload: accelerate fills the GPU up to its share
            kwargs["max_memory"] = {int(k) if str(k).isdigit() else k: v for k, v in target.options.max_memory.items()}
    if not target.options.allow_pickle:
        kwargs["use_safetensors"] = True
    else:  # even allowed pickles go through torch's weights-only unpickler, which refuses to call code
        kwargs["weights_only"] = True
    logs.quiet()
    if (target.quantization or "").startswith(("gptq-", "awq-")):
        logs.quiet_gptqmodel()  # transformers imports gptqmodel for these, which logs to stdout from its import on
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=target.trust_remote_code)
    except Exception as exc:
        raise library_error(path, exc, "tokenizer", target.trust_remote_code) from exc
    try:
        with logs.no_library_bars(), large_frees_returned():
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise library_error(path, exc, "model", target.trust_remote_code) from exc
    model.eval()
    if device == "cpu":  # process-wide in torch; set from the model that is loaded last
        if target.options.n_threads:
            torch.set_num_threads(int(target.options.n_threads))
        else:
            _probe_threads(model)
    loaded = HFLoaded(target, model, tokenizer)
    loaded.load_s = time.perf_counter() - start
    auto_map = getattr(model.config, "auto_map", None)
    if auto_map and not target.trust_remote_code:
        # transformers used its own implementation of this model_type and did not import the shipped modules
        loaded.notes = [f"{path.name} ships Python code ({shipped_files(path)}) that was not run: transformers' "
                        f"built-in {model.config.model_type!r} implementation was loaded instead; pass "
                        "--trust-remote-code (trust_remote_code=True) to use the shipped code if you trust it"]
    return loaded
