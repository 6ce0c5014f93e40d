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

from toolkit.backends.base import (GenerationConfig, GenerationResult, HFTokenizerMixin, LoadTarget,
                                   Loaded, Prompt, _config, _find_stop, by_prefix, default_threads, finish_reason,
                                   log_softmax)
from toolkit.errors import InvalidModel, InvalidSpec, UnsafeCheckpoint

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


def check_model_folder(path: Path) -> None:
    """A folder with a config.json (pickle-only folders are refused before, in ``load_target``)."""
    if not path.is_dir():
        raise InvalidModel(f"the hf backend loads a model folder, but {path} is not a folder "
                           "(for a .gguf file use backend='llamacpp')")
    if not (path / "config.json").exists():
        raise InvalidModel(f"{path} has no config.json: point at the folder that holds the model's config.json")


PREQUANTIZED = ("gptq-", "awq-", "ct-")


def check_prequantized(path: Path, quantization: str | None) -> None:
    """A GPTQ/AWQ/compressed-tensors plan needs a checkpoint quantized that way: transformers would
    otherwise load whatever the folder holds, and the result would be labelled wrongly."""
    if not quantization or not quantization.startswith(PREQUANTIZED):
        return
    import json

    from toolkit.inspect import quantization_from_config

    try:
        found, _ = quantization_from_config(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError):
        return  # check_model_folder and transformers report an unreadable config
    if found != quantization:
        raise InvalidModel(f"{path.name} is quantized as {found!r}, not {quantization!r}: a {quantization} load "
                           "needs a checkpoint made that way (toolkit.tiny builds them for the tiny model; "
                           "for your own, quantize with gptqmodel or llm-compressor), or plan again without "
                           "forcing the quantization")


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

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    @torch.inference_mode()
    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        generator = _generator(config, self.device)
        input_ids = torch.tensor([prompt_ids], device=self.device)
        past = None
        generated: list[int] = []
        shown = ""
        for _ in range(config.max_tokens):
            out = self.model(input_ids=input_ids, past_key_values=past, use_cache=True, logits_to_keep=1)
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
        config = _config(config, options)
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
            out = self.model(input_ids=tokens, attention_mask=mask, use_cache=True, logits_to_keep=1,
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
                cut = _find_stop(text, config.stop) if config.stop else None
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
            return log_softmax(self.model(input_ids=ids).logits[0, :-1].float().cpu().numpy())

        return by_prefix(sequences, score)

    # -- LoRA adapters, through transformers' peft integration ---------------------------------------
    def _load_adapter(self, path: Path, name: str) -> None:
        from toolkit.backends.base import check_adapter_fits, peft_adapter_config, peft_lora_shapes

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

    def _unload(self) -> None:
        del self.model
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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
    if not target.options.get("allow_pickle"):
        kwargs["use_safetensors"] = True
    else:  # even allowed pickles go through torch's weights-only unpickler, which refuses to call code
        kwargs["weights_only"] = True
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=target.trust_remote_code)
    except Exception as exc:
        raise _library_error(path, exc, "tokenizer", target.trust_remote_code) from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise _library_error(path, exc, "model", target.trust_remote_code) from exc
    model.eval()
    if device == "cpu":  # process-wide in torch; set from the model that is loaded last
        torch.set_num_threads(default_threads(model_bytes(model), target.options.get("n_threads")))
    loaded = HFLoaded(target, model, tokenizer)
    loaded.load_s = time.perf_counter() - start
    auto_map = getattr(model.config, "auto_map", None)
    if auto_map and not target.trust_remote_code:
        # transformers used its own implementation of this model_type and did not import the shipped modules
        loaded.notes = [f"{path.name} ships Python code ({_shipped_files(path)}) that was not run: transformers' "
                        f"built-in {model.config.model_type!r} implementation was loaded instead; pass "
                        "--trust-remote-code (trust_remote_code=True) to use the shipped code if you trust it"]
    return loaded


def _shipped_files(path: Path) -> str:
    """The Python files a model folder's config names in ``auto_map``, e.g. ``modeling_x.py``."""
    import json

    try:
        auto_map = json.loads((path / "config.json").read_text()).get("auto_map") or {}
    except (OSError, ValueError, AttributeError):
        auto_map = {}
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    files = sorted({r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs})
    return ", ".join(files) or "auto_map"


def _library_error(path: Path, exc: Exception, part: str, trust_remote_code: bool) -> Exception:
    """A transformers error about the model's files as a one-paragraph ToolkitError saying what to do.

    Out-of-memory, missing libraries and unrecognised runtime errors are returned unchanged, so that
    toolkit.load can report them and try its fallbacks.
    """
    import transformers

    from toolkit.errors import is_out_of_memory

    text = " ".join(str(exc).split())
    if is_out_of_memory(exc) or isinstance(exc, ImportError):
        return exc
    if "trust_remote_code" in text and not trust_remote_code:
        return UnsafeCheckpoint(
            f"{path.name} ships its own Python code ({_shipped_files(path)}), which transformers "
            f"{transformers.__version__} needs to build this model because it has no built-in implementation of "
            "it; toolkit does not run code shipped with a model unless you pass --trust-remote-code "
            "(trust_remote_code=True in Python): read the code and do so only if you trust its source")
    if "Weights only load failed" in text:  # torch.load(weights_only=True) met a pickle that calls code
        import re

        m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        return UnsafeCheckpoint(
            f"the pickle weights of {path.name} call code ({m.group(1) if m else 'an unsupported global'}) that "
            "torch's weights-only loader refused to run, so they are not a plain tensor checkpoint; toolkit never "
            "unpickles with weights_only=False: get the model as safetensors, or convert it yourself only after "
            "checking where the file comes from")
    if "does not recognize this architecture" in text:
        import re

        m = re.search(r"model type `([^`]*)`", text)
        kind = f"model_type {m.group(1)!r}" if m else "its model_type"
        return InvalidModel(
            f"transformers {transformers.__version__} does not know the architecture of {path.name} ({kind}): "
            "upgrade transformers (pip install -U transformers), check config.json's model_type, or use a GGUF "
            "conversion with --backend llamacpp if llama.cpp supports it")
    if "ignore_mismatched_sizes" in text:
        return InvalidModel(
            f"the weights of {path.name} do not have the shapes its config.json describes (transformers listed "
            "them above as MISMATCH): config.json and the weights come from different models or were edited; "
            "re-download the model")
    if part == "tokenizer" or isinstance(exc, (OSError, ValueError, KeyError)):
        files = "tokenizer files (tokenizer.json, tokenizer_config.json)" if part == "tokenizer" else \
            "config.json or weights"
        return InvalidModel(
            f"transformers {transformers.__version__} could not load the {part} of {path.name} "
            f"({type(exc).__name__}: {text[:300]}): its {files} may be corrupt, incomplete or need a newer "
            "transformers; re-download the model or upgrade transformers")
    return exc
