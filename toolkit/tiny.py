"""The built-in tiny model family: a trained ~6M-parameter Llama and its quantized variants.

The full-precision model ships inside the package (``toolkit/data/tiny``, trained by
``scripts/train_tiny.py``). Its variants are produced from it on first use by the real libraries
and cached under ``$TOOLKIT_CACHE`` (default ``~/.cache/toolkit``), keyed by the weights' hash:

=================  =====================================================  ===========================
variant            made by                                                format users meet on hubs
=================  =====================================================  ===========================
gptq-4bit          gptqmodel GPTQ, 4-bit, group 128                       ``quant_method: gptq``
awq-4bit           gptqmodel AWQ, 4-bit, group 128, GEMM layout           ``quant_method: awq``
ct-gptq-4bit       llm-compressor GPTQModifier W4A16 (symmetric)          compressed-tensors
ct-awq-4bit        llm-compressor AWQModifier W4A16_ASYM (zero points)    compressed-tensors
gguf-f32/f16       llama.cpp ``convert_hf_to_gguf.py``                    GGUF
gguf-q8_0/q4_k_m   llama.cpp ``llama_model_quantize`` from gguf-f32       GGUF
mlx-4bit/8bit      ``mlx_lm.convert``, affine, group 64                   MLX
lora               peft LoRA (r=8, all linear layers) trained ~10 s       peft adapter folder
lora-gguf          llama.cpp ``convert_lora_to_gguf.py`` from ``lora``    GGUF LoRA adapter
lora-mlx           ``lora`` rewritten in mlx-lm's adapter layout          mlx-lm ``adapters.safetensors``
=================  =====================================================  ===========================

``none``, ``bnb-4bit`` and ``bnb-8bit`` are the base folder (bitsandbytes quantizes at load time).
Each build runs in its own subprocess (the quantization libraries patch global state), writes into
a temporary folder and is renamed into place only when complete, under a file lock.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

DATA = Path(__file__).resolve().parent / "data"
BASE = DATA / "tiny"
CALIBRATION = DATA / "calibration.txt"
HELDOUT = DATA / "heldout.txt"
MANIFEST = ".toolkit-build.json"

BASE_ALIASES = ("none", "base", "fp32", "bnb-4bit", "bnb-8bit")
GGUF_TYPES = {"gguf-f32": "f32", "gguf-f16": "f16", "gguf-q8_0": "q8_0", "gguf-q4_k_m": "q4_k_m"}
# variant -> the variant it is built from (None: from the shipped weights)
VARIANTS: dict[str, str | None] = {
    "gptq-4bit": None, "awq-4bit": None, "ct-gptq-4bit": None, "ct-awq-4bit": None,
    "gguf-f32": None, "gguf-f16": None, "gguf-q8_0": "gguf-f32", "gguf-q4_k_m": "gguf-f32",
    "mlx-4bit": None, "mlx-8bit": None,
    "lora": None, "lora-gguf": "lora", "lora-mlx": "lora",
}
LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # converter source when llama-cpp-python is not installed
CONVERTERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
CALIBRATION_SEQ = 256
CALIBRATION_SAMPLES = 64
# The "lora" adapter: small enough to train in seconds on one core, large enough that its greedy
# output visibly differs from the base model's (measured: from the 4th token of "def add(a, b):\n").
LORA_RANK, LORA_ALPHA, LORA_STEPS, LORA_BATCH, LORA_LR = 8, 16, 20, 4, 3e-3
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_GGUF = "tiny-lora-f32.gguf"
ADAPTERS = ("lora", "lora-gguf", "lora-mlx")  # LoRA adapters for the base model, not models


def cache_root() -> Path:
    """Where built variants live: ``$TOOLKIT_CACHE`` or ``~/.cache/toolkit``."""
    root = os.environ.get("TOOLKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "toolkit")
    return Path(root)


_HASH: dict[Path, str] = {}


def weights_hash(base: Path = BASE) -> str:
    """First 12 hex digits of the sha256 of the shipped weights: the cache key of every variant."""
    if base not in _HASH:
        digest = hashlib.sha256()
        with open(base / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH[base] = digest.hexdigest()[:12]
    return _HASH[base]


def variant_dir(variant: str) -> Path:
    return cache_root() / "tiny" / weights_hash() / variant


def names() -> list[str]:
    """Every model name ``tiny()`` accepts; it also accepts the LoRA adapters in :data:`ADAPTERS`."""
    return ["none", "bnb-4bit", "bnb-8bit", *(v for v in VARIANTS if v not in ADAPTERS)]


def _result_path(variant: str, folder: Path) -> Path:
    if variant == "lora-gguf":
        return folder / LORA_GGUF
    return folder / f"tiny-{GGUF_TYPES[variant]}.gguf" if variant in GGUF_TYPES else folder


def is_built(variant: str) -> bool:
    return variant in BASE_ALIASES or (variant_dir(variant) / MANIFEST).exists()


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
    from toolkit.errors import InvalidModel, InvalidSpec

    if not (BASE / "model.safetensors").exists():
        raise InvalidModel(f"the built-in model is missing from {BASE}: reinstall toolkit or run "
                           "scripts/train_tiny.py to make it")
    variant = variant or "none"
    if variant in BASE_ALIASES:
        return BASE
    if variant not in VARIANTS:
        raise InvalidSpec(f"unknown tiny variant {variant!r}: choose one of {', '.join([*names(), *ADAPTERS])}")
    chain = [variant]
    while VARIANTS[chain[-1]] is not None:
        chain.append(VARIANTS[chain[-1]])  # type: ignore[arg-type]
    todo = [v for v in reversed(chain) if rebuild and v == variant or not is_built(v)]
    if todo:
        _build_all(todo, progress, rebuild)
    return _result_path(variant, variant_dir(variant))


def _build_all(variants: list[str], progress: bool, rebuild: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(variants, desc="building tiny variants", unit="variant", disable=not progress)
    for variant in bar:
        bar.set_postfix_str(variant)
        _build_locked(variant, rebuild)


def _build_locked(variant: str, rebuild: bool) -> None:
    import fcntl

    from toolkit.bench import library_versions

    final = variant_dir(variant)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{variant}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder of the same variant waits here
        if (final / MANIFEST).exists() and not rebuild:
            return  # built by a concurrent process while this one waited
        tmp = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=final.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any model folder
        log = final.parent / f"{variant}.log"
        start = time.perf_counter()
        try:
            _run_builder(variant, tmp, log)
            manifest = {"variant": variant, "source": str(BASE), "weights_sha256_12": weights_hash(),
                        "seconds": round(time.perf_counter() - start, 1), "versions": library_versions(),
                        "files": sorted(p.name for p in tmp.iterdir())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _run_builder(variant: str, out: Path, log: Path) -> None:
    from toolkit.errors import ToolkitError

    cmd = [sys.executable, "-m", "toolkit.tiny", "--build", variant, "--out", str(out.resolve())]
    env = dict(os.environ)
    env.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # gptqmodel stalls on 2-core machines without it
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A scratch working folder: some libraries (gptqmodel) write log folders into the cwd.
    with open(log, "w") as f, tempfile.TemporaryDirectory(prefix="toolkit-build-") as scratch:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=scratch)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise ToolkitError(f"building the tiny {variant} variant failed (exit {proc.returncode}); "
                           f"full log: {log}\n" + "\n".join(tail))


# --- builders: each runs in its own process (python -m toolkit.tiny --build VARIANT --out DIR) ----

def calibration_ids() -> list[list[int]]:
    """Fixed calibration sequences (from training text, never the held-out text)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(BASE)
    ids = tok(CALIBRATION.read_text(encoding="utf-8")).input_ids
    n = min(CALIBRATION_SAMPLES, len(ids) // CALIBRATION_SEQ)
    return [ids[i * CALIBRATION_SEQ:(i + 1) * CALIBRATION_SEQ] for i in range(n)]


def _seed() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _copy_tokenizer(out: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (BASE / name).exists() and not (out / name).exists():
            shutil.copy2(BASE / name, out / name)


def _build_gptqmodel(out: Path, method: str) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization.config import FORMAT, METHOD
    from gptqmodel.utils.backend import BACKEND

    _seed()
    calib = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration_ids()]
    if method == "awq":
        qc = QuantizeConfig(bits=4, group_size=128, quant_method=METHOD.AWQ, format=FORMAT.GEMM,
                            offload_to_disk=False)
        backend = BACKEND.AWQ_TORCH  # the default AWQ backend asks for CUDA
    else:
        qc = QuantizeConfig(bits=4, group_size=128, offload_to_disk=False)
        backend = BACKEND.AUTO
    model = GPTQModel.load(str(BASE), qc, device="cpu")
    model.quantize(calib, batch_size=8, backend=backend)
    model.save(str(out))
    _copy_tokenizer(out)


def _build_llmcompressor(out: Path, method: str) -> None:
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.pipelines.cache import IntermediatesCache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # llm-compressor pins AWQ's cached activations unconditionally, which needs an accelerator;
    # on a CPU-only machine pinning buys nothing, so it becomes a no-op.
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    _seed()
    rows = calibration_ids()
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    if method == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        recipe = AWQModifier(targets=["Linear"], scheme="W4A16_ASYM", ignore=["lm_head"])
    else:
        from llmcompressor.modifiers.quantization import GPTQModifier

        recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=CALIBRATION_SEQ,
            num_calibration_samples=len(rows), shuffle_calibration_samples=False)
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(BASE).save_pretrained(out)
    _copy_tokenizer(out)


def llama_cpp_source() -> Path:
    """llama.cpp's converters (``convert_hf_to_gguf.py`` and ``convert_lora_to_gguf.py`` with their
    ``conversion`` and ``gguf-py`` packages) ship only in the llama-cpp-python sdist: fetch that sdist
    from the package index once, for the installed version, and keep just those files in the cache."""
    import tarfile

    from toolkit.errors import ToolkitError

    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:  # converting needs only the sdist, not the build
        version = LLAMA_CPP_PYTHON_VERSION
    dest = cache_root() / f"llama.cpp-convert-{version}"
    if all((dest / name).exists() for name in CONVERTERS):
        return dest
    sdists = cache_root() / "sdist"
    sdists.mkdir(parents=True, exist_ok=True)
    archive = sdists / f"llama_cpp_python-{version}.tar.gz"
    if not archive.exists():
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                               f"llama-cpp-python=={version}", "-d", str(sdists)], capture_output=True, text=True)
        if proc.returncode != 0 or not archive.exists():
            raise ToolkitError(f"could not download the llama-cpp-python {version} sdist (it holds llama.cpp's GGUF "
                               f"converter): {proc.stderr.strip()[-500:]}\nDownload it into {sdists} by hand.")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = (*CONVERTERS, "conversion/", "gguf-py/")
    tmp = Path(tempfile.mkdtemp(dir=cache_root()))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                   and m.name[len(prefix):].startswith(wanted) and (m.isfile() or m.isdir())]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    if dest.exists():  # extracted before convert_lora_to_gguf.py was kept: add only what is missing
        for name in CONVERTERS:
            if not (dest / name).exists():
                os.replace(tmp / name, dest / name)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, dest)
    return dest


def _convert_gguf(out: Path, outtype: str) -> None:
    import runpy

    src = llama_cpp_source()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    from conversion.base import TextModel  # type: ignore[import-not-found]

    # The converter identifies a BPE pre-tokenizer by hashing its output on a probe text, and only
    # knows published tokenizers. Ours is byte-level BPE with GPT-2's split regex, so "gpt-2" is the
    # accurate name; nothing else in the conversion changes.
    TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    target = out / f"tiny-{outtype}.gguf"
    sys.argv = ["convert_hf_to_gguf.py", str(BASE), "--outfile", str(target), "--outtype", outtype]
    runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


def _quantize_gguf(out: Path, variant: str) -> None:
    import ctypes

    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    kind = GGUF_TYPES[variant]
    src = tiny(VARIANTS[variant], progress=False)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out / f"tiny-{kind}.gguf").encode(),
                                        ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def _build_mlx(out: Path, bits: int) -> None:
    from mlx_lm import convert

    out.rmdir()  # mlx_lm.convert refuses an existing folder
    convert(hf_path=str(BASE), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=64)
    _copy_tokenizer(out)


def _build_lora(out: Path) -> None:
    """A peft LoRA adapter on every linear layer, trained briefly on the calibration text."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # one thread: a fixed order of float sums, so every build is the same
    _seed()
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32)
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    rows = torch.tensor(calibration_ids())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LORA_LR, weight_decay=0.0)
    model.train()
    for step in range(LORA_STEPS):
        first = step * LORA_BATCH % len(rows)
        batch = rows[first:first + LORA_BATCH]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        print(f"step {step}: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out)
    for file in out.iterdir():  # safetensors writes through a private temp file (0600)
        file.chmod(0o644)


def _convert_lora_gguf(out: Path) -> None:
    import runpy

    src = llama_cpp_source()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    # --base: the converter reads only the base model's config.json from it (no tokenizer, no weights).
    sys.argv = ["convert_lora_to_gguf.py", str(tiny("lora", progress=False)), "--base", str(BASE),
                "--outfile", str(out / LORA_GGUF), "--outtype", "f32"]
    runpy.run_path(str(src / "convert_lora_to_gguf.py"), run_name="__main__")


def _build_lora_mlx(out: Path) -> None:
    from toolkit.backends.mlx import peft_to_mlx

    peft_to_mlx(tiny("lora", progress=False), out)


BUILDERS: dict[str, Callable[[Path], None]] = {
    "gptq-4bit": lambda out: _build_gptqmodel(out, "gptq"),
    "awq-4bit": lambda out: _build_gptqmodel(out, "awq"),
    "ct-gptq-4bit": lambda out: _build_llmcompressor(out, "gptq"),
    "ct-awq-4bit": lambda out: _build_llmcompressor(out, "awq"),
    "gguf-f32": lambda out: _convert_gguf(out, "f32"),
    "gguf-f16": lambda out: _convert_gguf(out, "f16"),
    "gguf-q8_0": lambda out: _quantize_gguf(out, "gguf-q8_0"),
    "gguf-q4_k_m": lambda out: _quantize_gguf(out, "gguf-q4_k_m"),
    "mlx-4bit": lambda out: _build_mlx(out, 4),
    "mlx-8bit": lambda out: _build_mlx(out, 8),
    "lora": _build_lora,
    "lora-gguf": _convert_lora_gguf,
    "lora-mlx": _build_lora_mlx,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", default=None, help=f"one of: {', '.join(names())}")
    parser.add_argument("--all", action="store_true", help="build every variant")
    parser.add_argument("--rebuild", action="store_true", help="build again even if cached")


def main_tiny(args: argparse.Namespace) -> int:
    """CLI: print the path of the tiny model or a variant as the last line."""
    if args.all:
        for variant in VARIANTS:
            print(f"{variant}\t{tiny(variant, rebuild=args.rebuild)}")
        return 0
    print(tiny(args.variant, rebuild=args.rebuild))
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.tiny")
    parser.add_argument("--build", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    BUILDERS[args.build](args.out)
    return 0

from toolkit import _make_callable  # noqa: E402  (toolkit.tiny(...) calls tiny())

_make_callable(__name__)


if __name__ == "__main__":
    raise SystemExit(_main())
