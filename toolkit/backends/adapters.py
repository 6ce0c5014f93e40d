"""LoRA adapter checks shared by the backends: read a peft adapter folder, the layers and
dimensions it adapts (from its safetensors header), and refuse one made for another model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.errors import InvalidModel, ModelNotFound
from toolkit.formats.safetensors import read_safetensors_header


def peft_adapter_config(path: Path, backend: str) -> dict[str, Any]:
    """The ``adapter_config.json`` of a peft LoRA folder, or the error that says what ``path`` is instead."""
    wanted = "a peft adapter folder (adapter_config.json + adapter_model.safetensors)"
    if not path.exists():
        raise ModelNotFound(f"LoRA adapter {path} does not exist: pass {wanted}")
    if not path.is_dir():
        hint = ": that is a GGUF adapter, for backend='llamacpp'" if path.suffix == ".gguf" else ""
        raise InvalidModel(f"the {backend} backend loads a LoRA adapter from {wanted}, but {path} is a file{hint}")
    if not (path / "adapter_config.json").is_file():
        raise InvalidModel(f"{path} has no adapter_config.json, so it is not a peft adapter: pass {wanted}")
    config = json.loads((path / "adapter_config.json").read_text())
    kind = config.get("peft_type", "LORA")
    if kind != "LORA" or config.get("use_dora"):
        raise InvalidModel(f"{path} holds a {'DoRA' if kind == 'LORA' else kind} adapter; toolkit runs LoRA adapters only")
    if not (path / "adapter_model.safetensors").is_file():
        raise InvalidModel(f"{path} has no adapter_model.safetensors (pickled adapter_model.bin files are not "
                           "loaded: they can run code): save the adapter with safe_serialization=True")
    return config


def peft_lora_shapes(path: Path) -> dict[str, tuple[int, int]]:
    """The layers a peft LoRA folder adapts, ``{module name: (in_features, out_features)}``, read from
    the safetensors header: lora_A is (r, in), lora_B is (out, r)."""
    dims: dict[str, list[int]] = {}
    for key, info in read_safetensors_header(path / "adapter_model.safetensors").items():
        for suffix, side in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
            if key.endswith(suffix):
                name = key[: -len(suffix)].removeprefix("base_model.model.")
                dims.setdefault(name, [0, 0])[side] = int(info["shape"][1 - side])
    return {name: (d[0], d[1]) for name, d in dims.items()}


def check_adapter_fits(path: Path, shapes: dict[str, tuple[int, int]], layer_dims: Any, model: str) -> None:
    """Raise InvalidModel naming the layers the adapter does not fit. ``layer_dims(name)`` gives the
    model's ``(in_features, out_features)`` of a layer, or None when it has no such layer."""
    problems = []
    for name, want in sorted(shapes.items()):
        have = layer_dims(name)
        if have is None:
            problems.append(f"{name}: no such layer in {model}")
        elif tuple(have) != want:
            problems.append(f"{name}: {want[0]}->{want[1]} in the adapter, {have[0]}->{have[1]} in {model}")
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise InvalidModel(f"the LoRA adapter {path} was made for a model with other layers or dimensions: "
                           f"{'; '.join(problems[:3])}{more}")
