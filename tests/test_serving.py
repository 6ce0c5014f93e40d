"""The serving load benchmark (``toolkit.measuring.serving``) against real servers on 127.0.0.1.

The server is llama-cpp-python's (``start_llama_server`` on ``tiny("gguf-f16")``): one thread and no
parallel slots, so it runs one request at a time and queues the rest. A concurrency level above 1
then measures that queue: TTFT and end-to-end latency grow with the concurrency while TPOT and the
throughput stay about where one request puts them. The tests assert only what holds on any machine
(counts, tokens per request, percentile order, TTFT within end-to-end, positive throughput, failures
and their errors), never a speed. Every load is bounded in requests and in time.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn")

from toolkit.backends import LoadTarget, load_target  # noqa: E402
from toolkit.backends.openai import OpenAILoaded  # noqa: E402
from toolkit.backends.servers import start_llama_server  # noqa: E402
from toolkit.builtin.tiny import tiny  # noqa: E402
from toolkit.errors import InvalidSpec  # noqa: E402
from toolkit.measuring.results import read_rows  # noqa: E402
from toolkit.measuring.serving import METRICS, load_test, stats  # noqa: E402

MODEL = "tiny-f16"  # start_llama_server's alias: the file's stem


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except Exception:  # noqa: BLE001 - a stuck server is killed
        process.kill()


@pytest.fixture(scope="module")
def server():
    process, base_url = start_llama_server(tiny("gguf-f16", progress=False))
    yield base_url
    _stop(process)


@pytest.fixture(scope="module")
def model(server):
    loaded = load_target(LoadTarget(path=Path(MODEL), backend="openai", options={"base_url": server}))
    yield loaded
    loaded.unload()


def check_invariants(row: dict, requests: int, new_tokens: int) -> None:
    """What every healthy level satisfies, whatever the machine's speed."""
    assert row["sent"] == row["completed"] == requests and row["failures"] == 0 and row["first_error"] is None
    assert row["completion_tokens_min"] == row["completion_tokens_max"] == new_tokens and row["short_requests"] == 0
    assert row["completion_tokens_total"] == requests * new_tokens
    for metric in METRICS:
        values = [row[f"{metric}_{s}_s"] for s in ("median", "p90", "p99")]
        assert all(v is not None and v >= 0 for v in values), metric
        assert values[0] <= values[1] <= values[2], metric
    for stat in ("mean", "median", "p90", "p99"):  # each request's first token comes before its end
        assert row[f"ttft_{stat}_s"] <= row[f"e2e_{stat}_s"]
    assert row["request_throughput"] > 0 and row["duration_s"] > 0
    assert row["output_throughput"] == pytest.approx(row["request_throughput"] * new_tokens)
    assert row["prompt_cache"] == "distinct prompts"


def test_three_concurrency_levels(model, tmp_path):
    results = tmp_path / "serving.jsonl"
    rows = load_test(model, concurrency=(1, 2, 4), requests=6, prompt_tokens=24, new_tokens=8, results=results)
    assert [r.concurrency for r in rows] == [1, 2, 4]
    for r in rows:
        row = r.to_dict()
        check_invariants(row, requests=6, new_tokens=8)
        assert row["arrivals"] == "closed loop" and row["request_rate"] is None
        assert row["token_counts"] == "stream chunks"  # llama-cpp-python streams no usage
        assert abs(row["prompt_tokens_mean"] - 24) <= 1  # re-tokenising the cut text may move a boundary
        assert row["prompt_shared_prefix_max"] < 8  # no prefix a cache could serve
        assert row["environment"]["llama-cpp-python"]
        assert "TTFT" in r._repr_html_() and "c=" in r.summary()
    # each level was appended as it finished, and the file holds what the rows hold
    stored = read_rows(results)
    assert [s["concurrency"] for s in stored] == [1, 2, 4]
    assert stored[2]["ttft_p99_s"] == rows[2].ttft_p99_s

    from toolkit.reporting.plots import serving_throughput_latency

    fig = serving_throughput_latency(stored, latency="e2e")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["c=1", "c=2", "c=4"]
    assert "output tokens/s" in ax.get_ylabel()
    with pytest.raises(InvalidSpec, match="latency must be"):
        serving_throughput_latency(stored, latency="speed")


def test_request_rate_mode(model):
    rows = load_test(model, concurrency=2, request_rate=50.0, requests=4, prompt_tokens=16, new_tokens=4, seed=3)
    row = rows[0].to_dict()
    check_invariants(row, requests=4, new_tokens=4)
    assert row["arrivals"] == "poisson" and row["request_rate"] == 50.0 and row["concurrency"] == 2
    assert row["dispatch_delay_mean_s"] is not None and 0 <= row["dispatch_delay_mean_s"] <= row["dispatch_delay_max_s"]


def test_a_level_stops_at_its_time_limit(model):
    """More work than ``max_duration_s`` allows: the level stops sending, closes what is in flight
    (counted as failed) and ends by itself."""
    start = time.monotonic()
    row = load_test(model, concurrency=2, requests=200, prompt_tokens=16, new_tokens=64, max_duration_s=0.5,
                    warmup=0)[0]
    assert time.monotonic() - start < 60  # the prompts' preparation plus about 0.5 s, not 200 requests
    assert row.sent < 200 and row.requests == 200
    assert row.completed + row.failures == row.sent
    assert row.failures == 0 or "deadline" in row.first_error


def test_cli_concurrency_sweep(server, tmp_path, capsys):
    from toolkit.commands import main

    results = tmp_path / "cli.jsonl"
    code = main(["bench", MODEL, "--backend", "openai", "--base-url", server, "--concurrency", "1,2",
                 "--requests", "3", "--prompt-tokens", "16", "--new-tokens", "4", "--json", "--results", str(results)])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["concurrency"] for r in rows] == [1, 2] and all(r["completed"] == 3 for r in rows)
    assert [r["concurrency"] for r in read_rows(results)] == [1, 2]
    assert main(["bench", "tiny", "--backend", "hf", "--concurrency", "2"]) != 0
    assert "--backend openai" in capsys.readouterr().err


def _unloaded_connection(port: int) -> OpenAILoaded:
    """A connection that skips ``toolkit.load``'s check that the server answers."""
    return OpenAILoaded(LoadTarget(path=Path(MODEL), backend="openai"), f"http://127.0.0.1:{port}/v1", None, 600.0)


def test_refused_connections_are_failures_not_errors():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rows = load_test(_unloaded_connection(port), concurrency=(1, 2), requests=3, prompt_tokens=8, new_tokens=4,
                     timeout_s=5)
    for r in rows:
        assert r.sent == 3 and r.completed == 0 and r.failures == 3
        assert "cannot reach the server" in r.first_error
        assert r.request_throughput == 0 and r.ttft_median_s is None
        assert "not tokenised" in r.prompt_cache  # the tokenize endpoint did not answer either


def test_a_silent_server_times_out():
    """A socket that accepts connections and never answers: each request fails after ``timeout_s``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel completes handshakes; nobody reads or writes
        start = time.monotonic()
        rows = load_test(_unloaded_connection(listener.getsockname()[1]), concurrency=2, requests=2,
                         prompt_tokens=8, new_tokens=4, timeout_s=1, warmup=0)
        took = time.monotonic() - start
    assert rows[0].failures == 2 and rows[0].completed == 0
    assert "timed out" in rows[0].first_error
    assert took < 60  # bounded by the timeouts, not a hang (about 2-3 s)


def test_server_that_dies_mid_run(monkeypatch):
    """The server is killed after the second request ends: later requests fail (refused, or cut off
    mid-stream) and are counted; the level ends by itself."""
    process, base_url = start_llama_server(tiny("gguf-f16", progress=False))
    try:
        loaded = load_target(LoadTarget(path=Path(MODEL), backend="openai", options={"base_url": base_url}))
        original = OpenAILoaded.timed_request
        finished = []
        lock = threading.Lock()

        def timed_request(self, prompt, config, deadline_s=None):
            record = original(self, prompt, config, deadline_s)
            with lock:
                finished.append(record)
                if len(finished) == 3:  # the warm-up and two measured requests
                    process.kill()
                    process.wait(timeout=10)
            return record

        monkeypatch.setattr(OpenAILoaded, "timed_request", timed_request)
        row = load_test(loaded, concurrency=2, requests=8, prompt_tokens=16, new_tokens=16, timeout_s=10,
                        max_duration_s=60)[0]
    finally:
        _stop(process)
    assert row.sent == 8 and row.completed + row.failures == 8
    assert row.completed >= 2 and row.failures >= 1
    assert row.first_error
    assert row.completed < 8


def test_settings_are_checked(model):
    with pytest.raises(InvalidSpec, match="concurrency"):
        load_test(model, concurrency=(0,))
    with pytest.raises(InvalidSpec, match="request_rate"):
        load_test(model, concurrency=1, request_rate=0)
    with pytest.raises(InvalidSpec, match="backend='openai'"):
        load_test(object())


def test_stats_percentiles():
    s = stats([0.1, 0.2, 0.3, 0.4, 10.0])
    assert s["median"] == 0.3 and s["median"] <= s["p90"] <= s["p99"] <= 10.0
    assert s["mean"] == pytest.approx(2.2)
    assert stats([]) == {"mean": None, "median": None, "p90": None, "p99": None}
