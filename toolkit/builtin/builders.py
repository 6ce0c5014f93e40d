"""The variant builders. Each runs in its own process (through :mod:`toolkit.launcher`, called by
:func:`toolkit.builtin.quantize.build`), since the quantization libraries patch global state, and
writes into the folder it is given, from the model folder it is given.

Workarounds, each small: gptqmodel needs ``GPTQMODEL_CPU_WORKERS=2`` on 2 cores (set by the caller)
and ``BACKEND.AWQ_TORCH`` for AWQ without CUDA; llm-compressor's AWQ pins memory unconditionally (a
no-op on CPU); llama.cpp's converter identifies BPE pre-tokenizers by hash and knows only published
ones, so an unknown byte-level BPE tokenizer with GPT-2's split (the tiny model's) is named ``gpt-2``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

from toolkit.builtin.quantize import cache_root
from toolkit.data import CALIBRATION
from toolkit.errors import InvalidModel, ToolkitError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # converter source when llama-cpp-python is not installed
CONVERTERS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
# Calibration: 32 sequences of 256 tokens (8k tokens). 64 gave the same perplexity on the tiny
# model's variants (README "Build times") at twice the AWQ grid-search time.
CALIBRATION_SEQ = 256
CALIBRATION_SAMPLES = 32
# The "lora" adapter: small enough to train in seconds on one core, large enough that its greedy
# output visibly differs from the base model's (measured: from the 4th token of "def add(a, b):\n").
LORA_RANK, LORA_ALPHA, LORA_STEPS, LORA_BATCH, LORA_LR = 8, 16, 20, 4, 3e-3
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_SAMPLES = 64  # the adapter trains on its own fixed slice of the calibration text
# gptqmodel's AWQ searches each weight's clipping range (10 shrink steps) on 512 of the calibration
# tokens (its n_sample_token), with a broadcast multiply-and-sum per step: that search was 65% of an
# awq-4bit build here. It runs on 256 tokens (same grid, same perplexity on the tiny model: README
# "Build times"), its dot products as one batched matmul (see _awq_clip_search).
AWQ_CLIP_TOKENS = 256
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
                   "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")


def calibration_ids(source: Path, calibration: Path | None = None, samples: int | None = None,
                    seq: int = CALIBRATION_SEQ) -> list[list[int]]:
    """Fixed calibration sequences, tokenized by the model's own tokenizer (for the built-in tiny
    model: training text, never the held-out text)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source)
    ids = tok((calibration or CALIBRATION).read_text(encoding="utf-8"), add_special_tokens=False).input_ids
    n = min(samples or CALIBRATION_SAMPLES, len(ids) // seq)
    if n < 1:
        raise InvalidModel(f"the calibration text has {len(ids)} tokens, fewer than one sequence of {seq}: "
                           "pass a longer text")
    return [ids[i * seq:(i + 1) * seq] for i in range(n)]


GROUP_SIZE = 128  # 4-bit methods: scales per 128 input weights...


def group_size(source: Path, preferred: int = GROUP_SIZE) -> int:
    """...unless a linear layer's input width is not a multiple of 128 (SmolLM2: hidden 576): gptqmodel's
    AWQ refuses partial groups, so every calibrated method then uses the largest of 64, 32 that divides
    all of them (the manifest and ``quantization_config`` record it)."""
    config = json.loads((source / "config.json").read_text())
    config = config.get("text_config", config)
    hidden = int(config.get("hidden_size", 0))
    heads = int(config.get("num_attention_heads", 0) or 0)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    widths = [w for w in (hidden, heads * head_dim, int(config.get("intermediate_size", 0) or 0)) if w]
    for size in (preferred, 64, 32):
        if all(w % size == 0 for w in widths):
            return size
    return preferred


def _seed() -> None:
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    torch.set_num_threads(1)  # see quantize.BUILD_ENV
    torch.use_deterministic_algorithms(True, warn_only=True)


def _copy_tokenizer(source: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).exists() and not (out / name).exists():
            shutil.copy2(source / name, out / name)


def _build_gptqmodel(source: Path, out: Path, method: str, calibration: Path | None) -> dict:
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.quantization.config import FORMAT, METHOD
    from gptqmodel.utils.backend import BACKEND

    _seed()
    calib = [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in calibration_ids(source, calibration)]
    gs = group_size(source)
    if method == "awq":
        from gptqmodel.looper.awq_processor import AWQProcessor

        AWQProcessor._compute_best_clip = _awq_clip_search  # type: ignore[method-assign]
        qc = QuantizeConfig(bits=4, group_size=gs, quant_method=METHOD.AWQ, format=FORMAT.GEMM,
                            offload_to_disk=False)
        backend = BACKEND.AWQ_TORCH  # the default AWQ backend asks for CUDA
    else:
        qc = QuantizeConfig(bits=4, group_size=gs, offload_to_disk=False)
        backend = BACKEND.AUTO
    model = GPTQModel.load(str(source), qc, device="cpu")
    model.quantize(calib, batch_size=8, backend=backend)
    model.save(str(out))
    _copy_tokenizer(source, out)
    return {"bits": 4, "group_size": gs, "calibration_sequences": len(calib), "calibration_tokens": CALIBRATION_SEQ}


def _awq_clip_search(self, w, input_feat, n_grid: int = 20, max_shrink: float = 0.5,
                     n_sample_token: int = AWQ_CLIP_TOKENS):
    """gptqmodel's AWQ clipping search (``AWQProcessor._compute_best_clip``: per output channel and group,
    the largest |w| shrunk by 0, 1/n_grid, ... max_shrink, pseudo-quantized, keeping the bound with the least
    mean squared error of the group's dot products over the sampled tokens), the same steps with the dot
    products of all groups computed as one batched matmul: the broadcast multiply-and-sum it replaces is
    memory-bound (40x slower on this CPU for SmolLM2's 1536-wide down_proj)."""
    import torch

    out_features, in_features = w.shape
    gs = self.qcfg.group_size if self.qcfg.group_size > 0 else in_features
    x = input_feat.reshape(-1, in_features)
    x = x[::max(1, x.shape[0] // n_sample_token)]  # the same token sample
    x = x.reshape(x.shape[0], -1, gs).transpose(0, 1).to(device=w.device, dtype=w.dtype)  # [group, token, gs]
    weights = w.reshape(out_features, -1, gs)  # [out, group, gs]

    def outputs(block: torch.Tensor) -> torch.Tensor:  # [out, group, gs] -> [out, token, group]
        return torch.matmul(x, block.permute(1, 2, 0)).permute(2, 1, 0)

    batch = 256 if out_features % 256 == 0 else 64
    best_all = []
    for start in range(0, out_features, batch):
        block = weights[start:start + batch]
        org_max = block.abs().amax(dim=-1, keepdim=True)  # [out, group, 1]
        best, min_err = org_max.clone(), torch.full_like(org_max, 1e9)
        reference = outputs(block)
        clamped, quant = torch.empty_like(block), torch.empty_like(block)
        for step in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - step / n_grid)
            torch.clamp(block, -max_val, max_val, out=clamped)
            self._pseudo_quantize_tensor_into(clamped, quant)
            err = (outputs(quant) - reference).pow(2).mean(dim=1).view(min_err.shape)
            better = err < min_err
            min_err[better] = err[better]
            best[better] = max_val[better]
        best_all.append(best)
    return torch.cat(best_all, dim=0)  # [out, group, 1], as gptqmodel's


def _build_llmcompressor(source: Path, out: Path, method: str, calibration: Path | None) -> dict:
    import torch
    from compressed_tensors.quantization import preset_name_to_scheme
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.pipelines.cache import IntermediatesCache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # llm-compressor pins AWQ's cached activations unconditionally, which needs an accelerator;
    # on a CPU-only machine pinning buys nothing, so it becomes a no-op.
    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    _seed()
    rows = calibration_ids(source, calibration)
    ds = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    gs = group_size(source)
    scheme = preset_name_to_scheme("W4A16_ASYM" if method == "awq" else "W4A16", ["Linear"])
    scheme.weights.group_size = gs  # the preset's 128 unless the widths need smaller groups
    if method == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        recipe = AWQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])
    else:
        from llmcompressor.modifiers.quantization import GPTQModifier

        recipe = GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])
    oneshot(model=model, dataset=ds, recipe=recipe, max_seq_length=CALIBRATION_SEQ,
            num_calibration_samples=len(rows), shuffle_calibration_samples=False)
    model.save_pretrained(out, save_compressed=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    _copy_tokenizer(source, out)
    return {"bits": 4, "group_size": gs, "symmetric": method != "awq", "calibration_sequences": len(rows),
            "calibration_tokens": CALIBRATION_SEQ}


def llama_cpp_source() -> Path:
    """llama.cpp's converters (``convert_hf_to_gguf.py`` and ``convert_lora_to_gguf.py`` with their
    ``conversion`` and ``gguf-py`` packages) ship only in the llama-cpp-python sdist: fetch that sdist
    from the package index once, for the installed version, and keep just those files in the cache."""
    import tarfile

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


def gpt2_byte_level(folder: Path) -> bool:
    """Whether a folder's tokenizer is byte-level BPE split by GPT-2's regex and nothing else: then
    llama.cpp's ``gpt-2`` pre-tokenizer is an accurate name for it."""
    try:
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = spec.get("pre_tokenizer") or {}
    return (spec.get("model", {}).get("type") == "BPE" and not spec.get("normalizer")
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"))


def _convert_gguf(source: Path, out: Path, stem: str, outtype: str) -> None:
    import runpy

    src = llama_cpp_source()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    from conversion.base import TextModel  # type: ignore[import-not-found]

    # The converter identifies a BPE pre-tokenizer by hashing its output on a probe text, and knows
    # only published tokenizers. When it refuses one and the tokenizer is byte-level BPE with GPT-2's
    # split regex (the built-in tiny model's), "gpt-2" is the accurate name; anything else is refused
    # as the converter refuses it.
    recognise = TextModel.get_vocab_base_pre

    def vocab_base_pre(self: object, tokenizer: object) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            if not gpt2_byte_level(source):
                raise
            print("toolkit: unknown BPE pre-tokenizer with GPT-2's byte-level split: naming it gpt-2", flush=True)
            return "gpt-2"

    TextModel.get_vocab_base_pre = vocab_base_pre
    target = out / f"{stem}-{outtype}.gguf"
    sys.argv = ["convert_hf_to_gguf.py", str(source), "--outfile", str(target), "--outtype", outtype]
    runpy.run_path(str(src / "convert_hf_to_gguf.py"), run_name="__main__")


def _quantize_gguf(base: Path, out: Path, stem: str, kind: str) -> None:
    import ctypes

    import llama_cpp

    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(base).encode(), str(out / f"{stem}-{kind}.gguf").encode(),
                                        ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")


def _build_mlx(source: Path, out: Path, bits: int) -> None:
    from mlx_lm import convert

    out.rmdir()  # mlx_lm.convert refuses an existing folder
    convert(hf_path=str(source), mlx_path=str(out), quantize=True, q_bits=bits, q_group_size=64)
    _copy_tokenizer(source, out)


def _build_lora(source: Path, out: Path, calibration: Path | None) -> None:
    """A peft LoRA adapter on every linear layer, trained briefly on the calibration text."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    _seed()  # one thread: a fixed order of float sums, so every build is the same
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=list(LORA_TARGETS),
                        bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    rows = torch.tensor(calibration_ids(source, calibration, samples=LORA_SAMPLES))
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


def _convert_lora_gguf(source: Path, out: Path, stem: str, adapter: Path) -> None:
    import runpy

    src = llama_cpp_source()
    sys.path[:0] = [str(src), str(src / "gguf-py")]
    # --base: the converter reads only the base model's config.json from it (no tokenizer, no weights).
    sys.argv = ["convert_lora_to_gguf.py", str(adapter), "--base", str(source),
                "--outfile", str(out / f"{stem}-lora-f32.gguf"), "--outtype", "f32"]
    runpy.run_path(str(src / "convert_lora_to_gguf.py"), run_name="__main__")


def _build_lora_mlx(adapter: Path, out: Path) -> None:
    from toolkit.backends.mlx import peft_to_mlx

    peft_to_mlx(adapter, out)


def _dequantize_gguf(source: Path, out: Path) -> None:
    """A GGUF model as a transformers folder: the weights transformers dequantizes from it (fp32
    safetensors, the tied lm_head left out), its config without ``quantization_config`` (the weights
    are no longer quantized), its tokenizer and chat template."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _seed()
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the same tensor as the embedding; transformers ties it at load
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(out)
    config = json.loads((out / "config.json").read_text())
    config.pop("quantization_config", None)  # else toolkit (and transformers) would treat it as a GGUF model
    config.pop("_model_name_or_path", None)
    config.setdefault("architectures", [type(model).__name__])  # converters (llama.cpp's) read it
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    model.generation_config.save_pretrained(out)
    # transformers' GGUF tokenizer takes BOS/EOS from the vocabulary's first special tokens; the GGUF
    # names them by id (tokenizer.ggml.bos/eos/padding_token_id): use those.
    gen = model.generation_config
    for attr, token_id in (("bos_token", gen.bos_token_id), ("eos_token", gen.eos_token_id),
                           ("pad_token", gen.pad_token_id)):
        if isinstance(token_id, int):
            setattr(tokenizer, attr, tokenizer.convert_ids_to_tokens(token_id))
    tokenizer.clean_up_tokenization_spaces = False  # byte-level BPE: decoding must give the text back
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out)
    _repair_byte_level_tokenizer(source, out / "tokenizer.json")
    for file in out.iterdir():
        file.chmod(0o644)


# llama.cpp pre-tokenizer names (GGUF tokenizer.ggml.pre) -> the transformers pre-tokenizer that splits
# text the same way (llama.cpp's llama-vocab.cpp regexes; "smollm": digits one by one, then GPT-2's split)
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
GGUF_PRE_TOKENIZERS = {
    "gpt2": _BYTE_LEVEL, "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}


def _repair_byte_level_tokenizer(gguf: Path, tokenizer_json: Path) -> None:
    """transformers (5.17) rebuilds a GGUF's byte-level BPE vocabulary (``tokenizer.ggml.model: gpt2``)
    with SentencePiece traits: ``byte_fallback`` and a decoder that replaces "▁" by spaces. llama.cpp's
    converter then takes the folder for a SentencePiece model and writes a ``llama`` vocabulary. A
    byte-level BPE has neither: set them as such tokenizers ship (e.g. SmolLM2's own tokenizer.json),
    with the pre-tokenizer the GGUF names."""
    from toolkit.formats.gguf import read_gguf

    meta = read_gguf(gguf)["metadata"]
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    spec["model"]["byte_fallback"] = False
    spec["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    pre = GGUF_PRE_TOKENIZERS.get(str(meta.get("tokenizer.ggml.pre")))
    if pre is not None:
        spec["pre_tokenizer"] = pre
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


# builder name -> function(source, out, stem, base, calibration) -> the settings it used (or None)
BUILDERS: dict[str, Callable[[Path, Path, str, Path | None, Path | None], dict | None]] = {
    "gptq-4bit": lambda s, o, stem, b, c: _build_gptqmodel(s, o, "gptq", c),
    "awq-4bit": lambda s, o, stem, b, c: _build_gptqmodel(s, o, "awq", c),
    "ct-gptq-4bit": lambda s, o, stem, b, c: _build_llmcompressor(s, o, "gptq", c),
    "ct-awq-4bit": lambda s, o, stem, b, c: _build_llmcompressor(s, o, "awq", c),
    "gguf-f32": lambda s, o, stem, b, c: _convert_gguf(s, o, stem, "f32"),
    "gguf-f16": lambda s, o, stem, b, c: _convert_gguf(s, o, stem, "f16"),
    "gguf-q8_0": lambda s, o, stem, b, c: _quantize_gguf(b, o, stem, "q8_0"),  # type: ignore[arg-type]
    "gguf-q4_k_m": lambda s, o, stem, b, c: _quantize_gguf(b, o, stem, "q4_k_m"),  # type: ignore[arg-type]
    "mlx-4bit": lambda s, o, stem, b, c: _build_mlx(s, o, 4),
    "mlx-8bit": lambda s, o, stem, b, c: _build_mlx(s, o, 8),
    "lora": lambda s, o, stem, b, c: _build_lora(s, o, c),
    "lora-gguf": lambda s, o, stem, b, c: _convert_lora_gguf(s, o, stem, b),  # type: ignore[arg-type]
    "lora-mlx": lambda s, o, stem, b, c: _build_lora_mlx(b, o),  # type: ignore[arg-type]
    "dequantize-gguf": lambda s, o, stem, b, c: _dequantize_gguf(s, o),
}


def build(builder: str, source: str, out: str, stem: str, base: str | None = None,
          calibration: str | None = None) -> dict:
    """Build one variant into ``out`` (the launcher's entry point); returns the settings it used."""
    settings = BUILDERS[builder](Path(source), Path(out), stem, Path(base) if base else None,
                                 Path(calibration) if calibration else None)
    return {"builder": builder, "settings": settings or {}}
