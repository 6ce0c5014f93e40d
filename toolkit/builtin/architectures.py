"""Random-initialised models of published architectures, built from their configs on demand.

The memory a backend needs depends on the shapes of a model (layers, heads, KV heads, head size,
vocabulary, sliding windows, experts, MLA), not on its weights. To measure it without a hub, this
module builds models with the *published* ``config.json`` of real models (kept in
``toolkit/data/architectures/<name>.json``, each naming its source) and random weights:

=====================  ======================================  ===============  ===========
name                   published model                         real layers      default
=====================  ======================================  ===============  ===========
llama-3.2-1b           meta-llama/Llama-3.2-1B                 16               16
qwen2.5-0.5b           Qwen/Qwen2.5-0.5B                       24               24
qwen2.5-1.5b           Qwen/Qwen2.5-1.5B                       28               28
gemma-3-1b             google/gemma-3-1b-pt (5 local : 1)      26               26
phi-3-mini-4k          microsoft/Phi-3-mini-4k-instruct        32               32
qwen1.5-moe-a2.7b      Qwen/Qwen1.5-MoE-A2.7B (60 experts)     24               2
deepseek-v2-lite       deepseek-ai/DeepSeek-V2-Lite (MLA)      27               2
=====================  ======================================  ===============  ===========

``build_random(name, layers=N)`` changes only the depth (and, for configs that list something per
layer, that list); everything else is the published config, written to the folder as it was
published (``config_for`` gives it). The weights are transformers' own initialisation under a fixed
seed, so two builds are byte-identical. The tokenizer is a dummy byte-level BPE with exactly the
real vocabulary size (so the embedding and output matrices have their real shapes), GPT-2's split
regex and one special token; it tokenizes any text but means nothing.

Formats: ``hf`` (safetensors + config.json + tokenizer), ``gguf-f16`` (llama.cpp's
``convert_hf_to_gguf.py``) and ``gguf-q4_k_m`` (``llama_model_quantize`` from the f16 file). Each
is built in its own process (the converter patches global state), into a temporary name that is
renamed into place when complete, under a file lock; they are cached under
``cache_root()/random/<name>-L<layers>-<dtype>-<hash>/`` and never committed.

    python -m toolkit.builtin.architectures qwen2.5-0.5b --layers 1 --formats hf,gguf-f16
"""

from __future__ import annotations

import argparse
import copy
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit import launcher
from toolkit.builtin.tiny import MANIFEST, cache_root
from toolkit.data import DATA
from toolkit.errors import InvalidSpec, ToolkitError

SPECS = DATA / "architectures"
FORMATS = ("hf", "gguf-f16", "gguf-q4_k_m")
DTYPES = {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}
SEED = 0
# Bump when a change to the builder changes what it writes (the cache key includes it).
BUILDER_VERSION = 1
# The converter writes this as general.name. llama.cpp's vocab loader special-cases names containing
# "phi3"/"phi-3" (it then requires </s>, <unk> and <s>), so the name must stay neutral.
GGUF_MODEL_NAME = "toolkit-random-init"
SPECIAL_TOKEN = "<|endoftext|>"
# Config keys that hold one entry per layer: cut to the built depth.
PER_LAYER_KEYS = ("layer_types",)


def names() -> list[str]:
    """The architectures :func:`build_random` knows (``toolkit/data/architectures/*.json``)."""
    return sorted(p.stem for p in SPECS.glob("*.json"))


def spec(name: str) -> dict[str, Any]:
    """The stored record of an architecture: ``name``, ``source``, ``comment``, ``config`` (the
    published config.json), and optionally ``default_layers`` and ``dropped_keys``."""
    path = SPECS / f"{name}.json"
    if not path.exists():
        raise InvalidSpec(f"unknown architecture {name!r}: choose one of {', '.join(names())}")
    return json.loads(path.read_text())


def published_config(name: str) -> dict[str, Any]:
    """The published config.json (less ``dropped_keys``), at its real depth."""
    return copy.deepcopy(spec(name)["config"])


def real_layers(name: str) -> int:
    return int(published_config(name)["num_hidden_layers"])


def default_layers(name: str) -> int:
    """The depth built when ``layers`` is not given: the real one unless the record says otherwise
    (the MoE models, whose real depth does not fit this project's machines)."""
    s = spec(name)
    return int(s.get("default_layers") or s["config"]["num_hidden_layers"])


def config_for(name: str, layers: int | None = None, dtype: str = "bfloat16") -> dict[str, Any]:
    """The config.json written for ``name`` at ``layers`` (default :func:`default_layers`): the
    published one with ``num_hidden_layers`` (and any per-layer list) changed, and the dtype."""
    if dtype not in DTYPES:
        raise InvalidSpec(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    cfg = published_config(name)
    n = default_layers(name) if layers is None else int(layers)
    if n < 1:
        raise InvalidSpec(f"layers must be at least 1, got {layers!r}")
    cfg["num_hidden_layers"] = n
    for key in PER_LAYER_KEYS:
        if isinstance(cfg.get(key), list):
            cfg[key] = cfg[key][:n]
    cfg["torch_dtype"] = dtype
    return cfg


def cache_key(name: str, layers: int | None = None, dtype: str = "bfloat16") -> str:
    """``L<layers>-<dtype>-<10 hex digits>``: the hash covers the config, the seed and the builder."""
    cfg = config_for(name, layers, dtype)
    blob = json.dumps({"config": cfg, "seed": SEED, "builder": BUILDER_VERSION}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"L{cfg['num_hidden_layers']}-{DTYPES[dtype]}-{digest}"


def model_dir(name: str, layers: int | None = None, dtype: str = "bfloat16") -> Path:
    return cache_root() / "random" / f"{name}-{cache_key(name, layers, dtype)}"


def _paths(folder: Path, name: str, layers: int) -> dict[str, Path]:
    stem = f"{name}-L{layers}"
    return {"hf": folder / "hf", "gguf-f16": folder / f"{stem}-f16.gguf",
            "gguf-q4_k_m": folder / f"{stem}-q4_k_m.gguf"}


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {"formats": {}}


def is_built(name: str, fmt: str, layers: int | None = None, dtype: str = "bfloat16") -> bool:
    return fmt in _manifest(model_dir(name, layers, dtype)).get("formats", {})


def build_random(name: str, *, layers: int | None = None, dtype: str = "bfloat16",
                 formats: tuple[str, ...] | list[str] = ("hf",), rebuild: bool = False,
                 progress: bool = True) -> dict[str, Path]:
    """Build (or find in the cache) a random-initialised model of a published architecture.

    Args:
        name: One of :func:`names`.
        layers: The depth; default :func:`default_layers` (the real depth, except for the MoE
            records). Everything but the depth is the published config.
        dtype: The weights' dtype in the safetensors folder (``bfloat16``, ``float16``, ``float32``).
        formats: Any of ``hf``, ``gguf-f16``, ``gguf-q4_k_m``. A GGUF needs the ``hf`` folder and
            q4_k_m the f16 file: they are built (and kept) too.
        rebuild: Build the requested formats again even when cached.
        progress: Print a line per built format (on stderr).

    Returns:
        ``{format: path}`` for the requested formats: the ``hf`` folder, the ``.gguf`` files.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InvalidSpec(f"unknown format {unknown[0]!r}: choose from {', '.join(FORMATS)}")
    cfg = config_for(name, layers, dtype)
    n = cfg["num_hidden_layers"]
    folder = model_dir(name, n, dtype)
    paths = _paths(folder, name, n)
    needed = set(formats)
    if needed & {"gguf-f16", "gguf-q4_k_m"}:
        needed.add("hf")
    if "gguf-q4_k_m" in needed:
        needed.add("gguf-f16")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder of the same model waits here
        manifest = _manifest(folder)
        for fmt in FORMATS:  # in dependency order
            if fmt not in needed:
                continue
            done = fmt in manifest["formats"] and paths[fmt].exists()
            if done and not (rebuild and fmt in formats):
                continue
            start = time.perf_counter()
            if progress:
                print(f"building {name} L{n} {dtype} {fmt} in {folder}", file=sys.stderr, flush=True)
            _build_format(name, cfg, fmt, folder, paths)
            seconds = round(time.perf_counter() - start, 1)
            manifest["formats"][fmt] = {"file": paths[fmt].name, "seconds": seconds}
            manifest.update({"name": name, "source": spec(name)["source"], "layers": n,
                             "real_layers": real_layers(name), "dtype": dtype, "seed": SEED,
                             "builder": BUILDER_VERSION, "versions": _versions()})
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if progress:
                print(f"built {fmt} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return {fmt: paths[fmt] for fmt in formats}


def _versions() -> dict[str, str]:
    from toolkit.measuring.environment import library_versions

    return library_versions(("torch", "transformers", "tokenizers", "safetensors", "llama-cpp-python", "gguf"))


def _build_format(name: str, cfg: dict, fmt: str, folder: Path, paths: dict[str, Path]) -> None:
    final = paths[fmt]
    if fmt == "hf":
        tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=folder))
        tmp.chmod(0o755)
        target = tmp
    else:
        tmp = final.with_name(f".{final.name}.partial")
        tmp.unlink(missing_ok=True)
        target = tmp
    log = folder / f"{fmt}.log"
    kwargs = {"fmt": fmt, "config": cfg, "out": str(target), "hf": str(paths["hf"]),
              "f16": str(paths["gguf-f16"])}
    try:
        with tempfile.TemporaryDirectory(prefix="toolkit-build-") as scratch:
            outcome = launcher.run("toolkit.builtin.architectures:_build_in_process", kwargs, log=log,
                                   env={"TOKENIZERS_PARALLELISM": "false"}, cwd=scratch)
        if not outcome.ok:
            raise ToolkitError(f"building {name} ({fmt}) failed ({(outcome.error or '').splitlines()[0][:300]}); "
                               f"full log: {log}\n" + outcome.output)
        if final.exists():
            shutil.rmtree(final) if final.is_dir() else final.unlink()
        os.replace(target, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()


# --- the builders (run in a fresh process through toolkit.launcher) -------------------------------


def _build_in_process(fmt: str, config: dict, out: str, hf: str, f16: str) -> dict:
    if fmt == "hf":
        _build_hf(config, Path(out))
    elif fmt == "gguf-f16":
        _convert_gguf(Path(hf), Path(out))
    else:
        _quantize(Path(f16), Path(out))
    return {"format": fmt}


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies are written in)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_tokenizer(vocab_size: int, out: Path) -> int:
    """Write a byte-level BPE tokenizer of exactly ``vocab_size`` tokens into ``out``: the 256
    byte tokens, then 2- and 3-character merges in a fixed order, then one special token
    (``<|endoftext|>``, the last id). Returns the number of tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = _bytes_to_unicode()
    target = vocab_size - 1
    if target < len(base):
        raise InvalidSpec(f"a vocabulary of {vocab_size} cannot hold the 256 byte tokens")
    vocab: dict[str, int] = {c: i for i, c in enumerate(base)}
    merges: list[tuple[str, str]] = []
    pairs: list[str] = []
    for a in base:
        for b in base:
            if len(vocab) >= target:
                break
            vocab[a + b] = len(vocab)
            merges.append((a, b))
            pairs.append(a + b)
        if len(vocab) >= target:
            break
    for a in base:
        for bc in pairs:
            if len(vocab) >= target:
                break
            if a + bc not in vocab:
                vocab[a + bc] = len(vocab)
                merges.append((a, bc))
        if len(vocab) >= target:
            break
    if len(vocab) != target:
        raise InvalidSpec(f"a vocabulary of {vocab_size} is larger than the dummy tokenizer can make")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([SPECIAL_TOKEN])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIAL_TOKEN, bos_token=SPECIAL_TOKEN,
                                   pad_token=SPECIAL_TOKEN)
    fast.save_pretrained(out)
    # llama.cpp's Phi-3 converter takes its GPT-2 (BPE) path only when tokenizer_config.json says so.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    tc["tokenizer_class"] = "GPT2Tokenizer"
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")
    return len(tok.get_vocab())


def _build_hf(config: dict, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = {k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "torch_dtype")}
    model_type = kwargs.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **kwargs)
    cfg.architectures = config.get("architectures")
    dtype = getattr(torch, config["torch_dtype"])
    torch.manual_seed(SEED)
    with torch.no_grad():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.eval()
    got = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__}: {got:,} parameters ({config['num_hidden_layers']} layers)", flush=True)
    model.save_pretrained(out, max_shard_size="1000GB")  # one safetensors file
    del model
    make_tokenizer(int(config["vocab_size"]), out)
    # The published config, as published (transformers would rewrite rope_theta/rope_scaling as
    # rope_parameters and add its defaults): readers see what a downloaded folder would hold.
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in out.iterdir():  # safetensors writes through a private temp file (0600)
        file.chmod(0o644)


def _convert_gguf(hf: Path, out: Path) -> None:
    import runpy

    from toolkit.builtin.builders import llama_cpp_source

    src = llama_cpp_source()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    from conversion.base import TextModel  # type: ignore[import-not-found]

    # The converter identifies a BPE pre-tokenizer by hashing its output on a probe text and knows only
    # published tokenizers; the dummy one uses GPT-2's split regex, so "gpt-2" is the accurate name.
    TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    config = json.loads((hf / "config.json").read_text())
    if config.get("model_type") == "deepseek_v2" and config.get("q_lora_rank") is None:
        # llama.cpp recognises DeepSeek-V2-Lite (no q LoRA) by its depth, 26 or 27 layers
        # (src/models/deepseek2.cpp load_arch_hparams), and requires deepseek2.attention.q_lora_rank
        # at any other depth. Its tensors are chosen by q_lora_rank > 0, so 0 says the same thing.
        from conversion.deepseek import DeepseekV2Model  # type: ignore[import-not-found]

        parameters = DeepseekV2Model.set_gguf_parameters

        def with_q_lora_rank(self: Any) -> None:
            parameters(self)
            self.gguf_writer.add_q_lora_rank(0)

        DeepseekV2Model.set_gguf_parameters = with_q_lora_rank
    sys.argv = ["convert_hf_to_gguf.py", str(hf), "--outfile", str(out), "--outtype", "f16",
                "--model-name", GGUF_MODEL_NAME]
    runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


def _quantize(src: Path, out: Path) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def weights_sha256(folder: str | os.PathLike) -> str:
    """sha256 of an ``hf`` folder's safetensors files (in name order): equal for equal weights."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m toolkit.builtin.architectures",
                                 description="Build a random-initialised model of a published architecture "
                                             "and print its paths.")
    ap.add_argument("name", help=f"one of: {', '.join(names())}")
    ap.add_argument("--layers", type=int, default=None, help="depth (default: the record's default depth)")
    ap.add_argument("--dtype", default="bfloat16", choices=list(DTYPES))
    ap.add_argument("--formats", default="hf", help=f"comma-separated, from {', '.join(FORMATS)} (default hf)")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    try:
        paths = build_random(args.name, layers=args.layers, dtype=args.dtype,
                             formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
                             rebuild=args.rebuild)
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for fmt, path in paths.items():
        print(f"{fmt}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
