"""mlx-lm backend: full-precision HF folders and MLX-converted (``mlx-4bit``/``mlx-8bit``) folders.

Runs on Apple silicon, and on Linux CPUs with ``mlx[cpu]``. Generation is a loop over
``mlx_lm.generate_step`` so every token is timed; logprobs come from one forward pass.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import mlx.core as mx
import mlx_lm
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler

from toolkit.backends.base import GenerationConfig, HFTokenizerMixin, LoadTarget, Loaded, by_prefix, log_softmax
from toolkit.errors import InvalidModel, InvalidSpec


class MLXLoaded(HFTokenizerMixin, Loaded):
    backend = "mlx"

    def __init__(self, target: LoadTarget, model: Any, tokenizer: Any) -> None:
        super().__init__(target)
        self.model = model
        self.tokenizer = tokenizer  # mlx_lm's TokenizerWrapper around the HF tokenizer
        self.eos_ids = set(int(t) for t in tokenizer.eos_token_ids)

    @property
    def vocab_size(self) -> int:
        args = getattr(self.model, "args", None)
        size = getattr(args, "vocab_size", None)
        return int(size) if size else len(self.tokenizer.get_vocab())

    def _stream(self, prompt_ids: list[int], config: GenerationConfig) -> Iterator[tuple[list[int], str, bool]]:
        if not prompt_ids:
            raise InvalidSpec("the mlx backend needs at least one prompt token: pass a non-empty prompt")
        if config.temperature > 0:
            mx.random.seed(config.seed if config.seed is not None else int(time.time_ns() % 2**31))
        sampler = make_sampler(temp=config.temperature, top_p=config.top_p if config.top_p < 1 else 0.0)
        generated: list[int] = []
        shown = ""
        steps = generate_step(mx.array(prompt_ids), self.model, max_tokens=config.max_tokens, sampler=sampler)
        for token, _ in steps:
            token = int(token)
            generated.append(token)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            # Hold back a trailing partial UTF-8 character until the next token completes it.
            new_text = "" if text.endswith("\ufffd") else text[len(shown):]
            shown += new_text
            yield [token], new_text, token in self.eos_ids

    def logprobs(self, sequences: Sequence[Sequence[int]]) -> list[np.ndarray]:
        self._check_open()
        return by_prefix(sequences, lambda seq: log_softmax(
            np.array(self.model(mx.array([seq]))[0, :-1].astype(mx.float32))))

    def weights_bytes(self) -> int | None:
        if self.model is None:
            return None
        return int(sum(v.nbytes for _, v in tree_flatten(self.model.parameters())))

    def memory(self) -> dict[str, Any]:
        info = super().memory()
        info["mlx_active_bytes"] = int(mx.get_active_memory())
        info["mlx_peak_bytes"] = int(mx.get_peak_memory())
        info["mlx_cache_bytes"] = int(mx.get_cache_memory())
        return info

    def _unload(self) -> None:
        self.model = None
        mx.clear_cache()


def _check_folder(path: Path) -> None:
    if path.is_file() and path.suffix == ".gguf":
        raise InvalidModel(f"{path.name} is a GGUF file, which mlx-lm does not load: use backend='llamacpp'")
    if not path.is_dir():
        raise InvalidModel(f"the mlx backend loads a model folder, but {path} is not a folder")
    if not (path / "config.json").exists():
        raise InvalidModel(f"{path} has no config.json: point at the folder that holds the model's config.json")
    if not any(path.glob("*.safetensors")):
        raise InvalidModel(f"{path} has no .safetensors weights, which mlx-lm needs: convert the checkpoint "
                           "with `python -m mlx_lm convert --hf-path ...`")


def load(target: LoadTarget) -> MLXLoaded:
    """Load a local HF or MLX folder with mlx-lm. ``options["adapter_path"]`` applies LoRA adapters."""
    path = Path(target.path)
    _check_folder(path)
    if target.quantization not in ("none", None, "mlx-4bit", "mlx-8bit", "mlx-3bit", "mlx-6bit"):
        raise InvalidSpec(f"the mlx backend does not quantize at load time ({target.quantization!r}): convert the "
                          "model with `python -m mlx_lm convert -q` and load that folder with quantization='none'")
    start = time.perf_counter()
    try:
        model, tokenizer = mlx_lm.load(str(path), adapter_path=target.options.get("adapter_path"),
                                       trust_remote_code=target.trust_remote_code)
    except (ValueError, FileNotFoundError) as exc:
        raise InvalidModel(f"mlx-lm could not load {path}: {exc}") from exc
    if target.dtype in ("float16", "bfloat16", "float32"):
        dtype = getattr(mx, target.dtype)
        # Cast only floating-point weights; packed quantized weights are uint32 and stay as they are.
        model.update(_cast_tree(model.parameters(), dtype))
        mx.eval(model.parameters())
    loaded = MLXLoaded(target, model, tokenizer)
    loaded.load_s = time.perf_counter() - start
    return loaded


def _cast_tree(tree: Any, dtype: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _cast_tree(v, dtype) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cast_tree(v, dtype) for v in tree]
    if isinstance(tree, mx.array) and mx.issubdtype(tree.dtype, mx.floating):
        return tree.astype(dtype)
    return tree
