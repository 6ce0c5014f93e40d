"""Hostile inputs (issue #7): each case runs `toolkit plan` and `toolkit generate` (a real load) as
subprocesses and checks the exit code, a one-line message that names the problem and the fix, that
no traceback is shown, and — where the input carries code — that the code never ran.

Exit codes: 0 success, 2 for every ToolkitError (bad input, unsafe checkpoint, failed load),
3 for NothingFits. `plan` reads metadata only (it never imports transformers or llama.cpp), so it
cannot know which architectures the installed libraries support, nor read a tokenizer: such a model
plans fine (exit 0) and `generate` fails with the library's reason and the fix. A context beyond the
model's maximum is an error in both (never silently clamped): the user asked for more than it has.

Code-execution traps: a pickle whose unpickling writes a marker file, and a model folder whose
``auto_map`` modules write one when imported. ``test_traps_work`` shows each trap does fire when
the code is allowed to run, so a missing marker means the code did not run.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from _modelfiles import TINY_CONFIG, make_folder, write_gguf

from toolkit.builtin.tiny import BASE

MARKER = "MARKER"


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


# ---------------------------------------------------------------------------------------------
# builders: each writes a hostile input under tmp_path and returns the MODEL argument


def tiny_copy(tmp_path: Path, name: str = "tiny") -> Path:
    dst = tmp_path / name
    shutil.copytree(BASE, dst)
    return dst


def edit_config(folder: Path, **changes) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def config_folder(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    return folder


def without(*keys: str) -> str:
    return json.dumps({k: v for k, v in TINY_CONFIG.items() if k not in keys})


def corrupt_tokenizer(tmp_path: Path) -> Path:
    folder = tiny_copy(tmp_path)
    (folder / "tokenizer.json").write_text("{not json")
    return folder


def st_truncated(tmp_path: Path) -> Path:
    folder = tiny_copy(tmp_path)
    f = folder / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)  # cut in the middle of the tensor data
    return folder


def st_header(tmp_path: Path, raw: bytes) -> Path:
    folder = make_folder(tmp_path / "m", TINY_CONFIG)
    (folder / "model.safetensors").write_bytes(raw)
    return folder


def gguf(tmp_path: Path, mangle: Callable[[bytes], bytes] = lambda b: b) -> Path:
    path = tmp_path / "m.gguf"
    write_gguf(path)
    path.write_bytes(mangle(path.read_bytes()))
    return path


def remote_code(tmp_path: Path, model_type: str) -> Path:
    """A copy of the tiny model whose config names shipped modules (auto_map) that write the marker."""
    folder = tiny_copy(tmp_path)
    marker = str(tmp_path / MARKER)
    (folder / "configuration_evil.py").write_text(
        f"import pathlib\npathlib.Path({marker!r}).write_text('configuration_evil imported')\n"
        "from transformers import LlamaConfig\n\n\n"
        f"class EvilConfig(LlamaConfig):\n    model_type = {model_type!r}\n")
    (folder / "modeling_evil.py").write_text(
        f"import pathlib\npathlib.Path({marker!r}).write_text('modeling_evil imported')\n"
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_evil import EvilConfig\n\n\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    return edit_config(folder, model_type=model_type, architectures=["EvilForCausalLM"],
                       auto_map={"AutoConfig": "configuration_evil.EvilConfig",
                                 "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"})


class _Evil:
    """Unpickling this runs ``exec``, which writes the marker."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


def evil_pickle(path: Path) -> Path:
    path.write_bytes(pickle.dumps(_Evil(str(path.parent.parent / MARKER)), protocol=2))
    return path


def pickle_folder(tmp_path: Path) -> Path:
    folder = make_folder(tmp_path / "m", TINY_CONFIG)
    evil_pickle(folder / "pytorch_model.bin")
    return folder


def pickle_folder_with_tokenizer(tmp_path: Path) -> Path:
    folder = pickle_folder(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BASE / name, folder)
    return folder


def pickle_file(tmp_path: Path) -> Path:
    (tmp_path / "m").mkdir()
    return evil_pickle(tmp_path / "m" / "model.pt")


# ---------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    id: str
    build: Callable[[Path], Path | str]
    plan: tuple[int, tuple[str, ...]]  # exit code, words the message must contain (case-insensitive)
    generate: tuple[int, tuple[str, ...]]
    args: tuple[str, ...] = ("--device", "cpu")
    gen_args: tuple[str, ...] = ()  # generate only
    code: bool = False  # the input carries code: the marker must not appear
    words_out: tuple[str, ...] = ()  # generate exit 0: words its stderr must contain


BAD_FILE = ("re-download",)
# what `plan` says (exit 0) about a model that ships code or pickle weights
REMOTE_REASON = ("shipped python code (auto_map), never run while planning", "trust_remote_code=true")
# the plan says which of the two a load will do, from the installed transformers' own table of model types
KNOWN_REASON = REMOTE_REASON + ("loads with transformers' built-in llama implementation", "shipped code is not run")
UNKNOWN_REASON = REMOTE_REASON + ("transformers has no built-in evil_arch", "loading needs --trust-remote-code",
                                  "which runs the shipped code")
PICKLE_REASON = ("pickle files (never opened while planning)", "--allow-pickle")
CASES = [
    Case("missing-path", lambda t: t / "no-such-model",
         (2, ("does not exist", "pass a model folder")), (2, ("does not exist", "pass a model folder"))),
    Case("unknown-hub-id", lambda t: "no-such-org/no-such-model",
         (2, ("no-such-org/no-such-model", "check the id", "hf_hub_offline is set")),
         (2, ("no-such-org/no-such-model", "check the id", "hf_hub_offline is set"))),
    Case("config-not-json", lambda t: config_folder(t, "{not json"),
         (2, ("config.json is not valid json", "fix or re-download")),
         (2, ("config.json is not valid json", "fix or re-download"))),
    Case("config-no-hidden-size", lambda t: config_folder(t, without("hidden_size")),
         (2, ("'hidden_size'", "fix or re-download")), (2, ("'hidden_size'", "fix or re-download"))),
    Case("config-no-layers", lambda t: config_folder(t, without("num_hidden_layers")),
         (2, ("'num_hidden_layers'", "fix or re-download")), (2, ("'num_hidden_layers'", "fix or re-download"))),
    Case("safetensors-truncated", st_truncated,
         (2, ("model.safetensors is truncated",) + BAD_FILE), (2, ("model.safetensors is truncated",) + BAD_FILE)),
    Case("safetensors-header-too-long", lambda t: st_header(t, struct.pack("<Q", 10**6) + b"{}"),
         (2, ("corrupt or truncated safetensors header",) + BAD_FILE),
         (2, ("corrupt or truncated safetensors header",) + BAD_FILE)),
    Case("safetensors-header-not-json", lambda t: st_header(t, struct.pack("<Q", 8) + b"not json"),
         (2, ("header that is not valid json",) + BAD_FILE), (2, ("header that is not valid json",) + BAD_FILE)),
    Case("gguf-truncated-header", lambda t: gguf(t, lambda b: b[:200]),
         (2, ("truncated inside its gguf header",) + BAD_FILE), (2, ("truncated inside its gguf header",) + BAD_FILE)),
    Case("gguf-truncated-data", lambda t: gguf(t, lambda b: b[: len(b) - 1000]),
         (2, ("m.gguf is truncated", "tensor data") + BAD_FILE), (2, ("m.gguf is truncated", "tensor data") + BAD_FILE)),
    Case("gguf-bad-magic", lambda t: gguf(t, lambda b: b"GGML" + b[4:]),
         (2, ("not a gguf file (bad magic)", "convert")), (2, ("not a gguf file (bad magic)", "convert"))),
    # files the planner does not read (it never imports transformers): sound metadata plans (exit 0), the load fails
    Case("tokenizer-corrupt", corrupt_tokenizer,
         (0, ()), (2, ("could not load the tokenizer of tiny", "jsondecodeerror", "re-download"))),
    # architectures: the planner cannot know what the installed libraries support (exit 0); the load names it
    Case("architecture-unknown-to-transformers", lambda t: edit_config(tiny_copy(t), model_type="frobnicator"),
         (0, ()), (2, ("'frobnicator'", "transformers", "upgrade"))),
    Case("architecture-unknown-to-llamacpp", lambda t: gguf(t, lambda b: b.replace(b"llama", b"zorro")),
         (0, ()), (2, ("llama.cpp could not load m.gguf", "'zorro'", "upgrade llama-cpp-python"))),
    Case("llamacpp-for-safetensors", lambda t: BASE, (2, ("llamacpp needs a gguf", "convert_hf_to_gguf")),
         (2, ("llamacpp needs a gguf", "convert_hf_to_gguf")), args=("--device", "cpu", "--backend", "llamacpp")),
    Case("quantization-unknown", lambda t: BASE, (2, ("unknown quantization 'int3'", "use one of", "bnb-4bit")),
         (2, ("unknown quantization 'int3'", "use one of", "bnb-4bit")),
         args=("--device", "cpu", "--quantization", "int3")),
    Case("quantization-bnb-on-gguf", gguf, (2, ("'bnb-4bit'", "not re-quantized", "use one of")),
         (2, ("'bnb-4bit'", "not re-quantized", "use one of")),
         args=("--device", "cpu", "--backend", "llamacpp", "--quantization", "bnb-4bit")),
    Case("context-beyond-maximum", lambda t: BASE, (2, ("context 4096 exceeds", "2048", "--context 2048 or less")),
         (2, ("context 4096 exceeds", "2048", "--context 2048 or less")), args=("--device", "cpu", "--context", "4096")),
    Case("memory-words", lambda t: BASE, (2, ("cannot parse memory 'lots'", "24gib")),
         (2, ("cannot parse memory 'lots'", "24gib")), args=("--device", "cpu", "--memory", "lots")),
    Case("memory-negative", lambda t: BASE, (2, ("memory must be positive", "'-5gib'", "24gib")),
         (2, ("memory must be positive", "'-5gib'", "24gib")),
         args=("--device", "cpu", "--memory=-5GiB")),
    Case("memory-unit", lambda t: BASE, (2, ("cannot parse memory '12xb'", "24gib")),
         (2, ("cannot parse memory '12xb'", "24gib")), args=("--device", "cpu", "--memory", "12XB")),
    Case("memory-zero", lambda t: BASE, (2, ("memory must be positive", "24gib")),
         (2, ("memory must be positive", "24gib")), args=("--device", "cpu", "--memory", "0GiB")),
    Case("device-unknown", lambda t: BASE, (2, ("unknown device spec 'z80'", "cpu:16gib")),
         (2, ("unknown device spec 'z80'", "cpu:16gib")), args=("--device", "Z80")),
    Case("nothing-fits", lambda t: BASE, (3, ("does not fit", "needs", "fix")), (3, ("does not fit", "needs", "fix")),
         args=("--device", "cpu", "--memory", "10MiB")),
    # code shipped with the model
    Case("remote-code-known-architecture", lambda t: remote_code(t, "llama"), (0, KNOWN_REASON),
         (0, ()), code=True, words_out=("ships python code", "not run", "built-in")),
    Case("remote-code-unknown-architecture", lambda t: remote_code(t, "evil_arch"), (0, UNKNOWN_REASON),
         (2, ("ships its own python code", "--trust-remote-code", "trust_remote_code=true")), code=True),
    Case("pickle-folder", pickle_folder, (0, PICKLE_REASON),
         (2, ("only pickle weights", "--allow-pickle", "allow_pickle=true", "safetensors")), code=True),
    # --allow-pickle lets transformers open it, with torch's weights-only unpickler, which refuses the code
    Case("pickle-folder-allowed", pickle_folder_with_tokenizer, (0, PICKLE_REASON),
         (2, ("pickle weights of m call code (exec)", "weights-only", "safetensors")), code=True,
         gen_args=("--allow-pickle",)),
    Case("pickle-file", pickle_file, (2, ("model.pt is a pickle checkpoint", "never opens", "safetensors")),
         (2, ("model.pt is a pickle checkpoint", "never opens", "safetensors")), code=True),
]


def _message(stderr: str, command: str) -> str:
    """The error line the CLI printed (one paragraph = one line), lower-cased."""
    lines = [line for line in stderr.splitlines() if line.startswith(f"toolkit {command}: ")]
    return lines[-1].lower() if lines else ""


@pytest.mark.parametrize("command", ["plan", "generate"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile(case: Case, command: str, tmp_path: Path):
    model = str(case.build(tmp_path))
    args = case.args + (("--max-tokens", "4", *case.gen_args) if command == "generate" else ())
    proc = run(tmp_path, command, model, *args)
    rc, words = getattr(case, command)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == rc, proc.stderr
    if rc:
        message = _message(proc.stderr, command)
        assert message == proc.stderr.strip().splitlines()[-1].lower(), "the message is not one paragraph, last"
        for word in words:
            assert word in message, f"{word!r} not in {message!r}"
    elif command == "plan":
        reasons = proc.stdout.lower()
        assert all(word in reasons for word in words), proc.stdout
    else:
        assert proc.stdout.strip(), "no text generated"
        stderr = proc.stderr.lower()
        assert all(word in stderr for word in case.words_out), proc.stderr
    if case.code:
        assert not (tmp_path / MARKER).exists(), (tmp_path / MARKER).read_text()


def test_traps_work(tmp_path: Path):
    """The traps fire when the code is allowed to run: so their absence above means nothing ran."""
    # the pickle: plain unpickling runs it
    path = pickle_file(tmp_path)
    subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.load(open(sys.argv[1], 'rb'))", str(path)],
                   check=True)
    assert (tmp_path / MARKER).read_text() == "unpickled"
    (tmp_path / MARKER).unlink()
    # the shipped modules: --trust-remote-code imports them (and the model then loads and generates)
    folder = remote_code(tmp_path, "evil_arch")
    proc = run(tmp_path, "generate", str(folder), "--device", "cpu", "--max-tokens", "4", "--trust-remote-code")
    assert (tmp_path / MARKER).exists(), proc.stderr
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
