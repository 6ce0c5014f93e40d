"""``toolkit generate --chat/--system`` and the sampling flags, end to end on the tiny model (issue #16).

The oracle for the chat template: hf and llama.cpp load the same weights (the gguf-f16 variant is
converted from the shipped folder) and render the same ChatML template (transformers' from
chat_template.jinja, llama.cpp's from the GGUF metadata), so greedy chat output must be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from toolkit import logs

PROMPT = "class Stack:"
SYSTEM = "You write Python."


def generate(model: str, *args: str, check: bool = True) -> dict | subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != logs.ENV}
    proc = subprocess.run([sys.executable, "-m", "toolkit", "generate", model, *args, "--json"], capture_output=True,
                          text=True, env=environ, timeout=600)
    if not check:
        return proc
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def gguf() -> str:
    from toolkit.builtin.tiny import tiny

    return str(tiny("gguf-f16"))


def chat_prompt_tokens(system: str | None) -> int:
    from transformers import AutoTokenizer

    from toolkit.builtin.tiny import BASE

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": PROMPT}]
    tok = AutoTokenizer.from_pretrained(BASE)
    return len(tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False))


@pytest.mark.slow  # builds gguf-f16 when it is not cached
def test_greedy_chat_is_the_same_on_hf_llamacpp_and_mlx(gguf):
    args = ("--chat", "--system", SYSTEM, "--prompt", PROMPT, "--max-tokens", "24")
    hf = generate("tiny", *args, "--backend", "hf")
    llamacpp = generate(gguf, *args)
    mlx = generate("tiny", *args, "--backend", "mlx")
    assert (hf["backend"], llamacpp["backend"], mlx["backend"]) == ("hf", "llamacpp", "mlx")
    assert hf["prompt_tokens"] == llamacpp["prompt_tokens"] == mlx["prompt_tokens"] == chat_prompt_tokens(SYSTEM)
    assert hf["text"].strip() and hf["text"] == llamacpp["text"] == mlx["text"]
    # the template made a difference: the plain prompt is 4 tokens and continues otherwise
    plain = generate("tiny", "--prompt", PROMPT, "--max-tokens", "24")
    assert plain["prompt_tokens"] < hf["prompt_tokens"] and plain["text"] != hf["text"]


def test_system_implies_chat():
    with_system = generate("tiny", "--system", SYSTEM, "--prompt", PROMPT, "--max-tokens", "2")
    assert with_system["prompt_tokens"] == chat_prompt_tokens(SYSTEM)
    assert generate("tiny", "--chat", "--prompt", PROMPT, "--max-tokens", "2")["prompt_tokens"] == \
        chat_prompt_tokens(None)


@pytest.mark.slow  # builds gguf-f16 when it is not cached
@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_seeded_sampling_repeats_on_one_backend(backend, gguf):
    model = gguf if backend == "llamacpp" else "tiny"
    args = ("--chat", "--prompt", PROMPT, "--max-tokens", "24", "--temperature", "1.0", "--top-p", "0.95")
    first, again = generate(model, *args, "--seed", "7"), generate(model, *args, "--seed", "7")
    other = generate(model, *args, "--seed", "8")
    assert first["text"] == again["text"]
    assert first["text"] != other["text"]  # 24 tokens sampled at temperature 1: a different seed differs
    greedy = generate(model, "--chat", "--prompt", PROMPT, "--max-tokens", "24")
    assert first["text"] != greedy["text"]


def test_stop_strings():
    full = generate("tiny", "--chat", "--prompt", PROMPT, "--max-tokens", "32")
    assert '"""' in full["text"]
    cut = generate("tiny", "--chat", "--prompt", PROMPT, "--max-tokens", "32", "--stop", "zzz", "--stop", '"""')
    assert cut["text"] == full["text"].split('"""')[0] and cut["finish_reason"] == "stop"


def test_bad_sampling_values_fail_before_loading():
    for args, words in ((("--temperature", "-1"), "temperature must be >= 0"),
                        (("--top-p", "0"), "top_p must be in (0, 1]")):
        proc = generate("tiny", *args, check=False)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_help_shows_the_sampling_defaults():
    text = subprocess.run([sys.executable, "-m", "toolkit", "generate", "--help"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    for words in ("--chat", "--system SYSTEM", "--temperature TEMPERATURE", "(default: 0)", "--top-p TOP_P",
                  "(default: 1)", "--seed SEED", "--stop TEXT", "--max-tokens MAX_TOKENS", "(default: 64)"):
        assert words in flat, words
