"""mlx-lm backend: full-precision HF folders and MLX-converted (``mlx-4bit``/``mlx-8bit``) folders.

Runs on Apple silicon, and on Linux CPUs with ``mlx[cpu]``. Generation is a loop over
``mlx_lm.generate_step`` so every token is timed; logprobs come from one forward pass.

LoRA adapters (mlx-lm's ``adapters.safetensors`` folders, or peft folders converted in memory by
:func:`peft_to_mlx`) are held apart from the model; the active one is put in with mlx-lm's
``linear_to_lora_layers`` and taken out with ``remove_lora_layers``, which puts the original
layers back, so the base model's outputs return exactly.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from toolkit.facts.blas import prefer_fast_blas_for_mlx

prefer_fast_blas_for_mlx()  # before mlx is imported: which library answers its BLAS calls is bound then

import mlx.core as mx  # noqa: E402
import mlx.nn as nn
import mlx_lm
import mlx_lm.utils
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.sample_utils import make_sampler
from mlx_lm.tuner.utils import linear_to_lora_layers, remove_lora_layers

from toolkit import logs
from toolkit.backends.base import Loaded, LoadTarget
from toolkit.backends.generation import GenerationConfig, by_prefix, log_softmax
from toolkit.backends.tokenizer import HFTokenizerMixin
from toolkit.errors import InvalidModel, InvalidSpec, ModelNotFound
from toolkit.facts.process import large_frees_returned
from toolkit.planning.memory import MLX_GROUP_SIZE


class MLXLoaded(HFTokenizerMixin, Loaded):
    backend = "mlx"

    def __init__(self, target: LoadTarget, model: Any, tokenizer: Any) -> None:
        super().__init__(target)
        self.model = model
        self.tokenizer = tokenizer  # mlx_lm's TokenizerWrapper around the HF tokenizer
        self.eos_ids = set(int(t) for t in tokenizer.eos_token_ids)
        self._lora: dict[str, tuple[dict[str, Any], dict[str, mx.array]]] = {}  # name -> (lora_parameters, weights)

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
        # The prefill (the first step) frees its large arrays back to the system: mlx[cpu] takes them from
        # malloc, whose heap kept what the prefill freed below glibc's raised mmap threshold (up to 32 MiB),
        # and fragmentation grew it layer by layer: Gemma-3-1B (12 layers, 2k) peaked 190 MiB higher, and
        # only the prefill allocates arrays that large (see toolkit.facts.process.large_frees_returned).
        with large_frees_returned():
            first = next(steps, None)
        for token, _ in itertools.chain([first] if first is not None else [], steps):
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

    # -- LoRA adapters ------------------------------------------------------------------------------
    def _load_adapter(self, path: Path, name: str) -> None:
        from toolkit.backends.adapters import check_adapter_fits

        config, weights = read_adapter(path)
        if config.get("fine_tune_type", "lora") != "lora":
            raise InvalidModel(f"{path} is a {config['fine_tune_type']} adapter; toolkit runs LoRA adapters only")
        params = config["lora_parameters"]
        rank = int(params["rank"])
        shapes: dict[str, list[int]] = {}
        for key, w in weights.items():
            module, leaf = key.rsplit(".", 1)
            if leaf not in ("lora_a", "lora_b") or w.shape[1 if leaf == "lora_a" else 0] != rank:
                raise InvalidModel(f"{path}: {key} {tuple(w.shape)} is not a rank-{rank} LoRA matrix")
            shapes.setdefault(module, [0, 0])[leaf == "lora_b"] = w.shape[0 if leaf == "lora_a" else 1]
        modules = dict(self.model.named_modules())

        def layer_dims(module: str) -> tuple[int, int] | None:
            layer = modules.get(module)
            layer = getattr(layer, "linear", layer)  # the base layer inside an applied LoRALinear
            if not isinstance(layer, (nn.Linear, nn.QuantizedLinear)):
                return None
            out_dims, in_dims = layer.weight.shape
            return (in_dims * 32 // layer.bits if isinstance(layer, nn.QuantizedLinear) else in_dims), out_dims

        check_adapter_fits(path, {k: (v[0], v[1]) for k, v in shapes.items()}, layer_dims, self.target.path.name)
        self._lora[name] = (config, weights)

    def _set_adapter(self, name: str | None) -> None:
        remove_lora_layers(self.model)  # puts each LoRALinear's original layer back
        if name is not None:
            config, weights = self._lora[name]
            linear_to_lora_layers(self.model, config["num_layers"], config["lora_parameters"])
            self.model.load_weights(list(weights.items()), strict=False)
            mx.eval(self.model.parameters())

    def _remove_adapter(self, name: str) -> None:
        del self._lora[name]

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

    def model_peak_bytes(self, process_peak: int) -> int:
        # On Apple silicon the weights live in MLX's Metal heap, outside the RSS; on the CPU it is both.
        return max(process_peak, int(mx.get_peak_memory()))

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


def read_adapter(path: Path) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """An adapter folder as mlx-lm's ``adapter_config.json`` contents and weights: an mlx-lm folder
    (``adapters.safetensors``) as it is, a peft folder through :func:`peft_to_mlx`."""
    if not path.exists():
        raise ModelNotFound(f"LoRA adapter {path} does not exist: pass an mlx-lm or peft adapter folder")
    if path.is_dir() and (path / "adapters.safetensors").is_file():
        config = json.loads((path / "adapter_config.json").read_text())
        if "lora_parameters" not in config:
            raise InvalidModel(f"{path}/adapter_config.json has no lora_parameters: it is not an mlx-lm adapter")
        return config, mx.load(str(path / "adapters.safetensors"))
    return peft_to_mlx(path)


def peft_to_mlx(path: str | os.PathLike, out: str | os.PathLike | None = None
                ) -> tuple[dict[str, Any], dict[str, mx.array]]:
    """A peft LoRA folder in mlx-lm's adapter layout: the ``adapter_config.json`` contents and the
    ``adapters.safetensors`` weights, also written to the folder ``out`` when given.

    peft stores lora_A as (r, in) and lora_B as (out, r) and scales their product by
    ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA); mlx-lm's LoRALinear holds
    ``lora_a`` (in, r) and ``lora_b`` (r, out) and multiplies by ``scale``."""
    from toolkit.backends.adapters import peft_adapter_config

    path = Path(path)
    config = peft_adapter_config(path, "mlx")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise InvalidModel(f"{path} gives some layers their own rank or alpha, which mlx-lm's one LoRA scale "
                           "cannot express")
    rank = int(config["r"])
    scale = float(config["lora_alpha"]) / (math.sqrt(rank) if config.get("use_rslora") else rank)
    weights: dict[str, mx.array] = {}
    keys: set[str] = set()
    for key, value in mx.load(str(path / "adapter_model.safetensors")).items():
        name = key.removeprefix("base_model.model.")
        for suffix, leaf in ((".lora_A.weight", "lora_a"), (".lora_B.weight", "lora_b")):
            if name.endswith(suffix):
                module = name[: -len(suffix)]
                weights[f"{module}.{leaf}"] = value.T
                parts = module.split(".")  # mlx-lm names modules inside each transformer block
                keys.add(".".join(parts[3:]) if parts[1:2] == ["layers"] else module)
                break
        else:
            raise InvalidModel(f"{path} holds {key}, which is not a LoRA matrix (trained embeddings or "
                               "modules_to_save): mlx-lm's LoRA layers cannot apply it")
    mx.eval(list(weights.values()))
    mlx_config = {"fine_tune_type": "lora", "num_layers": -1,  # -1: every transformer block
                  "lora_parameters": {"rank": rank, "scale": scale, "dropout": 0.0, "keys": sorted(keys)}}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(out / "adapters.safetensors"), weights)
        (out / "adapter_config.json").write_text(json.dumps(mlx_config, indent=2) + "\n")
    return mlx_config, weights


def load(target: LoadTarget) -> MLXLoaded:
    """Load a local HF or MLX folder with mlx-lm. An unquantized folder planned as ``mlx-<bits>bit`` is
    quantized at load (affine, group 64, as ``mlx_lm convert -q``). The ``adapter`` option loads a LoRA
    adapter and makes it active (see ``Loaded.load_adapter``)."""
    path = Path(target.path)
    _check_folder(path)
    start = time.perf_counter()
    try:
        # lazily: each weight is read, cast and quantized in turn by _materialize, so no two full copies are alive
        model, tokenizer = mlx_lm.load(str(path), lazy=True, trust_remote_code=target.trust_remote_code)
    except (ValueError, FileNotFoundError) as exc:
        from importlib.metadata import version

        raise InvalidModel(f"mlx-lm {version('mlx-lm')} could not load {path.name}: {' '.join(str(exc).split()).rstrip('.')}. "
                           "If its architecture is newer than this mlx-lm, upgrade it (pip install -U mlx-lm) or use "
                           "--backend hf; if a file is corrupt or missing, re-download the model") from exc
    if target.dtype in ("float16", "bfloat16", "float32"):
        # Cast only floating-point weights; packed quantized weights are uint32 and stay as they are.
        model.update(_cast_tree(model.parameters(), getattr(mx, target.dtype)))
    bits = _bits_to_make(path, target.quantization)
    if bits:  # an unquantized folder planned as mlx-<bits>bit: quantized here, as mlx_lm convert -q would
        with logs.library_output():  # it prints "[INFO] Quantized model with ... bits per weight." to stdout
            model, _ = mlx_lm.utils.quantize_model(model, {}, MLX_GROUP_SIZE, bits)
    _materialize(model)
    loaded = MLXLoaded(target, model, tokenizer)
    loaded._activate_load_option()
    loaded.load_s = time.perf_counter() - start
    return loaded


def _bits_to_make(path: Path, quantization: str | None) -> int | None:
    """The bits to quantize to at load: those of ``mlx-<bits>bit`` when the folder is not already
    quantized (an MLX folder's config.json says ``quantization``), else None."""
    if not quantization or not quantization.startswith("mlx-"):
        return None
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    return None if config.get("quantization") else int(quantization[4:].removesuffix("bit"))


def _materialize(model: Any) -> None:
    """Evaluate a lazily loaded (and lazily cast or quantized) model one weight at a time.

    Each weight is read from the checkpoint, cast and quantized as it is evaluated, and the checkpoint's
    copy is freed before the next one is read, so the load holds the weights as planned plus one tensor
    in flight (:func:`toolkit.planning.memory.mlx_load_extras`). Evaluating the whole cast model at
    once, after an eager load, held every checkpoint copy beside its cast copy: an mlx peak of 10.6 GB
    for Qwen1.5-MoE-A2.7B with 2 layers in float32 from bfloat16, whose weights are 7.1 GB (7.7 GB now).
    """
    for _, value in tree_flatten(model.parameters()):
        mx.eval(value)


def _cast_tree(tree: Any, dtype: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _cast_tree(v, dtype) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cast_tree(v, dtype) for v in tree]
    if isinstance(tree, mx.array) and mx.issubdtype(tree.dtype, mx.floating):
        return tree.astype(dtype)
    return tree
