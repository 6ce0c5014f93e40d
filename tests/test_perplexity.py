"""`toolkit perplexity`: toolkit's protocol (the quality module's) and llama-perplexity's, on any backend.

llama-perplexity's figure for the tiny model's gguf-f32 on the bundled held-out text (``-c 256
--chunks 64``) is 27.6505 ± 0.87732 (run here with the binary built from the llama-cpp-python 0.3.36
sdist; /work/shared/FINDINGS.md); the same protocol re-done through each backend's logprobs must give it.
"""

import json
import shutil
import subprocess
import sys
import numpy as np
import pytest

from toolkit.errors import InvalidSpec
from toolkit.measuring.quality import llamacpp_protocol_windows, protocol_perplexity, token_nlls

LLAMA_PERPLEXITY = 27.6505  # llama-perplexity -m tiny-f32.gguf -f toolkit/data/heldout.txt -c 256 --chunks 64
LLAMA_PERPLEXITY_ERR = 0.87732


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "toolkit", "perplexity", *args], capture_output=True, text=True)


def test_chunks_are_consecutive_from_the_start_with_bos_first():
    ids = list(range(100, 1100))  # 1000 tokens
    windows = llamacpp_protocol_windows(ids, 256, bos_id=1)
    assert len(windows) == 3  # the 232-token tail fills no chunk
    assert [w[0] for w in windows] == [1, 1, 1]  # the first token is replaced, not shifted
    assert windows[1][1:] == ids[257:512] and all(len(w) == 256 for w in windows)
    assert llamacpp_protocol_windows(ids, 256)[0][0] == 100  # no BOS: kept as it is
    assert len(llamacpp_protocol_windows(ids, 256, chunks=2)) == 2
    with pytest.raises(InvalidSpec, match="at least 2 x ctx"):
        llamacpp_protocol_windows(ids, 512)


def test_only_the_second_half_is_scored():
    class Uniform:
        """Log-probs that give each position j the NLL j (so the scored rows are visible)."""

        def logprobs(self, sequences):
            out = []
            for seq in sequences:
                lp = np.full((len(seq) - 1, 4096), -1e9, dtype=np.float32)
                for j in range(len(seq) - 1):
                    lp[j, seq[j + 1]] = -float(j)
                out.append(lp)
            return out

    nll = token_nlls(Uniform(), [list(range(16))], first_row=8)
    assert nll.tolist() == [8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0]  # rows 8..14 predict tokens 9..15


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["llamacpp", "hf"])
def test_llamacpp_protocol_matches_llama_perplexity(backend):
    proc = _cli("tiny", "--backend", backend, "--protocol", "llama.cpp", "--ctx", "256", "--chunks", "64", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["protocol"] == "llama.cpp" and out["tokens"] == 64 * 127 and out["chunks"] == 64
    assert out["perplexity"] == pytest.approx(LLAMA_PERPLEXITY, abs=2e-3)
    assert out["uncertainty"] == pytest.approx(LLAMA_PERPLEXITY_ERR, abs=2e-3)


@pytest.mark.slow
def test_against_the_llama_perplexity_binary_when_built(tmp_path):
    """Only where llama.cpp's tools were built (scripts outside this repo build them; not in CI)."""
    from toolkit.builtin.quantize import cache_root
    from toolkit.builtin.tiny import tiny
    from toolkit.data import HELDOUT

    # the build from the vendored source first (the same code as llama-cpp-python), then one on PATH
    binary = next(iter(sorted(cache_root().glob("llama.cpp-tools-*/bin/llama-perplexity"))), None) or shutil.which(
        "llama-perplexity")
    if binary is None:
        pytest.skip("llama-perplexity is not built here (the protocol test above uses its recorded figure)")
    if subprocess.run([str(binary), "--help"], capture_output=True).returncode != 0:
        pytest.skip(f"{binary} does not run on this machine (built elsewhere?); scripts/build_llama_tools.sh rebuilds it")
    run = subprocess.run([str(binary), "-m", str(tiny("gguf-f32")), "-f", str(HELDOUT), "-c", "256", "--chunks", "16",
                          "-t", "1"], capture_output=True, text=True, timeout=600)
    if run.returncode < 0:  # killed by a signal (SIGILL: a build for another CPU): the oracle, not toolkit, failed
        pytest.skip(f"{binary} died with signal {-run.returncode} on this machine; scripts/build_llama_tools.sh rebuilds it")
    output = run.stdout + run.stderr  # the final estimate goes to one stream or the other by llama.cpp version
    final = next((line for line in output.splitlines() if "Final estimate" in line), None)
    assert final is not None, f"{binary} printed no final estimate (exit {run.returncode}):\n{output[-2000:]}"
    theirs = float(final.split("PPL = ")[1].split()[0])
    mine = json.loads(_cli("tiny", "--backend", "llamacpp", "--protocol", "llama.cpp", "--ctx", "256", "--chunks", "16",
                           "--json").stdout)["perplexity"]
    assert mine == pytest.approx(theirs, abs=1e-3)


@pytest.mark.slow
def test_toolkit_protocol_is_toolkit_perplexity(tmp_path):
    import toolkit
    from toolkit.data import HELDOUT

    text = tmp_path / "sample.txt"
    text.write_text(HELDOUT.read_text()[:60000])
    proc = _cli("tiny", "--backend", "hf", "--text", str(text), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert {"perplexity", "tokens", "protocol"} <= set(out) and out["protocol"] == "toolkit"
    with toolkit.load(toolkit.tiny(), "hf", fallback=False) as model:
        assert out["perplexity"] == pytest.approx(toolkit.perplexity(model, text), rel=1e-9)
        assert protocol_perplexity(model, text, ctx=128, chunks=4).tokens == 4 * 127


def test_bad_input_is_a_message(tmp_path):
    proc = _cli("tiny", "--text", str(tmp_path / "missing.txt"))
    assert proc.returncode == 2 and "missing.txt" in proc.stderr and "Traceback" not in proc.stderr
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n")
    proc = _cli("tiny", "--backend", "hf", "--text", str(short), "--protocol", "llama.cpp", "--ctx", "64")
    assert proc.returncode == 2 and "at least 2 x ctx" in proc.stderr and "Traceback" not in proc.stderr
