"""Quantize a local Hugging Face model folder with the real libraries: ``toolkit.quantize(model, method)``.

=================  =====================================================  ===========================
method             made by                                                format users meet on hubs
=================  =====================================================  ===========================
gptq-4bit          gptqmodel GPTQ, 4-bit, group 128                       ``quant_method: gptq``
awq-4bit           gptqmodel AWQ, 4-bit, group 128, GEMM layout           ``quant_method: awq``
ct-gptq-4bit       llm-compressor GPTQModifier W4A16 (symmetric)          compressed-tensors
ct-awq-4bit        llm-compressor AWQModifier W4A16_ASYM (zero points)    compressed-tensors
gguf-f32/f16       llama.cpp ``convert_hf_to_gguf.py``                    GGUF
gguf-q8_0/q4_k_m   llama.cpp ``llama_model_quantize`` from gguf-f32       GGUF
mlx-4bit/8bit      ``mlx_lm.convert``, affine, group 64                   MLX
=================  =====================================================  ===========================

Each build runs in its own process (the quantization libraries patch global state) with one CPU
thread (fixed float-sum order, so builds are deterministic, and no thread oversubscription on a
shared machine), writes into a temporary folder next to its final place and is renamed into place
only when complete, under a file lock: a killed build leaves no half folder, and a concurrent
builder of the same variant waits and reuses the result.

Builds are cached under ``$TOOLKIT_CACHE`` (default ``~/.cache/toolkit``) in a folder named by a
hash of the model's files (their content), the calibration text and :data:`RECIPE`; a changed model,
text or recipe builds anew beside the old builds. Each build's manifest records the versions of the
libraries that made it; a build whose libraries have another version here is made again (in place,
atomically, under the lock) by the process that can build it, and used as it is by one that cannot
(e.g. the vLLM environment, which has no gptqmodel, reuses the main environment's builds).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit import launcher
from toolkit.data import CALIBRATION
from toolkit.errors import BackendUnavailable, InvalidModel, InvalidSpec, ModelNotFound, ToolkitError
from toolkit.measuring.environment import library_versions

MANIFEST = ".toolkit-build.json"
# Bump when a builder's recipe changes what it makes (calibration size, grid, settings): every
# cached build is then made again, beside the old ones.
RECIPE = 2
_HF = ("torch", "transformers", "tokenizers", "safetensors")


@dataclass(frozen=True)
class Builder:
    """How one variant is made.

    Attributes:
        description: One line: the library and its settings.
        requires: Import names that must be installed (checked without importing them).
        extra: The pip extra that installs them.
        base: The variant it is made from (None: from the model folder itself).
        gguf_type: For GGUF variants, the llama.cpp type in the file name (``tiny-q4_k_m.gguf``).
        adapter: A LoRA adapter for the model rather than a model (the built-in tiny model's).
        libraries: Distributions whose versions decide what it makes (recorded in the manifest).
    """

    description: str
    requires: tuple[str, ...]
    extra: str
    base: str | None = None
    gguf_type: str | None = None
    adapter: bool = False
    libraries: tuple[str, ...] = _HF


_GPTQMODEL = ("gptqmodel", "optimum", *_HF)
_CT = ("llmcompressor", "compressed-tensors", "datasets", *_HF)
_GGUF = ("gguf", "llama-cpp-python", *_HF)  # the converter is the llama-cpp-python sdist's
_MLX = ("mlx", "mlx-lm")
BUILDERS: dict[str, Builder] = {
    "gptq-4bit": Builder("gptqmodel GPTQ, 4-bit, group 128", ("gptqmodel", "optimum"), "quant",
                         libraries=_GPTQMODEL),
    "awq-4bit": Builder("gptqmodel AWQ, 4-bit, group 128, GEMM layout (torch kernels)", ("gptqmodel", "optimum"),
                        "quant", libraries=_GPTQMODEL),
    "ct-gptq-4bit": Builder("llm-compressor GPTQModifier W4A16 (symmetric)",
                            ("llmcompressor", "compressed_tensors", "datasets"), "quant", libraries=_CT),
    "ct-awq-4bit": Builder("llm-compressor AWQModifier W4A16_ASYM (zero points)",
                           ("llmcompressor", "compressed_tensors", "datasets"), "quant", libraries=_CT),
    "gguf-f32": Builder("llama.cpp convert_hf_to_gguf.py, f32", ("torch", "transformers"), "hf", gguf_type="f32",
                        libraries=_GGUF),
    "gguf-f16": Builder("llama.cpp convert_hf_to_gguf.py, f16", ("torch", "transformers"), "hf", gguf_type="f16",
                        libraries=_GGUF),
    "gguf-q8_0": Builder("llama.cpp llama_model_quantize Q8_0 from gguf-f32", ("llama_cpp",), "gguf",
                         base="gguf-f32", gguf_type="q8_0", libraries=("llama-cpp-python",)),
    "gguf-q4_k_m": Builder("llama.cpp llama_model_quantize Q4_K_M from gguf-f32", ("llama_cpp",), "gguf",
                           base="gguf-f32", gguf_type="q4_k_m", libraries=("llama-cpp-python",)),
    "mlx-4bit": Builder("mlx_lm.convert, affine 4-bit, group 64", ("mlx", "mlx_lm"), "mlx", libraries=_MLX),
    "mlx-8bit": Builder("mlx_lm.convert, affine 8-bit, group 64", ("mlx", "mlx_lm"), "mlx", libraries=_MLX),
    # LoRA adapters, made for the built-in tiny model (toolkit.tiny("lora")), not by quantize()
    "lora": Builder("peft LoRA r 8 on every linear layer, 20 steps on the calibration text", ("peft",), "hf",
                    adapter=True, libraries=("peft", *_HF)),
    "lora-gguf": Builder("llama.cpp convert_lora_to_gguf.py from lora", ("torch",), "hf", base="lora",
                         gguf_type="lora-f32", adapter=True, libraries=_GGUF),
    "lora-mlx": Builder("lora in mlx-lm's adapter layout", ("mlx", "mlx_lm"), "mlx", base="lora", adapter=True,
                        libraries=_MLX),
}
METHODS = tuple(name for name, b in BUILDERS.items() if not b.adapter)  # what quantize() makes


def cache_root() -> Path:
    """Where built variants live: ``$TOOLKIT_CACHE`` or ``~/.cache/toolkit``."""
    root = os.environ.get("TOOLKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "toolkit")
    return Path(root)


# --- cache keys -------------------------------------------------------------------------------------

_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) in this process and in the cache
    (``digests.json``), so that a multi-GB model is read once, not on every call."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    store = cache_root() / "digests.json"
    try:
        known = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    name = f"{key[0]}|{key[1]}|{key[2]}"
    if name not in known:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        known[name] = digest.hexdigest()
        if st.st_size > 64 << 20:  # worth remembering across processes
            _write_atomic(store, json.dumps(known, indent=0))
    _DIGESTS[key] = known[name]
    return known[name]


def content_digest(model: Path) -> str:
    """sha256 over a model's files (a folder's top-level files, or one file): names and content."""
    files = [model] if model.is_file() else sorted(p for p in model.iterdir() if p.is_file()
                                                   and not p.name.startswith("."))
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{file_digest(f)}\0".encode())
    return digest.hexdigest()


def build_key(model: Path, calibration: Path | None = None) -> str:
    """12 hex digits: the model's content, the calibration text and the recipe. The folder of a
    model's builds is named by it."""
    parts = {"recipe": RECIPE, "model": content_digest(model), "calibration": file_digest(calibration or CALIBRATION)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --- checks -----------------------------------------------------------------------------------------


def check_method(method: str, known: tuple[str, ...] = METHODS) -> str:
    if method not in known:
        raise InvalidSpec(f"unknown quantization method {method!r}: choose one of {', '.join(known)}")
    return method


def check_source(model: str | os.PathLike, method: str) -> Path:
    """The model folder to quantize, or an error saying what is wrong with it and what to pass."""
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelNotFound(f"{path} does not exist: quantize needs a local transformers model folder "
                            "(config.json + *.safetensors)")
    if path.is_file():
        kind = "a GGUF file" if path.suffix == ".gguf" else "a file"
        raise InvalidModel(f"{path.name} is {kind}, but {method} is made from Hugging Face weights: pass a "
                           "transformers model folder (config.json + *.safetensors)"
                           + (", e.g. the one transformers dequantizes from it (see toolkit builtin smollm2)"
                              if path.suffix == ".gguf" else ""))
    if not (path / "config.json").exists():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f" (it holds {ggufs[0]}: a GGUF model is already quantized)" if ggufs else ""
        raise InvalidModel(f"{path} has no config.json, so it is not a transformers model folder{hint}: {method} is "
                           "made from Hugging Face weights (config.json + *.safetensors)")
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        what = (f"only pickle weights ({', '.join(pickles[:3])}), which toolkit does not unpickle: convert them "
                "to safetensors first") if pickles else "no *.safetensors weights"
        raise InvalidModel(f"{path} holds {what}; quantize reads safetensors checkpoints")
    try:
        config = json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise InvalidModel(f"{path / 'config.json'} is not valid JSON ({exc})") from None
    if isinstance(config, dict) and config.get("quantization_config"):
        q = config["quantization_config"].get("quant_method", "?")
        raise InvalidModel(f"{path} is already quantized (quant_method: {q}): quantize a full-precision folder")
    return path


def missing_libraries(variant: str) -> list[str]:
    """Import names the variant's builder needs that are not installed (checked without importing them)."""
    import importlib.util

    spec = BUILDERS.get(variant)
    return [m for m in spec.requires if importlib.util.find_spec(m) is None] if spec else []


def check_libraries(variant: str) -> None:
    """Refuse before building when a library the builder needs is missing, naming the pip extra."""
    missing = missing_libraries(variant)
    if missing:
        spec = BUILDERS[variant]
        raise BackendUnavailable(f"building {variant} needs {', '.join(missing)}, which is not installed: "
                                 f"pip install 'toolkit[{spec.extra}]'")


# --- building ---------------------------------------------------------------------------------------


def result_path(folder: Path, variant: str, stem: str) -> Path:
    """Where a built variant's model is inside its folder: the folder, or the .gguf file in it (named
    ``<stem>-<type>.gguf`` when it was built; a cached build keeps the name it was built with)."""
    kind = BUILDERS[variant].gguf_type if variant in BUILDERS else None
    if not kind:
        return folder
    made = sorted(folder.glob("*.gguf"))
    return made[0] if len(made) == 1 else folder / f"{stem}-{kind}.gguf"


def versions_for(variant: str) -> dict[str, str]:
    """The installed versions of the libraries that decide what ``variant``'s builder makes."""
    return library_versions(BUILDERS[variant].libraries if variant in BUILDERS else _HF)


def is_built(folder: Path) -> bool:
    """Whether a finished build is in ``folder`` (whatever made it)."""
    return (folder / MANIFEST).exists()


def is_current(folder: Path, variant: str) -> bool:
    """A finished build, made with the library versions installed here, or one this environment
    could not make again anyway (its builder's libraries are missing here): use it as it is."""
    if not is_built(folder):
        return False
    if missing_libraries(variant):
        return True
    try:
        made_with = json.loads((folder / MANIFEST).read_text()).get("versions", {})
    except (OSError, ValueError):
        return False
    return all(made_with.get(k) == v for k, v in versions_for(variant).items())


def build(source: Path, variant: str, folder: Path, *, stem: str, builder: str | None = None,
          base_path: Path | None = None, calibration: Path | None = None, rebuild: bool = False,
          label: str = "") -> None:
    """Build one variant into ``folder`` (its final place), unless it is there already.

    The builder runs in a fresh process with its output in a temporary sibling folder, renamed into
    place when complete; a file lock makes a concurrent builder of the same folder wait for this one.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current(folder, variant) and not rebuild:
            return  # built by a concurrent process while this one waited
        for stale in folder.parent.glob(f".{folder.name}-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is readable like any model folder
        log = folder.parent / f"{folder.name}.log"
        start = time.perf_counter()
        try:
            settings = _run_builder(builder or variant, source, tmp, log, stem=stem, base_path=base_path,
                                    calibration=calibration, label=label or f"{stem} {variant}")
            manifest = {"variant": variant, "builder": builder or variant, "source": str(source),
                        "base": str(base_path) if base_path else None, "recipe": RECIPE,
                        "calibration": str(calibration or CALIBRATION), "settings": settings,
                        "seconds": round(time.perf_counter() - start, 1),
                        "versions": versions_for(variant),
                        "files": sorted(p.name for p in tmp.iterdir())}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


# Environment of a builder process. One thread everywhere: on 2 shared cores, two OpenMP threads
# made the AWQ grid searches 4x slower in CPU time (each parallel region waits for a descheduled
# thread), and a fixed thread count fixes the order of float sums, so builds are reproducible.
BUILD_ENV = {
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
    "GPTQMODEL_CPU_WORKERS": "2",  # gptqmodel stalls on 2-core machines without it
    # gptqmodel JIT-compiles a C++ packing extension on first use (30-60 s on 2 cores, a compiler
    # needed); its Python path packs the same bits (checked: byte-identical tensors).
    "GPTQMODEL_DISABLE_PACK_EXT": "1",
}


def _run_builder(builder: str, source: Path, out: Path, log: Path, *, stem: str, base_path: Path | None,
                 calibration: Path | None, label: str) -> dict[str, Any]:
    env = {**BUILD_ENV, **{k: os.environ[k] for k in BUILD_ENV if k in os.environ}}
    kwargs: dict[str, Any] = {"builder": builder, "source": str(source.resolve()), "out": str(out.resolve()),
                              "stem": stem, "base": str(base_path.resolve()) if base_path else None,
                              "calibration": str(calibration.resolve()) if calibration else None}
    # A scratch working folder: some libraries (gptqmodel) write log folders into the cwd.
    with tempfile.TemporaryDirectory(prefix="toolkit-build-") as scratch:
        outcome = launcher.run("toolkit.builtin.builders:build", kwargs, log=log, env=env, cwd=scratch)
    if not outcome.ok:
        first = (outcome.error or "").strip().splitlines()[0] if outcome.error else "no error text"
        raise ToolkitError(f"building {label} failed ({first}); full log: {log}\n" + outcome.output)
    return dict((outcome.value or {}).get("settings") or {})


def chain(variant: str) -> list[str]:
    """The variant and those it is made from, base first."""
    out = [variant]
    while BUILDERS.get(out[-1]) is not None and BUILDERS[out[-1]].base is not None:
        out.append(BUILDERS[out[-1]].base)  # type: ignore[arg-type]
    return out[::-1]


def ensure(source: Path, variant: str, root: Path, *, stem: str, calibration: Path | None = None,
           rebuild: bool = False, progress: bool = True) -> Path:
    """The path of ``variant`` of ``source`` under ``root`` (the folder of this model's builds),
    building it and what it is made from first when missing."""
    from tqdm.auto import tqdm

    steps = chain(variant)
    todo = [v for v in steps if (rebuild and v == variant) or not is_current(root / v, v)]
    for step in todo:
        check_libraries(step)
    bar = tqdm(todo, desc=f"quantizing {stem}", unit="variant", disable=not progress or not todo)
    for step in bar:
        bar.set_postfix_str(step)
        base = BUILDERS[step].base if step in BUILDERS else None
        build(source, step, root / step, stem=stem, calibration=calibration, rebuild=rebuild and step == variant,
              base_path=result_path(root / base, base, stem) if base else None)
    return result_path(root / variant, variant, stem)


def quantize(model: str | os.PathLike, method: str, *, calibration: str | os.PathLike | None = None,
             out: str | os.PathLike | None = None, rebuild: bool = False, progress: bool = True) -> Path:
    """Quantize a local transformers model folder with a real library, cached.

    Args:
        model: A folder with config.json and safetensors weights (full precision).
        method: One of :data:`METHODS` (``gptq-4bit``, ``awq-4bit``, ``ct-gptq-4bit``, ``ct-awq-4bit``,
            ``gguf-f32``, ``gguf-f16``, ``gguf-q8_0``, ``gguf-q4_k_m``, ``mlx-4bit``, ``mlx-8bit``).
        calibration: A text file for the calibrated methods (default: toolkit's bundled calibration
            text, 16k tokens of Python source); part of the cache key.
        out: Also place the result in this new folder (files hard-linked from the cache when they can be).
        rebuild: Build again even when a cached build exists.
        progress: Show a progress bar while building.

    Returns:
        The quantized model: a folder (GPTQ/AWQ, compressed-tensors, MLX) or a ``.gguf`` file.

    Raises:
        InvalidSpec: an unknown method (the message lists the valid ones).
        InvalidModel: not a transformers folder (a GGUF file, no config.json, pickle-only weights).
        BackendUnavailable: the method's library is missing (the message names the pip extra).
    """
    check_method(method)
    source = check_source(model, method)
    calib = Path(calibration).expanduser() if calibration else None
    if calib is not None and not calib.is_file():
        raise ModelNotFound(f"calibration text {calib} does not exist: pass a UTF-8 text file")
    root = cache_root() / "quantized" / build_key(source, calib)
    path = ensure(source, method, root, stem=source.resolve().name, calibration=calib, rebuild=rebuild,
                  progress=progress)
    return place(path, Path(out).expanduser()) if out else path


def place(path: Path, out: Path) -> Path:
    """Put a built model into a new folder ``out``: its files hard-linked (copied across file systems)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidSpec(f"--out {out} exists and is not an empty folder: choose a new folder")
    folder = path if path.is_dir() else path.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for f in folder.iterdir():
            if f.is_file() and (path.is_dir() or f == path):
                try:
                    os.link(f, tmp / f.name)
                except OSError:
                    shutil.copy2(f, tmp / f.name)
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out if path.is_dir() else out / path.name
