"""LoRA adapters on the backends that run here: hf (peft), llama.cpp (GGUF LoRA) and mlx-lm.

The adapter is made locally: ``tiny("lora")`` is a peft LoRA trained for a few seconds on the
calibration text; ``tiny("lora-gguf")`` is it converted by llama.cpp's ``convert_lora_to_gguf.py``
and ``tiny("lora-mlx")`` is it in mlx-lm's adapter layout. vLLM's LoRA test is in test_vllm.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from toolkit.backends import GenerationConfig, Loaded, LoadTarget, load_target
from toolkit.builtin.tiny import BASE, tiny
from toolkit.errors import InvalidModel, InvalidSpec, ModelNotFound

PROMPT = "def add(a, b):\n"
N = 16

HAS = {name: importlib.util.find_spec(mod) is not None
       for name, mod in (("peft", "peft"), ("llamacpp", "llama_cpp"), ("mlx", "mlx_lm"), ("gguf", "gguf"))}


def _needs(*names: str) -> pytest.MarkDecorator:
    missing = [n for n in names if not HAS[n]]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


# backend, model (a tiny() variant), dtype, adapter (a tiny() variant)
BACKENDS = {
    "hf": (None, "float32", "lora"),
    "llamacpp": ("gguf-f32", "auto", "lora-gguf"),
    "mlx": (None, "auto", "lora"),
}
CASES = [pytest.param("hf", marks=_needs("peft"), id="hf"),
         pytest.param("llamacpp", marks=_needs("peft", "llamacpp"), id="llamacpp"),
         pytest.param("mlx", marks=_needs("peft", "mlx"), id="mlx")]


def _load(backend: str, **options) -> Loaded:
    variant, dtype, _ = BACKENDS[backend]
    return load_target(LoadTarget(path=Path(tiny(variant, progress=False)), backend=backend, dtype=dtype,
                                  options=options))


def _greedy(model: Loaded) -> list[int]:
    return model.generate(PROMPT, max_tokens=N, ignore_eos=True).token_ids


@pytest.mark.parametrize("backend", CASES)
def test_adapter_switches_on_and_off(backend):
    adapter = tiny(BACKENDS[backend][2], progress=False)
    with _load(backend) as model:
        base = _greedy(model)
        seq = model.encode(PROMPT) + base
        base_rows = model.logprobs([seq])[0]  # llama.cpp: makes its scoring context before any adapter
        name = model.load_adapter(adapter)
        assert name == Path(adapter).stem
        assert model.adapters() == [name] and model.active_adapter is None
        assert _greedy(model) == base  # loading does not apply it

        model.set_adapter(name)
        assert model.active_adapter == name
        tuned = _greedy(model)
        assert tuned != base, tuned
        chunks = list(model.stream(PROMPT, max_tokens=N, ignore_eos=True))
        assert [t for c in chunks for t in c.token_ids] == tuned
        batch = model.generate_batch([PROMPT, "import os\n"], GenerationConfig(max_tokens=8, ignore_eos=True))
        assert batch[0].token_ids == tuned[:8]
        prompt_len = len(model.encode(PROMPT))
        rows = model.logprobs([model.encode(PROMPT) + tuned])[0]
        assert rows[prompt_len - 1:].argmax(axis=-1).tolist() == tuned
        assert not np.allclose(model.logprobs([seq])[0], base_rows, atol=1e-3)

        model.set_adapter(None)  # the base model again, exactly
        assert model.active_adapter is None
        assert _greedy(model) == base
        np.testing.assert_allclose(model.logprobs([seq])[0], base_rows, rtol=0, atol=1e-6)

        model.set_adapter(name)
        assert _greedy(model) == tuned  # switching back gives the same adapter outputs
        model.remove_adapter(name)  # the active one: back to the base model first
        assert model.adapters() == [] and model.active_adapter is None
        assert _greedy(model) == base
        with pytest.raises(InvalidSpec, match="no adapter named"):
            model.set_adapter(name)
        assert model.load_adapter(adapter, "again") == "again"  # loadable again after removal
        model.set_adapter("again")
        assert _greedy(model) == tuned


@_needs("peft", "llamacpp", "mlx")
def test_cross_backend_adapter_ids_match():
    """The same adapter on the same fp32 weights decodes to the same greedy ids on transformers+peft,
    llama.cpp (gguf-f32 + lora-gguf) and mlx-lm (the peft folder, and the mlx-lm layout)."""
    ids: dict[str, list[int]] = {}
    for key, backend, adapter in (("hf", "hf", "lora"), ("llamacpp", "llamacpp", "lora-gguf"),
                                  ("mlx", "mlx", "lora"), ("mlx-lm layout", "mlx", "lora-mlx")):
        with _load(backend) as model:
            model.set_adapter(model.load_adapter(tiny(adapter, progress=False)))
            ids[key] = model.generate(model.encode(PROMPT), max_tokens=N, ignore_eos=True).token_ids
    assert ids["hf"] == ids["llamacpp"] == ids["mlx"] == ids["mlx-lm layout"], ids


@pytest.mark.parametrize("backend", CASES[1:])
def test_adapter_at_load_time(backend):
    """The ``adapter`` load option goes through load_adapter + set_adapter, so the adapter can be
    switched off afterwards."""
    adapter = tiny(BACKENDS[backend][2], progress=False)
    with _load(backend, adapter=str(adapter)) as model:
        assert model.adapters() == [Path(adapter).stem] and model.active_adapter == Path(adapter).stem
        tuned = _greedy(model)
        model.set_adapter(None)
        assert _greedy(model) != tuned


# --- errors ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wrong_peft(tmp_path_factory) -> Path:
    """A peft LoRA made for a Llama of half the tiny model's width: same layer names, other shapes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = json.loads((BASE / "config.json").read_text())
    config.update(hidden_size=128, intermediate_size=256, head_dim=32)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k not in ("architectures", "dtype")}))
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("wrong-peft")
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def wrong_gguf(tmp_path_factory) -> Path:
    """tiny("lora-gguf") with every lora_a cut to half the model's width: a GGUF LoRA for another model."""
    import gguf

    reader = gguf.GGUFReader(str(tiny("lora-gguf", progress=False)))
    out = tmp_path_factory.mktemp("wrong-gguf") / "wrong.gguf"
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 16.0)
    for tensor in reader.tensors:
        data = np.asarray(tensor.data)
        if tensor.name.endswith(".lora_a"):
            data = np.ascontiguousarray(data[..., : data.shape[-1] // 2])
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


@pytest.mark.parametrize("backend", CASES)
def test_bad_adapter_paths(backend, tmp_path):
    other_kind = {"hf": tiny("gguf-f32", progress=False) if HAS["llamacpp"] else None,
                  "llamacpp": tiny("lora", progress=False), "mlx": BASE}[backend]
    with _load(backend) as model:
        with pytest.raises(ModelNotFound, match="does not exist"):
            model.load_adapter(tmp_path / "nowhere")
        if other_kind is not None:  # a model, or an adapter in another backend's format
            with pytest.raises(InvalidModel, match="GGUF|adapter_config.json|folder"):
                model.load_adapter(other_kind, "other")
        assert model.adapters() == [] and _greedy(model)  # a failed load leaves the model as it was


@pytest.mark.parametrize("backend", CASES)
def test_adapter_for_other_dimensions(backend, request):
    wrong = request.getfixturevalue("wrong_gguf" if backend == "llamacpp" else "wrong_peft")
    with _load(backend) as model:
        base = _greedy(model)
        match = "incorrect shape" if backend == "llamacpp" else r"other layers or dimensions.*256->256"
        with pytest.raises(InvalidModel, match=match):
            model.load_adapter(wrong)
        assert model.adapters() == [] and _greedy(model) == base


@_needs("peft")
def test_adapter_names_and_unsupported_backends():
    with _load("hf") as model:
        name = model.load_adapter(tiny("lora", progress=False), "mine")
        with pytest.raises(InvalidSpec, match="already loaded"):
            model.load_adapter(tiny("lora", progress=False), name)
        with pytest.raises(InvalidSpec, match="no adapter named 'other'.*mine"):
            model.set_adapter("other")
        with pytest.raises(InvalidSpec, match="no adapter named"):
            model.remove_adapter("other")
    class Custom(Loaded):  # a backend without adapter support
        backend = "custom"

    with pytest.raises(InvalidSpec, match="custom backend does not support LoRA adapters; hf, llamacpp"):
        Custom(LoadTarget(path=Path("m"), backend="custom")).load_adapter(tiny("lora", progress=False))
