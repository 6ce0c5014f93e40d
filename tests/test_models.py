from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from _hub import add_to_cache, commit_of
from _modelfiles import TINY_CONFIG, gptq_tensors, llama_tensors, make_folder, write_gguf, write_safetensors

from toolkit.commands import models as models_command
from toolkit.errors import InvalidSpec, ModelNotFound
from toolkit.hub.models import delete_model, models

hub = pytest.importorskip("huggingface_hub")

SMALL = dict(TINY_CONFIG, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
TINY_DIR = Path(__file__).resolve().parents[1] / "toolkit" / "data" / "tiny"


def _numel(tensors: dict) -> int:
    total = 0
    for _, shape in tensors.values():
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cache(tmp_path):
    """A hub cache with a Llama, a GPTQ-packed Llama, a GGUF repo, a broken repo and (if built) toolkit's tiny."""
    src, cache = tmp_path / "src", tmp_path / "hub"
    llama = make_folder(src / "llama", SMALL, llama_tensors(SMALL))
    (llama / "tokenizer_config.json").write_text("{}")
    qcfg = dict(SMALL, torch_dtype="float16",
                quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 32, "desc_act": False})
    gptq = make_folder(src / "gptq", qcfg, gptq_tensors(qcfg, group=32))
    (src / "gguf").mkdir()
    gguf_params, _ = write_gguf(src / "gguf" / "small.Q4_0.gguf")
    add_to_cache(cache, "test-org/llama-small", _files(llama))
    add_to_cache(cache, "test-org/llama-small", _files(llama), commit=commit_of("second"), ref="dev")
    add_to_cache(cache, "test-org/llama-small-gptq", _files(gptq))
    add_to_cache(cache, "test-org/small-gguf", _files(src / "gguf"))
    add_to_cache(cache, "test-org/broken", {"config.json": b"{not json"})
    tiny = (TINY_DIR / "config.json").is_file()
    if tiny:
        add_to_cache(cache, "toolkit/tiny", _files(TINY_DIR))
    return {"dir": cache, "gguf_params": gguf_params, "tiny": tiny, "gptq_cfg": qcfg}


def test_scan_cache_dir_sees_the_fake_cache(cache):
    info = hub.scan_cache_dir(cache["dir"])
    assert not info.warnings
    ids = {r.repo_id for r in info.repos}
    assert {"test-org/llama-small", "test-org/llama-small-gptq", "test-org/small-gguf", "test-org/broken"} <= ids
    llama = next(r for r in info.repos if r.repo_id == "test-org/llama-small")
    assert len(llama.revisions) == 2 and llama.size_on_disk > 0


def test_models_lists_cache_with_facts(cache):
    df = models(cache_dir=cache["dir"])
    assert list(df.columns[:8]) == ["name", "path", "source", "format", "quantization", "params",
                                    "size_on_disk_bytes", "revision"]
    assert "fits" not in df.columns and "error" in df.columns
    rows = {(r["name"], r["revision"]): r for r in df.to_dict("records")}
    llama = rows[("test-org/llama-small", commit_of("test-org/llama-small"))]
    assert ("test-org/llama-small", commit_of("second")) in rows
    assert llama["source"] == "hf-cache" and llama["format"] == "safetensors" and llama["quantization"] == "none"
    assert llama["params"] == _numel(llama_tensors(SMALL))
    assert llama["size_on_disk_bytes"] > 0 and pd.isna(llama["error"])
    assert Path(llama["path"]).name == commit_of("test-org/llama-small")
    gptq = rows[("test-org/llama-small-gptq", commit_of("test-org/llama-small-gptq"))]
    assert gptq["quantization"] == "gptq-4bit" and gptq["format"] == "safetensors"
    assert gptq["params"] == _numel(llama_tensors(SMALL))  # packed int32 qweights unpacked to 8 weights each
    gguf = rows[("test-org/small-gguf", commit_of("test-org/small-gguf"))]
    assert gguf["format"] == "gguf" and gguf["quantization"] == "gguf-q4_0"
    assert gguf["params"] == cache["gguf_params"] and gguf["path"].endswith("small.Q4_0.gguf")
    broken = rows[("test-org/broken", commit_of("test-org/broken"))]
    assert broken["error"] and "InvalidModel" in broken["error"] and pd.isna(broken["format"])


def test_builtin_tiny_in_cache(cache):
    if not cache["tiny"]:
        pytest.skip("toolkit/data/tiny/config.json is not built yet")
    df = models(cache_dir=cache["dir"], device="cpu:16GiB")
    tiny = df[df["name"] == "toolkit/tiny"].iloc[0]
    assert pd.isna(tiny["error"]) and tiny["params"] > 0 and tiny["format"] == "safetensors" and tiny["fits"]


def test_models_respects_hf_env(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(cache["dir"].parent))
    assert "test-org/small-gguf" in set(models()["name"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache["dir"]))
    monkeypatch.setenv("HF_HOME", "/nonexistent")
    assert "test-org/small-gguf" in set(models()["name"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache["dir"] / "empty"))
    assert models().empty


def test_fits_column_small_and_large_device(cache):
    big = models(cache_dir=cache["dir"], device="24GiB")
    ok = big[big["error"].isna()]
    assert ok["fits"].all()
    llama = ok[ok["name"] == "test-org/llama-small"].iloc[0]
    assert llama["plan"] == "hf none bfloat16 ctx=512"  # a bare 24GiB spec is a cc 8.0 GPU
    gguf = ok[ok["name"] == "test-org/small-gguf"].iloc[0]
    assert gguf["plan"].startswith("llamacpp gguf-q4_0")
    cpu = models(cache_dir=cache["dir"], device="cpu:16GiB")
    assert cpu.set_index("name").loc["test-org/small-gguf", "fits"]
    plan = cpu[(cpu["name"] == "test-org/llama-small")].iloc[0]["plan"]
    assert plan == "hf none float32 ctx=512"
    small = models(cache_dir=cache["dir"], device="cpu:1MiB")
    ok = small[small["error"].isna()]
    assert not ok["fits"].any()
    assert "does not fit" in ok[ok["name"] == "test-org/llama-small"].iloc[0]["plan"]


def test_local_paths(tmp_path):
    root = tmp_path / "models"
    make_folder(root / "llama", SMALL, llama_tensors(SMALL))
    mlx_cfg = dict(SMALL, quantization={"group_size": 64, "bits": 4})
    make_folder(root / "mlx", mlx_cfg, llama_tensors(SMALL, "F16"))
    write_gguf(root / "a.Q4_0.gguf")
    (root / "ggufs").mkdir()
    write_gguf(root / "ggufs" / "m-q4.gguf")
    write_gguf(root / "ggufs" / "m-q8.gguf")
    (root / "notes").mkdir()
    df = models([root], include_cache=False)
    by = {r["name"]: r for r in df.to_dict("records")}
    assert set(by) == {"llama", "mlx", "a.Q4_0.gguf", "ggufs/m-q4.gguf", "ggufs/m-q8.gguf"}
    assert all(r["source"] == "local" and pd.isna(r["revision"]) for r in by.values())
    assert by["mlx"]["format"] == "mlx" and by["mlx"]["quantization"] == "mlx-4bit"
    assert by["llama"]["size_on_disk_bytes"] == sum(p.stat().st_size for p in (root / "llama").iterdir())
    # a model folder or file named directly is one row
    assert list(models(root / "llama", include_cache=False)["name"]) == ["llama"]
    assert list(models([str(root / "a.Q4_0.gguf")], include_cache=False)["format"]) == ["gguf"]
    with pytest.raises(ModelNotFound):
        models([tmp_path / "missing"], include_cache=False)


def test_delete_cached_revision_then_repo(cache):
    d = cache["dir"]
    second = commit_of("second")
    freed = delete_model("test-org/llama-small", revision=second[:10], cache_dir=d, dry_run=True)
    assert freed > 0 and second in set(models(cache_dir=d)["revision"])
    assert delete_model("test-org/llama-small", revision=second[:10], cache_dir=d) == freed
    df = models(cache_dir=d)
    assert second not in set(df["revision"]) and "test-org/llama-small" in set(df["name"])
    path = df[df["name"] == "test-org/small-gguf"].iloc[0]["path"]
    assert delete_model(path, cache_dir=d) > 0  # a path from the listing names its cached revision
    assert delete_model("test-org/llama-small", cache_dir=d) > 0
    names = set(models(cache_dir=d)["name"])
    assert "test-org/llama-small" not in names and "test-org/small-gguf" not in names
    with pytest.raises(ModelNotFound, match="cached models"):
        delete_model("test-org/nope", cache_dir=d)
    with pytest.raises(ModelNotFound, match="revision"):
        delete_model("test-org/llama-small-gptq", revision="ffff", cache_dir=d)


def test_delete_local(tmp_path):
    folder = make_folder(tmp_path / "m", SMALL, llama_tensors(SMALL))
    gguf = tmp_path / "x.gguf"
    write_gguf(gguf)
    size = gguf.stat().st_size
    assert delete_model(gguf, cache_dir=tmp_path / "nocache") == size and not gguf.exists()
    assert delete_model(folder, cache_dir=tmp_path / "nocache") > 0 and not folder.exists()
    (tmp_path / "docs").mkdir()
    with pytest.raises(InvalidSpec, match="refusing"):
        delete_model(tmp_path / "docs", cache_dir=tmp_path / "nocache")


def test_cli(cache, capsys, tmp_path):
    parser = argparse.ArgumentParser()
    models_command.add_arguments(parser)
    assert models_command.run(parser.parse_args(["--cache-dir", str(cache["dir"]), "--json", "--device", "cpu:16GiB"])) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "fits", "plan", "revision"} <= set(rows[0])
    assert models_command.run(parser.parse_args(["--cache-dir", str(cache["dir"])])) == 0
    out = capsys.readouterr().out
    assert "test-org/small-gguf" in out and "hf-cache" in out
    args = parser.parse_args(["--cache-dir", str(cache["dir"]), "--delete", "test-org/small-gguf", "--yes"])
    assert models_command.run(args) == 0 and "freed" in capsys.readouterr().out
    assert "test-org/small-gguf" not in set(models(cache_dir=cache["dir"])["name"])


def test_imports_stay_light():
    code = ("import sys, toolkit.hub.models, toolkit.hub.fetch, toolkit.hub.recipe; "
            "print([m for m in ('torch', 'transformers', 'huggingface_hub', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_safetensors_writer_is_sparse(tmp_path):
    # the fake cache stays cheap because the test files are sparse
    size = write_safetensors(tmp_path / "x.safetensors", llama_tensors(SMALL))
    assert size == _numel(llama_tensors(SMALL)) * 4
