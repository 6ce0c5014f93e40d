"""What the hf backend checks before it loads a folder, and how it words what transformers raises.

Kept apart from :mod:`toolkit.backends.hf` (which imports torch and transformers) so that the checks
read as one list: a folder with a config.json, a prequantized checkpoint that matches the plan, and
one-paragraph errors for shipped code, unsafe pickles, unknown architectures and mismatched weights.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import InvalidModel, UnsafeCheckpoint, is_out_of_memory
from toolkit.facts.config import quantization_from_config


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


    try:
        found, _ = quantization_from_config(json.loads((path / "config.json").read_text()))
    except (OSError, ValueError):
        return  # check_model_folder and transformers report an unreadable config
    if found != quantization:
        raise InvalidModel(f"{path.name} is quantized as {found!r}, not {quantization!r}: a {quantization} load "
                           "needs a checkpoint made that way (toolkit.tiny() builds them for the tiny model; "
                           "for your own, quantize with gptqmodel or llm-compressor), or plan again without "
                           "forcing the quantization")


def shipped_files(path: Path) -> str:
    """The Python files a model folder's config names in ``auto_map``, e.g. ``modeling_x.py``."""
    import json

    try:
        auto_map = json.loads((path / "config.json").read_text()).get("auto_map") or {}
    except (OSError, ValueError, AttributeError):
        auto_map = {}
    refs = [r for v in auto_map.values() for r in (v if isinstance(v, list) else [v]) if isinstance(r, str)]
    files = sorted({r.split("--")[-1].rsplit(".", 1)[0] + ".py" for r in refs})
    return ", ".join(files) or "auto_map"


def library_error(path: Path, exc: Exception, part: str, trust_remote_code: bool) -> Exception:
    """A transformers error about the model's files as a one-paragraph ToolkitError saying what to do.

    Out-of-memory, missing libraries and unrecognised runtime errors are returned unchanged, so that
    toolkit.load can report them and try its fallbacks.
    """
    import transformers


    text = " ".join(str(exc).split())
    if is_out_of_memory(exc) or isinstance(exc, ImportError):
        return exc
    if "trust_remote_code" in text and not trust_remote_code:
        return UnsafeCheckpoint(
            f"{path.name} ships its own Python code ({shipped_files(path)}), which transformers "
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
            f"the weights of {path.name} do not have the shapes its config.json describes (transformers' report, "
            "shown with -v or TOOLKIT_LOG=debug, lists them as MISMATCH): config.json and the weights come from "
            "different models or were edited; re-download the model")
    if part == "tokenizer" or isinstance(exc, (OSError, ValueError, KeyError)):
        files = "tokenizer files (tokenizer.json, tokenizer_config.json)" if part == "tokenizer" else \
            "config.json or weights"
        return InvalidModel(
            f"transformers {transformers.__version__} could not load the {part} of {path.name} "
            f"({type(exc).__name__}: {text[:300]}): its {files} may be corrupt, incomplete or need a newer "
            "transformers; re-download the model or upgrade transformers")
    return exc
