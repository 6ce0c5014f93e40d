from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
from _hub import HubServer, commit_of
from _modelfiles import TINY_CONFIG, llama_tensors, write_gguf, write_safetensors

from toolkit.commands import fetch as fetch_command
from toolkit.errors import BackendUnavailable, InvalidModel, InvalidSpec, ModelNotFound, UnsafeCheckpoint
from toolkit.hub.fetch import fetch, select_files

pytest.importorskip("huggingface_hub")

SMALL = dict(TINY_CONFIG, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
# distinct contents: huggingface_hub skips a GET when a blob with the same ETag is already cached
META = {"config.json": json.dumps(SMALL).encode(), "tokenizer.json": b'{"t": 1}', "tokenizer_config.json": b'{"c": 2}',
        "generation_config.json": b'{"g": 3}', "README.md": b"# card", ".gitattributes": b"*.bin lfs"}


def _st_bytes(tmp: Path, tensors: dict, random_data: bool = False) -> bytes:
    path = tmp / "x.safetensors"
    data_len = write_safetensors(path, tensors)
    raw = path.read_bytes()
    if random_data:  # make byte-identity after a resumed download meaningful
        raw = raw[: len(raw) - data_len] + os.urandom(data_len)
    return raw


def _gguf_bytes(tmp: Path) -> bytes:
    write_gguf(tmp / "x.gguf")
    return (tmp / "x.gguf").read_bytes()


@pytest.fixture
def server(tmp_path, monkeypatch):
    st = _st_bytes(tmp_path, llama_tensors(SMALL))
    gg = _gguf_bytes(tmp_path)
    half = dict(list(llama_tensors(SMALL).items())[:5])
    index = {"metadata": {"total_size": 1}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                                           "lm_head.weight": "model-00002-of-00002.safetensors"}}
    repos = {
        "org/mixed": {"files": {**META, "model.safetensors": st, "pytorch_model.bin": b"pickle!",
                                "training_args.bin": b"pickle!", "gptq/model.safetensors": st + b"\0" * 8,
                                "small.Q4_K_M.gguf": gg}},
        "org/gguf": {"files": {"README.md": b"# card", **{name: gg + b"\0" * i for i, name in enumerate(
            ["small.Q4_K_M.gguf", "small.Q8_0.gguf", "small.Q8_0-00001-of-00002.gguf",
             "small.Q8_0-00002-of-00002.gguf", "small.Q4_K.gguf"])}}},
        # larger than huggingface_hub's download chunk, so a cut after the first chunk resumes mid-file
        "org/big": {"files": {**META, "model.safetensors": _st_bytes(tmp_path, {"w": ("F32", [3 * 2**20])}, True)}},
        "org/missing-shard": {"files": {**META, "model.safetensors.index.json": json.dumps(index).encode(),
                                        "model-00001-of-00002.safetensors": _st_bytes(tmp_path, half)}},
        "org/pickle-only": {"files": {**META, "pytorch_model.bin": b"pickle!"}},
        # main moved on after v1: a pinned revision must keep giving the old files
        "org/evolving": {"files": {**META, "model.safetensors": st, "generation_config.json": b'{"v": 2}'},
                         "revisions": {"v1": {"sha": commit_of("org/evolving@v1"),
                                              "files": {**META, "model.safetensors": st,
                                                        "generation_config.json": b'{"v": 1}'}}}},
    }
    for rid, repo in repos.items():
        repo["sha"] = commit_of(rid)
    with serving(repos, tmp_path, monkeypatch) as srv:
        yield srv


@contextlib.contextmanager
def serving(repos: dict, tmp_path: Path, monkeypatch):
    """Serve ``repos`` on 127.0.0.1 and point huggingface_hub (and a fresh cache) at it."""
    import huggingface_hub.constants as constants

    with HubServer(repos) as srv:
        # huggingface_hub reads HF_ENDPOINT once at import, and some of its calls (the agent-harness
        # registry behind its user-agent header) use that copy: point it here too, never at huggingface.co.
        monkeypatch.setattr(constants, "ENDPOINT", srv.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", srv.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        srv.cache = tmp_path / "hub"
        yield srv


def test_safetensors_only_no_pickles(server):
    path = fetch("org/mixed")
    assert path == server.cache / "models--org--mixed" / "snapshots" / commit_of("org/mixed")
    got = sorted(server.downloads())
    assert got == ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                   "tokenizer_config.json"]
    assert not list(path.rglob("*.bin")) and not (path / "gptq").exists() and not list(path.glob("*.gguf"))
    assert (path / "model.safetensors").read_bytes() == server.repos["org/mixed"]["files"]["model.safetensors"]
    # the listing sees what was fetched, at its commit
    from toolkit.hub.models import models

    row = models(cache_dir=server.cache).set_index("name").loc["org/mixed"]
    assert row["revision"] == commit_of("org/mixed") and row["format"] == "safetensors"


def test_allow_pickle_never_beats_safetensors(server):
    fetch("org/mixed", allow_pickle=True, include_quantized=True)
    got = set(server.downloads())
    assert "pytorch_model.bin" not in got and "gptq/model.safetensors" in got
    with pytest.raises(UnsafeCheckpoint, match="allow_pickle"):
        fetch("org/pickle-only")
    path = fetch("org/pickle-only", allow_pickle=True)
    assert (path / "pytorch_model.bin").is_file() and "training_args.bin" not in server.downloads()


def test_gguf_only_the_requested_quantization(server):
    path = fetch("org/gguf", quantization="gguf-q4_k_m")
    assert path.name == "small.Q4_K_M.gguf" and path.is_file()
    assert server.downloads() == ["small.Q4_K_M.gguf"]
    server.log.clear()
    path = fetch("org/gguf", quantization="gguf-Q8_0", backend="llamacpp")
    assert path.name == "small.Q8_0.gguf" and server.downloads() == ["small.Q8_0.gguf"]  # the unsharded one
    with pytest.raises(InvalidSpec, match=r"small\.Q4_K_M\.gguf.*small\.Q8_0\.gguf"):
        fetch("org/gguf", quantization="gguf-q5_k_m")
    with pytest.raises(InvalidSpec, match="several GGUF"):
        fetch("org/gguf", backend="llamacpp")


def test_interrupted_download_resumes(server):
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    data = server.repos["org/big"]["files"]["model.safetensors"]
    assert len(data) > DOWNLOAD_CHUNK_SIZE + 1000
    server.cut["model.safetensors"] = DOWNLOAD_CHUNK_SIZE + 1000
    path = fetch("org/big")
    assert (path / "model.safetensors").read_bytes() == data
    gets = [r for m, p, r in server.log if m == "GET" and p.endswith("/model.safetensors")]
    # huggingface_hub keeps the whole chunks it got and asks for the rest with a Range request
    assert gets == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]


def test_missing_shard_is_reported(server):
    with pytest.raises(InvalidModel, match="model-00002-of-00002.safetensors"):
        fetch("org/missing-shard")


def test_offline(server, monkeypatch):
    online = fetch("org/mixed")
    server.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch("org/mixed") == online and server.log == []
    with pytest.raises(ModelNotFound, match="HF_HUB_OFFLINE") as e:
        fetch("org/big")
    assert "org/big" in str(e.value) and "connected machine" in str(e.value)
    assert server.log == []


def test_unknown_repo_and_revision(server):
    with pytest.raises(ModelNotFound):
        fetch("org/nope")
    with pytest.raises(ModelNotFound):
        fetch("not a hub id")


def test_pinned_revision(server, monkeypatch):
    """A pinned revision (tag or commit) gets that commit's files, even after main moved on; a
    revision the hub does not have is a clear error; a pinned commit in the cache works offline."""
    old = commit_of("org/evolving@v1")
    latest = fetch("org/evolving")
    assert latest.name == commit_of("org/evolving") and (latest / "generation_config.json").read_bytes() == b'{"v": 2}'
    by_tag = fetch("org/evolving", revision="v1")
    assert by_tag.name == old and (by_tag / "generation_config.json").read_bytes() == b'{"v": 1}'
    server.log.clear()
    by_commit = fetch("org/evolving", revision=old)
    assert by_commit == by_tag
    assert server.downloads() == []  # a full commit sha already in the cache needs no download
    with pytest.raises(ModelNotFound, match="revision 'v0'"):
        fetch("org/evolving", revision="v0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch("org/evolving", revision=old) == by_tag


@pytest.mark.slow
def test_load_a_hub_id_at_a_pinned_revision(tmp_path, monkeypatch):
    """toolkit.load("org/name", revision=...) plans from that revision's metadata, fetches only what
    the backend needs, and loads it: here the real tiny model, served with an older revision whose
    config allowed 1024 positions."""
    import toolkit
    from toolkit.builtin.tiny import BASE

    files = {f.name: f.read_bytes() for f in BASE.iterdir() if f.is_file() and f.suffix != ".md"}
    old_config = json.loads(files["config.json"])
    old_config["max_position_embeddings"] = 1024
    repos = {"org/tiny": {"sha": commit_of("org/tiny"), "files": files,
                          "revisions": {"v1": {"sha": commit_of("org/tiny@v1"),
                                               "files": {**files, "config.json": json.dumps(old_config).encode()}}}}}
    with serving(repos, tmp_path, monkeypatch):
        with toolkit.load(BASE, "hf", device="cpu:8GiB") as local:
            expected = local.generate("def add(a, b):\n", max_tokens=8, ignore_eos=True).token_ids
        for revision, sha, positions in ((None, commit_of("org/tiny"), 2048), ("v1", commit_of("org/tiny@v1"), 1024)):
            with toolkit.load("org/tiny", "hf", device="cpu:8GiB", revision=revision) as model:
                assert model.target.path.name == sha and model.plan.max_context == positions
                assert model.generate("def add(a, b):\n", max_tokens=8, ignore_eos=True).token_ids == expected
        with pytest.raises(ModelNotFound, match="revision"):
            toolkit.load("org/tiny", "hf", device="cpu:8GiB", revision="v0")


def test_cli_prints_path_last(server, capsys):
    parser = argparse.ArgumentParser()
    fetch_command.add_arguments(parser)
    assert fetch_command.run(parser.parse_args(["org/gguf", "--quantization", "gguf-q4_k_m"])) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert Path(last).name == "small.Q4_K_M.gguf" and Path(last).is_file()


def test_missing_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(BackendUnavailable, match=r"toolkit\[hub\]"):
        fetch("org/anything")


def test_select_files_rules():
    files = ["config.json", "tokenizer.model", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
             "model.safetensors.index.json", "model-4bit.safetensors", "onnx/model.onnx", "pytorch_model.bin"]
    backend, got = select_files(files)
    assert backend == "hf" and "model-4bit.safetensors" not in got and "pytorch_model.bin" not in got
    assert "model.safetensors.index.json" in got and "onnx/model.onnx" not in got
    assert select_files(["config.json", "model-4bit.safetensors"])[1] == ["config.json", "model-4bit.safetensors"]
    assert select_files(["a.Q4_K_M.gguf"]) == ("llamacpp", ["a.Q4_K_M.gguf"])
    sharded = ["Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf", "m-Q8_0.gguf"]
    assert select_files(sharded, quantization="gguf-q4_k_m")[1] == sharded[:2]
    with pytest.raises(InvalidSpec, match="llamacpp"):
        select_files(["a.gguf"], backend="hf")
    with pytest.raises(InvalidSpec, match="openai"):
        select_files(files, backend="openai")
