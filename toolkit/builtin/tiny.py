"""The built-in tiny model family: a trained ~6M-parameter Llama and its quantized variants.

The full-precision model ships inside the package (``toolkit/data/tiny``, trained by
``scripts/train_tiny.py``). Its variants are :func:`toolkit.builtin.quantize.quantize`'s methods
applied to it (see that module for what makes each one), plus LoRA adapters for it:

=================  =====================================================  ===========================
variant            made by                                                format
=================  =====================================================  ===========================
lora               peft LoRA (r=8, all linear layers) trained ~10 s       peft adapter folder
lora-gguf          llama.cpp ``convert_lora_to_gguf.py`` from ``lora``    GGUF LoRA adapter
lora-mlx           ``lora`` rewritten in mlx-lm's adapter layout          mlx-lm ``adapters.safetensors``
=================  =====================================================  ===========================

``none``, ``bnb-4bit`` and ``bnb-8bit`` are the base folder (bitsandbytes quantizes at load time).
Builds are cached under ``$TOOLKIT_CACHE/tiny/<key>/<variant>`` (default ``~/.cache/toolkit``), the
key a hash of the shipped files, the calibration text and the build recipe; each build runs in its
own subprocess, writes into a temporary folder and is renamed into place only when complete, under
a file lock.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from toolkit.builtin import quantize as q
from toolkit.builtin.quantize import MANIFEST, cache_root  # noqa: F401 - part of this module's API
from toolkit.data import TINY
from toolkit.errors import InvalidModel, InvalidSpec

BASE = TINY  # the shipped full-precision model
STEM = "tiny"  # GGUF files are named tiny-<type>.gguf
BASE_ALIASES = ("none", "base", "fp32", "bnb-4bit", "bnb-8bit")
GGUF_TYPES = {v: b.gguf_type for v, b in q.BUILDERS.items() if b.gguf_type and not b.adapter}
# variant -> the variant it is built from (None: from the shipped weights)
VARIANTS: dict[str, str | None] = {v: b.base for v, b in q.BUILDERS.items()}
ADAPTERS = tuple(v for v, b in q.BUILDERS.items() if b.adapter)  # LoRA adapters for the base model, not models
LORA_GGUF = f"{STEM}-lora-f32.gguf"

_HASH: dict[Path, str] = {}


def weights_hash(base: Path = BASE) -> str:
    """First 12 hex digits of the sha256 of the shipped weights (recorded in every build's manifest)."""
    if base not in _HASH:
        digest = hashlib.sha256()
        with open(base / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH[base] = digest.hexdigest()[:12]
    return _HASH[base]


def builds_root() -> Path:
    """The folder that holds the tiny model's built variants, one folder each."""
    return cache_root() / "tiny" / q.build_key(BASE)


def variant_dir(variant: str) -> Path:
    return builds_root() / variant


def names() -> list[str]:
    """Every model name ``tiny()`` accepts; it also accepts the LoRA adapters in :data:`ADAPTERS`."""
    return ["none", "bnb-4bit", "bnb-8bit", *(v for v in VARIANTS if v not in ADAPTERS)]


def is_built(variant: str) -> bool:
    return variant in BASE_ALIASES or q.is_built(variant_dir(variant))


def tiny(variant: str | None = None, *, rebuild: bool = False, progress: bool = True) -> Path:
    """Local path of the built-in tiny model or of one of its variants, building it on first use.

    Args:
        variant: ``None``/``"none"`` for the shipped model, a name from :func:`names`, or a LoRA
            adapter from :data:`ADAPTERS` (for ``Loaded.load_adapter``).
        rebuild: Build again even when a cached build exists.
        progress: Show a progress bar while building.

    Returns:
        A folder (transformers, GPTQ/AWQ, compressed-tensors, MLX, a peft or mlx-lm adapter) or a
        ``.gguf`` file (a model, or the ``lora-gguf`` adapter).
    """
    if not (BASE / "model.safetensors").exists():
        raise InvalidModel(f"the built-in model is missing from {BASE}: reinstall toolkit or run "
                           "scripts/train_tiny.py to make it")
    variant = variant or "none"
    if variant in BASE_ALIASES:
        return BASE
    if variant not in VARIANTS:
        raise InvalidSpec(f"unknown tiny variant {variant!r}: choose one of {', '.join([*names(), *ADAPTERS])}")
    return q.ensure(BASE, variant, builds_root(), stem=STEM, rebuild=rebuild, progress=progress)
