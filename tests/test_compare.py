"""`toolkit compare` on the built-in model: complete rows, honest quality deltas, and a sweep that
survives being killed (finished rows kept, a torn last line repaired, the rest completed)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from toolkit.data import TINY
from toolkit.measuring.compare import plan_jobs
from toolkit.measuring.results import append_row, read_rows

pytestmark = pytest.mark.slow
VARIANTS = "none,bnb-4bit,gptq-4bit,awq-4bit"
FAST = ["--windows", "4", "--repeats", "1", "--prompt-tokens", "16", "--new-tokens", "8"]


def _cli(*args):
    return [sys.executable, "-m", "toolkit", "compare", "tiny", "--variants", VARIANTS, *FAST, *args]


def test_killed_sweep_resumes_and_completes(tmp_path):
    results = tmp_path / "results.jsonl"
    proc = subprocess.Popen(_cli("--results", str(results), "--json"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_rows(results)) < 2 and proc.poll() is None:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its worker process
    proc.wait()
    before = read_rows(results)
    assert 2 <= len(before) < 4, "the kill should land mid-sweep"
    with open(results, "ab") as f:  # a row torn mid-write by the kill
        f.write(b'{"variant": "awq-4bit", "backend": "hf", "decode_tok')

    out = subprocess.run(_cli("--results", str(results), "--json"), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads(out.stdout)
    assert [r["variant"] for r in rows] == VARIANTS.split(",")
    for old in before:  # finished rows were kept, not measured again
        new = next(r for r in rows if r["variant"] == old["variant"])
        assert new["seconds"] == old["seconds"] and new["decode_tok_s"] == old["decode_tok_s"]
    stored = read_rows(results)
    assert len(stored) == 4 and all(r["error"] is None for r in stored)

    ref = rows[0]
    assert ref["kl_divergence"] == 0.0 and ref["top1_agreement"] == 1.0
    for row in rows:
        for key in ("weights_bytes", "peak_memory_bytes", "decode_tok_s", "perplexity", "kl_divergence",
                    "top1_agreement"):
            assert row[key] is not None, (row["variant"], key)
    for row in rows[1:]:
        assert row["weights_bytes"] < ref["weights_bytes"]
        assert row["kl_divergence"] > 0
        assert 0.9 < row["top1_agreement"] < 1.0
        assert abs(row["perplexity"] / ref["perplexity"] - 1) < 0.05
    assert len({r["scored_against"] for r in stored}) == 1

    # Other windows are another reference: the same file's "none" row is measured again, not reused.
    other = [a if a != "4" else "3" for a in FAST]
    out = subprocess.run([sys.executable, "-m", "toolkit", "compare", "tiny", "--variants", "none", *other,
                          "--results", str(results), "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    (again,) = json.loads(out.stdout)
    assert again["scored_against"] != stored[0]["scored_against"]
    assert again["tokens_scored"] < ref["tokens_scored"]


def test_results_file_repair(tmp_path):
    path = tmp_path / "r.jsonl"
    append_row(path, {"variant": "none", "backend": "hf"})
    with open(path, "ab") as f:
        f.write(b'{"variant": "gptq')
    assert read_rows(path) == [{"variant": "none", "backend": "hf"}]
    append_row(path, {"variant": "awq-4bit", "backend": "hf"})
    assert [r["variant"] for r in read_rows(path)] == ["none", "awq-4bit"]


def test_failed_variant_becomes_an_error_row(tmp_path):
    from toolkit.measuring.compare import compare

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    frame = compare(None, {"none": str(TINY), "gptq-4bit": str(broken)},
                    ["hf"], windows=2, repeats=1, prompt_tokens=8, new_tokens=4, isolate=False, progress=False)
    assert frame.loc[0, "error"] is None or frame.loc[0, "error"] != frame.loc[0, "error"]  # None or NaN
    assert "config.json" in frame.loc[1, "error"] or "JSON" in frame.loc[1, "error"]


def test_gguf_and_mlx_variants_join_through_backends():
    jobs = plan_jobs(None, ["none", "gptq-4bit", "gguf-q4_k_m", "mlx-4bit"], ["hf", "llamacpp", "mlx"])
    assert [(j.variant, j.backend) for j in jobs] == [
        ("none", "hf"), ("gptq-4bit", "hf"), ("gguf-q4_k_m", "llamacpp"), ("none", "mlx"), ("mlx-4bit", "mlx")]
