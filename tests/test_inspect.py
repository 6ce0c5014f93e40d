from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import pytest
from _modelfiles import TINY_CONFIG, gptq_tensors, llama_tensors, make_folder, write_gguf, write_safetensors

from toolkit.commands import inspect as inspect_command
from toolkit.errors import BackendUnavailable, InvalidModel, ModelNotFound
from toolkit.facts.config import params_from_config
from toolkit.facts.model_info import inspect
from toolkit.formats.gguf import read_gguf

FIX = Path(__file__).parent / "fixtures" / "configs"

# Exact parameter counts of the published checkpoints (index total_size / 2 for bf16/fp16 repos,
# model cards for the rest).
EXPECTED = {
    "llama-3.1-8b": 8_030_261_248,  # total_size 16060522496 / 2
    "llama-2-7b": 6_738_415_616,  # total_size 13476839424 also holds 32 rotary inv_freq buffers
    "mixtral-8x7b": 46_702_792_704,  # total_size 93405585408 / 2
    "deepseek-v2-lite": 15_706_484_224,  # total_size 31412968448 / 2
    "qwen2.5-0.5b": 494_032_768,  # model.safetensors bf16 (tied embeddings)
    "gemma-2-2b": 2_614_341_888,  # float32 checkpoint, tied embeddings
    "phi-3-mini-4k": 3_821_079_552,  # fused qkv_proj and gate_up_proj
    "gpt2": 124_439_808,
    "qwen1.5-moe-a2.7b": 14_315_784_192,  # 60 experts + shared expert
}


def cfg(name: str) -> dict:
    return json.loads((FIX / f"{name}.config.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_from_real_configs(name):
    assert params_from_config(cfg(name))["total"] == EXPECTED[name]


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-2-7b", "mixtral-8x7b", "deepseek-v2-lite"])
def test_index_total_size(tmp_path, name):
    folder = make_folder(tmp_path / name, cfg(name))
    shutil.copy(FIX / f"{name}.index.json", folder / "model.safetensors.index.json")
    info = inspect(folder)
    total = json.loads((FIX / f"{name}.index.json").read_text())["metadata"]["total_size"]
    assert info.checkpoint_bytes == total and info.params_source == "index"
    assert abs(info.params - EXPECTED[name]) <= 0.005 * EXPECTED[name]
    if name != "llama-2-7b":
        assert info.params == EXPECTED[name]


def test_architecture_facts(tmp_path):
    llama = inspect(make_folder(tmp_path / "a", cfg("llama-3.1-8b")))
    assert (llama.attention, llama.num_kv_heads, llama.head_dim, llama.max_positions) == ("GQA", 8, 128, 131072)
    assert llama.format == "config-only" and llama.architecture == "LlamaForCausalLM"
    assert inspect(make_folder(tmp_path / "b", cfg("llama-2-7b"))).attention == "MHA"
    mix = inspect(make_folder(tmp_path / "c", cfg("mixtral-8x7b")))
    assert (mix.num_experts, mix.experts_per_token) == (8, 2)
    ds = inspect(make_folder(tmp_path / "d", cfg("deepseek-v2-lite")))
    assert (ds.attention, ds.kv_lora_rank, ds.qk_rope_head_dim) == ("MLA", 512, 64)
    assert ds.requires_remote_code  # auto_map recorded, never imported
    qw = inspect(make_folder(tmp_path / "e", cfg("qwen2.5-0.5b")))
    assert qw.tied_embeddings and qw.sliding_window is None and qw.lm_head_params == 0
    gm = inspect(make_folder(tmp_path / "f", cfg("gemma-2-2b")))
    assert (gm.sliding_window, gm.num_sliding_layers, gm.tied_embeddings) == (4096, 13, True)
    gpt = inspect(make_folder(tmp_path / "g", cfg("gpt2")))
    assert (gpt.num_layers, gpt.hidden_size, gpt.max_positions, gpt.attention) == (12, 768, 1024, "MHA")
    q = inspect(make_folder(tmp_path / "h", cfg("llama-2-7b-gptq")))
    assert q.quantization == "gptq-4bit" and q.quantization_config["group_size"] == 128


def test_tiny_safetensors_headers(tmp_path):
    folder = make_folder(tmp_path / "tiny", TINY_CONFIG, llama_tensors(TINY_CONFIG))
    info = inspect(folder)
    expected = params_from_config(TINY_CONFIG)["total"]
    assert info.params == expected and 6_000_000 < expected < 6_100_000
    assert info.params_source == "headers" and info.checkpoint_dtype == "float32"
    assert info.checkpoint_bytes == expected * 4 and info.format == "safetensors"
    assert info.lm_head_params == 4096 * 256 and not info.tied_embeddings


def test_sharded_headers(tmp_path):
    tensors = llama_tensors(TINY_CONFIG, "BF16")
    names = sorted(tensors)
    folder = make_folder(tmp_path / "sh", dict(TINY_CONFIG, torch_dtype="bfloat16"))
    a = write_safetensors(folder / "model-00001-of-00002.safetensors", {n: tensors[n] for n in names[:10]})
    b = write_safetensors(folder / "model-00002-of-00002.safetensors", {n: tensors[n] for n in names[10:]})
    info = inspect(folder)
    assert info.checkpoint_bytes == a + b and info.params == params_from_config(TINY_CONFIG)["total"]


def test_gptq_packed_counts(tmp_path):
    qcfg = dict(TINY_CONFIG, torch_dtype="float16",
                quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False})
    folder = make_folder(tmp_path / "gptq", qcfg, gptq_tensors(qcfg))
    info = inspect(folder)
    assert info.quantization == "gptq-4bit"
    assert info.params == params_from_config(TINY_CONFIG)["total"]  # scales/zeros/g_idx excluded
    assert info.checkpoint_dtype == "float16"


def test_awq_and_ct_names(tmp_path):
    awq = dict(TINY_CONFIG, quantization_config={"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemm"})
    assert inspect(make_folder(tmp_path / "awq", awq)).quantization == "awq-4bit"
    ct = dict(TINY_CONFIG, quantization_config={
        "quant_method": "compressed-tensors", "format": "pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {
            "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128}}}})
    assert inspect(make_folder(tmp_path / "ct", ct)).quantization == "ct-gptq-4bit"
    mlx = dict(TINY_CONFIG, quantization={"group_size": 64, "bits": 4})
    info = inspect(make_folder(tmp_path / "mlx", mlx))
    assert info.quantization == "mlx-4bit" and info.format == "mlx"
    bnb = dict(TINY_CONFIG, quantization_config={"quant_method": "bitsandbytes", "load_in_4bit": True})
    assert inspect(make_folder(tmp_path / "bnb", bnb)).quantization == "bnb-4bit"


def test_corrupt_safetensors(tmp_path):
    folder = make_folder(tmp_path / "bad", TINY_CONFIG, llama_tensors(TINY_CONFIG))
    st = folder / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[:1000])  # header cut short
    with pytest.raises(InvalidModel, match="model.safetensors"):
        inspect(folder)
    st.write_bytes(data[:8 + 4000] if len(data) > 8000 else data[:100])
    with pytest.raises(InvalidModel, match="model.safetensors"):
        inspect(folder)
    hdr_len = int.from_bytes(data[:8], "little")
    st.write_bytes(data[: 8 + hdr_len + 10])  # header fine, data truncated
    with pytest.raises(InvalidModel, match="truncated"):
        inspect(folder)
    st.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(InvalidModel, match="not valid JSON"):
        inspect(folder)
    st.write_bytes(b"\x01\x02")
    with pytest.raises(InvalidModel):
        inspect(folder)


def test_bad_config(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    with pytest.raises(InvalidModel, match="config.json"):
        inspect(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(InvalidModel, match="num_hidden_layers"):
        inspect(folder)


def test_missing_path():
    with pytest.raises(ModelNotFound, match="does not exist"):
        inspect("/nonexistent/model/folder")


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_pickle_never_unpickled(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "PWNED")
    folder = make_folder(tmp_path / "pk", TINY_CONFIG)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom()))
    info = inspect(folder)
    assert not Path(MARKER).exists()
    assert info.format == "pickle" and info.weights_format == "pickle" and info.params_source == "config"
    assert info.params == params_from_config(TINY_CONFIG)["total"]
    with pytest.raises(InvalidModel, match="pickle"):
        inspect(folder / "pytorch_model.bin")
    assert not Path(MARKER).exists()


def test_gguf(tmp_path):
    path = tmp_path / "m.gguf"
    params, nbytes = write_gguf(path)
    info = inspect(path)
    assert info.format == "gguf" and info.quantization == "gguf-q4_0"
    assert info.params == params and info.checkpoint_bytes == nbytes
    assert (info.num_layers, info.hidden_size, info.num_heads, info.num_kv_heads) == (2, 64, 4, 2)
    assert (info.vocab_size, info.max_positions, info.attention) == (128, 4096, "GQA")
    assert read_gguf(path)["metadata"]["general.architecture"] == "llama"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(InvalidModel, match="truncated"):
        inspect(path)


def test_hub_id_without_hub_lib(monkeypatch):
    import sys


    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` now fails, as uninstalled

    with pytest.raises(BackendUnavailable, match=r"toolkit\[hub\]"):
        inspect("some-org/some-model")


def test_main_inspect_json(tmp_path, capsys):
    folder = make_folder(tmp_path / "tiny", TINY_CONFIG, llama_tensors(TINY_CONFIG))
    assert inspect_command.run(argparse.Namespace(model=str(folder), json=True, revision=None)) == 0
    assert json.loads(capsys.readouterr().out)["params"] == params_from_config(TINY_CONFIG)["total"]
    info = inspect(folder)
    assert "<table>" in info._repr_html_()
