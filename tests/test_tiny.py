"""The built-in tiny model and its variants: files present, real libraries load them, builds are
deterministic, and quantization changes quality measurably but not much."""

import json

import pytest

from toolkit.builtin import tiny as tiny_mod
from toolkit.builtin.tiny import BASE, MANIFEST, tiny
from toolkit.errors import InvalidSpec
from toolkit.facts.model_info import inspect
from toolkit.formats.safetensors import read_safetensors_header

pytestmark = pytest.mark.slow


def test_base_is_shipped_and_described():
    assert (BASE / "model.safetensors").stat().st_size > 20e6
    info = inspect(BASE)
    assert info.params == 6_031_616
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.attention) == (4, 4, 2, "GQA")
    stats = json.loads((BASE / "training.json").read_text())
    assert stats["heldout_ppl"] < stats["random_init_heldout_ppl"] / 50  # trained, far from random


@pytest.mark.parametrize("variant,quant_method,quantization", [
    ("gptq-4bit", "gptq", "gptq-4bit"),
    ("awq-4bit", "awq", "awq-4bit"),
    ("ct-gptq-4bit", "compressed-tensors", "ct-gptq-4bit"),
    ("ct-awq-4bit", "compressed-tensors", "ct-awq-4bit"),
])
def test_hf_format_variants(variant, quant_method, quantization):
    path = tiny(variant)
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == quant_method
    assert (path / "tokenizer.json").exists() and (path / MANIFEST).exists()
    info = inspect(path)
    assert info.quantization == quantization
    assert info.params == pytest.approx(6_031_616, rel=0.01)  # packed int32 counted as the weights they hold
    assert info.checkpoint_bytes < 0.6 * inspect(BASE).checkpoint_bytes


@pytest.mark.parametrize("variant", ["gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"])
def test_gguf_variants(variant):
    path = tiny(variant)
    assert path.suffix == ".gguf" and path.read_bytes()[:4] == b"GGUF"
    assert inspect(path).quantization == variant


def test_mlx_variant():
    path = tiny("mlx-4bit")
    config = json.loads((path / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert inspect(path).quantization == "mlx-4bit"


def test_bnb_and_none_are_the_base_folder():
    assert tiny() == tiny("none") == tiny("bnb-4bit") == tiny("bnb-8bit") == BASE


def test_unknown_variant_names_the_choices():
    with pytest.raises(InvalidSpec, match="gptq-4bit"):
        tiny("gptq-3bit")


def _tensors(path):
    header = read_safetensors_header(path)
    data = path.read_bytes()
    offset = 8 + int.from_bytes(data[:8], "little")
    return {name: data[offset + meta["data_offsets"][0]:offset + meta["data_offsets"][1]]
            for name, meta in header.items() if name != "__metadata__"}


@pytest.mark.parametrize("variant", ["gptq-4bit", "gguf-q4_k_m"])
def test_builds_are_deterministic(variant, tmp_path, monkeypatch):
    """Building again into a fresh cache gives byte-identical weights."""
    first = tiny(variant)
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    second = tiny(variant, progress=False)
    assert second != first and str(second).startswith(str(tmp_path))
    if variant.startswith("gguf"):
        assert first.read_bytes() == second.read_bytes()
    else:
        assert _tensors(first / "model.safetensors") == _tensors(second / "model.safetensors")


def test_cache_location_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    assert tiny_mod.variant_dir("awq-4bit").is_relative_to(tmp_path)
