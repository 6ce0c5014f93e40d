from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _modelfiles import TINY_CONFIG, gptq_tensors, llama_tensors, make_folder, write_gguf

from toolkit.commands import plan as plan_command
from toolkit.errors import InvalidSpec, NothingFits
from toolkit.facts.devices import device_from_spec
from toolkit.facts.model_info import inspect
from toolkit.planning.plan import DEFAULT_CONTEXT, plan
from toolkit.units import GiB

FIX = Path(__file__).parent / "fixtures" / "configs"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny(tmp_path):
    return make_folder(tmp_path / "tiny", TINY_CONFIG, llama_tensors(TINY_CONFIG))


def real(tmp_path, name):
    folder = make_folder(tmp_path / name, json.loads((FIX / f"{name}.config.json").read_text()))
    shutil.copy(FIX / f"{name}.index.json", folder / "model.safetensors.index.json")
    return inspect(folder)


def test_fits_unquantized(tiny):
    p = plan(tiny, "24GiB")
    assert (p.backend, p.quantization, p.dtype, p.max_context) == ("hf", "none", "bfloat16", 2048)
    m = p.memory
    assert m.total_bytes <= m.budget_bytes
    assert m.total_bytes == m.weights_bytes + m.kv_cache_bytes + m.activation_bytes + m.overhead_bytes


def test_unquantized_in_checkpoint_dtype_is_total_size(tiny, tmp_path):
    p = plan(tiny, "cpu:8GiB")  # hf on CPU keeps float32 = the checkpoint's dtype
    assert p.dtype == "float32" and p.quantization == "none"
    assert p.memory.weights_bytes == inspect(tiny).checkpoint_bytes
    llama = real(tmp_path, "llama-3.1-8b")
    p = plan(llama, "A100-80GB", context=8192)
    assert p.quantization == "none" and p.dtype == "bfloat16"
    assert p.memory.weights_bytes == 16060522496


def test_does_not_fit_then_bnb(tmp_path):
    llama = real(tmp_path, "llama-3.1-8b")
    p8 = plan(llama, "T4")
    assert (p8.quantization, p8.dtype, p8.backend) == ("bnb-8bit", "float16", "hf")  # cc 7.5 -> fp16
    assert p8.memory.total_bytes <= p8.memory.budget_bytes
    assert any("does not fit" in a["rejected"] and a["quantization"] == "none" for a in p8.alternatives)
    # 9 GiB: bnb-8bit (~8.5 GiB of weights) no longer fits once the CUDA context is added (10 GiB
    # fitted bnb-8bit after the hf activations stopped counting full-prompt logits when generating)
    p4 = plan(llama, "cuda:9GiB")
    assert p4.quantization == "bnb-4bit" and p4.dtype == "bfloat16"  # cc 8.0 -> bf16
    assert p4.max_context >= 2048


def test_cc_rules(tiny):
    assert plan(tiny, "T4").dtype == "float16"
    assert plan(tiny, "A100").dtype == "bfloat16"
    with pytest.raises(InvalidSpec, match="compute capability"):
        plan(tiny, "T4", dtype="bf16")
    assert plan(tiny, "V100", backend="vllm").backend == "vllm"


def test_two_gpus_tensor_parallel(tmp_path):
    llama = real(tmp_path, "llama-3.1-8b")
    p = plan(llama, "2xA100-80GB", context="max")
    assert p.backend == "vllm" and p.tensor_parallel == 2 and p.quantization == "none"
    assert p.max_context == 131072 and p.max_context % 16 == 0
    capped = plan(llama, "2xA100-80GB")  # without --context: the largest that fits up to the default cap
    assert capped.max_context == DEFAULT_CONTEXT and capped.largest_context == 131072
    assert p.memory.budget_bytes == int(0.9 * 80 * GiB) * 2
    p = plan(llama, "A100-80GB", gpus=2)
    assert p.tensor_parallel == 2


def test_vllm_context_multiple_of_block(tmp_path):
    llama = real(tmp_path, "llama-3.1-8b")
    p = plan(llama, "cuda:24GiB", backend="vllm", context="max", kv_dtype="bfloat16")
    assert p.max_context % 16 == 0 and p.max_context < 131072
    # without a KV dtype wish, the full context fits with vLLM's fp8 KV cache, and the reasons say so
    fp8 = plan(llama, "cuda:24GiB", backend="vllm", context="max")
    assert fp8.kv_dtype == "fp8" and fp8.settings == {"kv_cache_dtype": "fp8"} and fp8.max_context == 131072
    assert any("fp8 KV cache" in r for r in fp8.reasons)
    assert p.memory.total_bytes <= p.memory.budget_bytes


def test_nothing_fits(tmp_path):
    llama = real(tmp_path, "llama-3.1-8b")
    with pytest.raises(NothingFits) as e:  # not even offloaded: the host has no room for the rest
        plan(llama, "cuda:4GiB", host_memory=2 * GiB)
    assert e.value.needed_bytes > 4 * GiB
    assert "needs" in str(e.value) and "GiB" in str(e.value) and "offload" in str(e.value)
    assert e.value.exit_code == 3
    # the needed memory really fits
    assert plan(llama, device_from_spec(f"cuda:{e.value.needed_bytes}"), context=2048)


def test_context_rules(tiny, tmp_path):
    with pytest.raises(InvalidSpec, match="maximum positions"):
        plan(tiny, "24GiB", context=4096)
    p = plan(real(tmp_path, "llama-3.1-8b"), "H200", backend="vllm", context="max")
    assert p.max_context == 131072  # capped at max positions
    # --context fixes the context: the plan allocates exactly it, never more
    assert plan(tiny, "24GiB", context=1024).max_context == 1024
    with pytest.raises(InvalidSpec, match="'max'"):
        plan(tiny, "24GiB", context="lots")


def test_explicit_wishes(tiny):
    assert plan(tiny, "24GiB", quantization="bnb-4bit").quantization == "bnb-4bit"
    with pytest.raises(InvalidSpec, match="mlx"):
        plan(tiny, "24GiB", backend="mlx")
    with pytest.raises(InvalidSpec, match="unknown backend"):
        plan(tiny, "24GiB", backend="tensorrt")
    with pytest.raises(InvalidSpec):
        plan(tiny, "24GiB", quantization="gptq-4bit")  # would need a GPTQ checkpoint
    cpu = plan(tiny, "cpu:8GiB")
    assert cpu.backend == "hf"
    assert any(a["backend"] == "vllm" for a in cpu.alternatives)


def test_prequantized_gptq_and_gguf(tmp_path):
    qcfg = dict(TINY_CONFIG, torch_dtype="float16",
                quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 128})
    folder = make_folder(tmp_path / "gptq", qcfg, gptq_tensors(qcfg))
    p = plan(folder, "T4")
    assert p.quantization == "gptq-4bit" and p.memory.weights_bytes == inspect(folder).checkpoint_bytes
    gguf = tmp_path / "m.gguf"
    write_gguf(gguf)
    p = plan(gguf, "cpu:4GiB")
    assert (p.backend, p.quantization) == ("llamacpp", "gguf-q4_0")
    assert plan(gguf, "M2-Max-32GB").backend == "llamacpp"


def test_mps_mlx(tmp_path):
    p = plan(real(tmp_path, "llama-3.1-8b"), "M2-Max-32GB", context=8192)
    assert p.backend == "mlx" and p.quantization == "none"


def test_mla_and_sliding_models(tmp_path):
    ds = real(tmp_path, "deepseek-v2-lite")
    p = plan(ds, "A100-80GB", backend="vllm")
    assert p.memory.kv_bytes_per_token == 31104 and p.memory.total_bytes <= p.memory.budget_bytes


def test_outputs(tiny):
    p = plan(tiny, "24GiB")
    d = p.to_dict()
    assert set(d) >= {"model", "params", "backend", "quantization", "dtype", "max_context", "memory", "reasons",
                      "alternatives"}
    assert set(d["memory"]) == {"budget_bytes", "weights_bytes", "kv_bytes_per_token", "kv_cache_bytes",
                                "activation_bytes", "overhead_bytes", "total_bytes", "engine_buffers", "load_peak_bytes"}
    json.dumps(d)
    for a in d["alternatives"]:
        assert a["rejected"] and {"backend", "quantization", "max_context"} <= set(a)
    assert "memory" in p.to_table() and "<table>" in p._repr_html_()
    rows = p.compare({"weights_bytes": p.memory.weights_bytes, "total": p.memory.total_bytes * 2})
    rows = rows.to_dict("records") if hasattr(rows, "to_dict") else rows
    assert rows[0]["rel_error"] == 0 and rows[1]["rel_error"] == pytest.approx(-0.5)


def test_plan_is_fast(tmp_path):
    llama = real(tmp_path, "llama-3.1-8b")
    t = time.perf_counter()
    plan(llama, "T4")
    assert time.perf_counter() - t < 0.05


def test_main_plan_json(tiny, capsys):
    parser = argparse.ArgumentParser()
    plan_command.add_arguments(parser)
    args = parser.parse_args([str(tiny), "--memory", "24GiB", "--compute-capability", "7.5", "--json"])
    assert plan_command.run(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["dtype"] == "float16" and d["memory"]["total_bytes"] <= d["memory"]["budget_bytes"]
    args.json = False
    assert plan_command.run(args) == 0
    assert "alternatives" in capsys.readouterr().out
    with pytest.raises(InvalidSpec):
        plan_command.run(argparse.Namespace(**{**vars(args), "memory": "24 gigs"}))


def test_no_torch_in_subprocess(tiny):
    code = (
        "import sys, json; from toolkit.planning.plan import plan; import toolkit.facts.probe, toolkit.facts.model_info;"
        f"p = plan({str(tiny)!r}, 'cpu:8GiB'); json.dumps(p.to_dict());"
        "bad = [m for m in ('torch', 'transformers', 'safetensors', 'vllm', 'mlx', 'llama_cpp', 'huggingface_hub')"
        " if m in sys.modules]; assert not bad, bad; print('ok')"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok" and time.perf_counter() - t < 5


def test_offload_when_the_model_does_not_fit_the_gpu(tmp_path):
    """transformers' device_map offload: whole decoder layers on the GPU while they fit, the rest in host RAM."""
    llama = real(tmp_path, "llama-3.1-8b")
    p = plan(llama, "cuda:4GiB", host_memory=64 * GiB, context=2048)
    assert p.backend == "hf" and p.split["cuda"] <= p.memory.budget_bytes and p.split["cpu"] > 8 * GiB
    assert set(p.settings["max_memory"]) == {"0", "cpu"}
    assert any("device_map='auto'" in r for r in p.reasons)


def test_remote_code_reason_says_what_the_load_will_do(tmp_path):
    """A folder with auto_map code: the plan says whether transformers' own implementation loads it
    (the shipped code not run) or only --trust-remote-code can (issue #16)."""
    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    cases = (("llama", "loads with transformers' built-in llama implementation; the shipped code is not run"),
             ("evil_arch", "transformers has no built-in evil_arch: loading needs --trust-remote-code "
                           "(trust_remote_code=True), which runs the shipped code"))
    for model_type, words in cases:
        cfg = {**TINY_CONFIG, "model_type": model_type, "auto_map": auto_map}
        p = plan(make_folder(tmp_path / model_type, cfg, llama_tensors(cfg)), "cpu:16GiB")
        assert p.backend == "hf" and any(words in r for r in p.reasons), p.reasons
    plain = plan(make_folder(tmp_path / "plain", TINY_CONFIG, llama_tensors(TINY_CONFIG)), "cpu:16GiB")
    assert not any("remote" in r for r in plain.reasons)


def test_transformers_model_types_read_without_importing_it():
    code = ("import sys; from toolkit.facts.libraries import transformers_model_types as t; "
            "print(sorted(t()) == sorted(set(t())), 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    from toolkit.facts.libraries import transformers_implements, transformers_model_types

    assert transformers_model_types() == frozenset(CONFIG_MAPPING_NAMES)
    assert (transformers_implements("llama"), transformers_implements("evil_arch"), transformers_implements(None)) \
        == (True, False, None)
