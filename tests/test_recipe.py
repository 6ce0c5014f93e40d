from __future__ import annotations

import json
import warnings

import pytest
from _hub import add_to_cache, commit_of
from _modelfiles import TINY_CONFIG, llama_tensors, make_folder

from toolkit.errors import InvalidSpec
from toolkit.facts.devices import Device, device_from_spec
from toolkit.hub.recipe import Recipe, RecipeMismatch, current_environment
from toolkit.planning.plan import plan

SMALL = dict(TINY_CONFIG, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
CPU = device_from_spec("cpu:16GiB")


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "llama", SMALL, llama_tensors(SMALL))


def _core(p) -> dict:
    d = p.to_dict()
    return {k: d[k] for k in ("model", "params", "backend", "quantization", "dtype", "kv_dtype", "max_context",
                              "batch", "tensor_parallel", "device", "memory")}


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_round_trip_gives_the_same_plan(folder, tmp_path, suffix):
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    original = plan(folder, CPU, batch=2)
    r = Recipe.from_plan(original, bench={"new_tokens": 32, "repeats": 3})
    assert (r.backend, r.quantization, r.dtype, r.max_context, r.batch) == ("hf", "none", "float32", 512, 2)
    assert r.environment["python"] and "transformers" in r.environment and r.device["kind"] == "cpu"
    path = r.save(tmp_path / f"recipe{suffix}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeMismatch)  # this machine is not a 16 GiB spec
        loaded = Recipe.load(path)
    assert loaded == r and loaded.bench == {"new_tokens": 32, "repeats": 3}
    again = loaded.to_plan()
    assert again.to_dict() == r.to_plan().to_dict() == loaded.to_plan(CPU).to_dict()
    assert _core(again) == _core(original)


def test_save_format_follows_suffix(folder, tmp_path):
    r = Recipe.from_plan(plan(folder, CPU))
    assert json.loads(r.save(tmp_path / "r.json").read_text())["model"] == str(folder)
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(r.save(tmp_path / "r.yml").read_text())["backend"] == "hf"


def test_invalid_choices_name_the_valid_ones():
    with pytest.raises(InvalidSpec, match=r"bnb-4bit.*gguf-<type>"):
        Recipe.from_dict({"model": "m", "quantization": "int3"})
    with pytest.raises(InvalidSpec, match="hf, vllm, mlx, llamacpp, openai"):
        Recipe.from_dict({"model": "m", "backend": "tgi"})
    with pytest.raises(InvalidSpec, match="float32, bfloat16, float16, auto"):
        Recipe.from_dict({"model": "m", "dtype": "fp8"})
    with pytest.raises(InvalidSpec, match="valid keys are model, revision"):
        Recipe.from_dict({"model": "m", "colour": "blue"})
    with pytest.raises(InvalidSpec, match="batch"):
        Recipe.from_dict({"model": "m", "batch": 0})
    with pytest.raises(InvalidSpec, match="model"):
        Recipe.from_dict({"backend": "hf"})
    assert Recipe.from_dict({"model": "m", "quantization": "GGUF-Q4_K_M"}).quantization == "gguf-q4_k_m"


def test_tampered_version_is_reported(folder, tmp_path):
    r = Recipe.from_plan(plan(folder, CPU))
    r.environment["transformers"] = "0.0.1"
    r.environment["vllm"] = "0.6.0"
    r.environment["python"] = "2.7.18"
    diffs = r.check(device=CPU)
    installed = current_environment()
    assert f"transformers 0.0.1 recorded, {installed['transformers']} installed" in diffs
    assert any(d.startswith("vllm 0.6.0 recorded") for d in diffs)
    assert any(d.startswith("python 2.7.18 recorded") for d in diffs)
    assert not any(d.startswith("device") for d in diffs)
    path = r.save(tmp_path / "r.json")
    with pytest.warns(RecipeMismatch, match="transformers 0.0.1 recorded"):
        Recipe.load(path)


def test_untouched_recipe_checks_clean_on_its_device(folder):
    r = Recipe.from_plan(plan(folder, CPU))
    assert r.check(device=CPU) == []
    other = r.check(device=device_from_spec("cpu:24GiB"))
    assert other == ["device: recorded cpu 16 GiB, now cpu 24 GiB"]


def test_revision_mismatch_for_hub_ids(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    add_to_cache(cache, "org/model", {"config.json": json.dumps(SMALL).encode()}, commit=commit_of("new"))
    r = Recipe(model="org/model", revision=commit_of("old"), backend="hf", quantization="none", dtype="float32",
               environment=current_environment())
    assert r.check() == [f"model org/model: revision {commit_of('old')} recorded, cached main is {commit_of('new')} "
                         "(fetch it with revision=...)"]
    assert Recipe(model="org/model", revision=commit_of("new"), environment=current_environment()).check() == []
    # from_plan records the cached commit of a hub id
    p = plan(str(cache / "models--org--model" / "snapshots" / commit_of("new")), CPU)
    p.model = "org/model"
    assert Recipe.from_plan(p).revision == commit_of("new")


def test_device_dict_round_trips_to_device(folder):
    r = Recipe.from_plan(plan(folder, device_from_spec("T4")))
    assert r.to_plan().device == Device("cuda", "T4", 16 * 2**30, 16 * 2**30, 1, (7, 5), 320e9, "spec:T4").to_dict()
