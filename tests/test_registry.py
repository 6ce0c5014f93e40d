"""Adding a backend is one record (toolkit.capabilities.register) plus one module: a dummy backend,
registered here and nowhere else, is planned, loaded, generated with, offered by the CLI, fetch,
compare and the plan explorer, and its options are checked."""

from __future__ import annotations

import argparse
import json

import pytest

from toolkit import capabilities as caps
from toolkit.builtin.tiny import BASE
from toolkit.errors import InvalidSpec

RECORD = caps.Backend(
    "dummy", "_dummy_backend", "a test backend that repeats its prompt", requires=(), extra=None,
    quantizations={"cpu": ("none",)}, made_at_load=("none",), preference={"cpu": 9}, explicit_only=("cpu",),
    default_dtype={"cpu": "float32"})


@pytest.fixture
def dummy(monkeypatch):
    monkeypatch.setitem(caps.BACKENDS, "dummy", RECORD)
    yield RECORD


def test_planned_and_loaded_through_the_record(dummy):
    import toolkit

    p = toolkit.plan(BASE, "cpu:8GiB", backend="dummy")
    assert p.backend == "dummy" and p.quantization == "none"
    # never chosen unasked on the CPU (explicit_only), but listed with the reason
    assert toolkit.plan(BASE, "cpu:8GiB").backend == "hf"
    assert any(a["backend"] == "dummy" and "only when asked" in a["rejected"]
               for a in toolkit.plan(BASE, "cpu:8GiB").alternatives)
    with toolkit.load(BASE, backend="dummy", device="cpu:8GiB") as model:
        assert type(model).__name__ == "DummyLoaded"
        assert model.generate("ab", max_tokens=4).text == "abab"


def test_options_are_checked_against_the_record(dummy):
    import toolkit

    with pytest.raises(InvalidSpec, match=r"unknown option 'n_thread' for the dummy backend: its options are "
                                          r"adapter, allow_pickle, n_threads"):
        toolkit.load(BASE, backend="dummy", device="cpu:8GiB", n_thread=2)


def test_offered_by_the_cli_fetch_compare_and_widgets(dummy, capsys):
    from toolkit.commands import main
    from toolkit.hub.fetch import select_files
    from toolkit.measuring.compare import plan_jobs

    assert main(["plan", str(BASE), "--backend", "dummy", "--memory", "8GiB", "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "dummy"
    assert "dummy" in caps.fetch_backends()
    backend, files = select_files(["config.json", "model.safetensors"], backend="dummy")
    assert backend == "dummy" and "model.safetensors" in files
    assert [(j.variant, j.backend) for j in plan_jobs(BASE, ["none"], ["dummy"])] == [("none", "dummy")]
    from toolkit.widgets import PlanExplorer

    assert "dummy" in PlanExplorer(model=str(BASE), device="cpu:8GiB").backend.options


def test_unregistered_backend_is_refused():
    from toolkit.commands import plan as plan_command

    parser = argparse.ArgumentParser()
    plan_command.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([str(BASE), "--backend", "dummy"])
    with pytest.raises(InvalidSpec, match="unknown backend 'dummy'"):
        caps.backend("dummy")
