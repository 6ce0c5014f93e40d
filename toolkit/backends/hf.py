"""transformers backend: full precision, bitsandbytes 4/8-bit at load time, and prequantized GPTQ,
AWQ and compressed-tensors checkpoints (their kernels come from gptqmodel/optimum and
compressed-tensors). Generation is a token-by-token loop over the KV cache so every token is timed.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from toolkit.backends.base import (GenerationConfig, HFTokenizerMixin, LoadTarget,
                                   Loaded, by_prefix, default_threads, log_softmax)
from toolkit.errors import InvalidModel, InvalidSpec, UnsafeCheckpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


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


def check_safe_folder(path: Path, allow_pickle: bool) -> None:
    """Refuse folders whose only weights are pickles (they can run code when unpickled)."""
    if not path.is_dir():
        raise InvalidModel(f"the hf backend loads a model folder, but {path} is not a folder "
                           "(for a .gguf file use backend='llamacpp')")
    if not (path / "config.json").exists():
        raise InvalidModel(f"{path} has no config.json: point at the folder that holds the model's config.json")
    has_safetensors = any(path.glob("*.safetensors"))
    pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not has_safetensors and pickles and not allow_pickle:
        raise UnsafeCheckpoint(
            f"{path} holds only pickle weights ({', '.join(sorted(pickles)[:3])}); unpickling can run arbitrary code. "
            "Convert them to safetensors, or pass allow_pickle=True if you trust their source.")


class HFLoaded(HFTokenizerMixin, Loaded):
    backend = "hf"

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
        generator = None
        if config.temperature > 0:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(config.seed if config.seed is not None else torch.seed())
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

    @torch.inference_mode()
    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        def score(seq: tuple[int, ...]) -> np.ndarray:
            ids = torch.tensor([seq], device=self.device)
            return log_softmax(self.model(input_ids=ids).logits[0, :-1].float().cpu().numpy())

        return by_prefix(sequences, score)

    def weights_bytes(self) -> int:
        return model_bytes(self.model)

    def _unload(self) -> None:
        del self.model
        self.model = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


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
    import time

    path = Path(target.path)
    check_safe_folder(path, bool(target.options.get("allow_pickle")))
    device = "cuda" if target.device == "cuda" and torch.cuda.is_available() else "cpu"
    dtype = _torch_dtype(target.dtype, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": target.trust_remote_code}
    qconfig = _quantization_config(target.quantization, dtype)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if device == "cuda":
        kwargs["device_map"] = "auto"
    if not target.options.get("allow_pickle"):
        kwargs["use_safetensors"] = True
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=target.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    if device == "cpu":  # process-wide in torch; set from the model that is loaded last
        torch.set_num_threads(default_threads(model_bytes(model), target.options.get("n_threads")))
    loaded = HFLoaded(target, model, tokenizer)
    loaded.load_s = time.perf_counter() - start
    return loaded
