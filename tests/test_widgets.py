"""The widgets, headless: drive each through its controls (set a value, click, wait) and read what
the callback wrote into HTML values, Image bytes and Output outputs. Real backends on the built-in
tiny model; llama.cpp variants where the backend does not matter (they load in a fraction of a
second), transformers where it does (the playground's default path)."""

import html
import subprocess
import sys

import pytest

pytest.importorskip("ipywidgets")

from toolkit.widgets import BenchRunner, CompareRunner, HardwarePanel, PlanExplorer, Playground  # noqa: E402

PNG = b"\x89PNG"


def test_import_toolkit_does_not_import_ipywidgets():
    code = ("import sys, toolkit; toolkit.plan; import toolkit.reporting.plots, toolkit.measuring.compare; "
            "assert 'ipywidgets' not in sys.modules, 'ipywidgets imported'; "
            "import toolkit.widgets; assert 'ipywidgets' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_widget_has_a_container_and_displays_it():
    import ipywidgets as W

    for cls in (HardwarePanel, PlanExplorer, Playground, CompareRunner, BenchRunner):
        obj = cls()
        assert isinstance(obj.widget, W.Box)
        assert callable(obj._ipython_display_)


def test_hardware_panel_refresh():
    panel = HardwarePanel()
    first = panel.table.value
    assert "<td>cpu</td>" in first and "free" in first
    panel.refresh_button.click()
    assert "<td>cpu</td>" in panel.table.value
    assert panel.devices and panel.devices[0].total_bytes > 0


def test_plan_explorer_reacts_to_every_control():
    ex = PlanExplorer(device="cpu:8GiB")
    assert ex.plan is not None and ex.message.value == ""
    assert bytes(ex.chart.value).startswith(PNG)
    assert "Alternatives not chosen" in ex.alternatives.value and "more lossy" in ex.alternatives.value
    assert "<b>CPU</b>" in ex.summary.value

    ex.device.value = "T4"
    assert "<b>T4</b>" in ex.summary.value and ex.plan.device["kind"] == "cuda"
    ex.device.value = "2xH100"
    assert "x2" in ex.summary.value
    ex.device.value = "M2-Max-32GB"
    assert ex.plan.device["kind"] == "mps"

    ex.device.value = "24GiB"
    ex.quantization.value = "bnb-4bit"
    assert ex.plan.quantization == "bnb-4bit"
    ex.quantization.value = "auto"
    ex.backend.value = "vllm"
    assert ex.plan.backend == "vllm"
    ex.backend.value = "llamacpp"  # a safetensors folder: the planner says why, the widget shows it
    assert ex.plan is None and "needs a GGUF file" in ex.message.value
    ex.backend.value = "auto"
    ex.context.value = 1024  # a context the plan must hold
    assert ex.plan.max_context >= 1024
    ex.context.value = 10**6
    assert ex.plan is None and "maximum positions 2048" in ex.message.value
    ex.context.value = 0

    ex.memory.value = "1MiB"  # nothing fits: a readable message, no plan, no chart
    assert ex.plan is None and "NothingFits" in ex.message.value and "Traceback" not in ex.message.value
    assert bytes(ex.chart.value) == b"" and ex.summary.value == ""
    ex.memory.value = "lots"
    assert "InvalidSpec" in ex.message.value and "cannot parse memory" in ex.message.value
    ex.memory.value = ""
    assert ex.plan is not None and ex.message.value == "" and bytes(ex.chart.value).startswith(PNG)

    ex.model.value = "no-such-model"
    assert ex.plan is None and "ModelNotFound" in ex.message.value


def test_playground_streams_into_html():
    pg = Playground()
    pg.variant.value = "gguf-q4_k_m"
    pg.generate_button.click()  # disabled: nothing loaded yet
    assert pg.loaded is None
    pg.load_button.click()
    pg.wait(120)
    assert pg.error is None, pg.status.value
    assert "loaded <b>gguf-q4_k_m</b> with llamacpp" in pg.status.value and " s;" in pg.status.value
    assert pg.progress.value == 1 and not pg.generate_button.disabled

    seen = []
    pg.text.observe(lambda change: seen.append(change["new"]), names="value")
    pg.prompt.value = "Once upon a time"
    pg.max_tokens.value = 12
    pg.generate_button.click()
    pg.wait(120)
    assert pg.error is None, pg.status.value
    assert pg.chunks >= 2 and len([s for s in seen if s]) >= 2  # text grew chunk by chunk
    assert pg.text.value.startswith("<pre") and "Once upon a time" in pg.text.value
    assert "tok/s" in pg.stats.value and "memory: RSS" in pg.stats.value
    assert "12 tokens" in pg.stats.value or "finish: eos" in pg.stats.value

    pg.unload_button.click()
    pg.wait(30)
    assert pg.loaded is None and "unloaded" in pg.status.value and pg.generate_button.disabled


def test_playground_transformers_default_and_sampling():
    pg = Playground()
    assert pg.variant.value == "none"
    pg.load()
    pg.wait(300)
    assert pg.error is None, pg.status.value
    assert "with hf" in pg.status.value
    pg.max_tokens.value = 6
    pg.temperature.value = 0.8
    pg.generate()
    pg.wait(120)
    assert pg.error is None and pg.chunks >= 1 and "tok/s" in pg.stats.value
    pg.unload()
    pg.wait(30)


def test_two_playgrounds_generate_at_once_without_crossing():
    """Two playgrounds streaming at the same time (each in its own thread) keep their own text; a
    second click on a busy one is refused, not interleaved."""
    a, b = Playground(), Playground()
    for pg, prompt in ((a, "def add(a, b):\n"), (b, "import os\n")):
        pg.variant.value = "gguf-q4_k_m"
        pg.load()
        pg.wait(120)
        assert pg.error is None, pg.status.value
        pg.prompt.value, pg.max_tokens.value = prompt, 24
    alone = {pg: pg.loaded.generate(pg.prompt.value, max_tokens=24).text for pg in (a, b)}
    assert alone[a] != alone[b]
    with a.loaded._lock:  # a's run waits for the model, so it is surely still running below
        assert a.generate() and b.generate()
        assert a.generate() is False and "busy" in a.status.value  # refused, not interleaved
    a.wait(120), b.wait(120)
    for pg in (a, b):
        assert pg.error is None, pg.status.value
        assert html.unescape(pg.text.value).endswith(alone[pg] + "</pre>")
        pg.unload()
        pg.wait(30)


def test_compare_runner_live_table_plots_and_report(tmp_path):
    cr = CompareRunner()
    assert cr.variants.value == ("none", "bnb-4bit", "gptq-4bit", "awq-4bit")
    cr.variants.value = ("gguf-f32", "gguf-q4_k_m")
    cr.backends.value = ("llamacpp",)
    cr.windows.value, cr.repeats.value, cr.new_tokens.value = 2, 1, 4
    cr.isolate.value = False
    cr.results.value = str(tmp_path / "rows.jsonl")
    tables = []
    cr.table.observe(lambda change: tables.append(change["new"]), names="value")
    cr.run_button.click()
    cr.wait(300)
    assert cr.error is None, cr.status.value
    assert cr.progress.value == cr.progress.max == 2
    assert any("gguf-f32" in t and "gguf-q4_k_m" not in t for t in tables)  # a live table after row 1
    assert cr.table.value.count("<tr") == 3 and "gguf-q4_k_m" in cr.table.value
    assert list(cr.frame["variant"]) == ["gguf-f32", "gguf-q4_k_m"] and cr.frame["error"].isna().all()
    images = [o for o in cr.plots.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
    assert "done: 2 rows, 0 errors" in cr.status.value
    assert (tmp_path / "rows.jsonl").read_text().count("\n") == 2

    cr.folder.value = str(tmp_path / "report")
    cr.save_button.click()
    assert (tmp_path / "report" / "report.html").exists()
    assert "report written" in cr.status.value


def test_compare_runner_rejects_a_variant_without_its_backend():
    cr = CompareRunner()
    cr.variants.value = ("gguf-q8_0",)
    cr.backends.value = ("hf",)
    assert cr.run() is False
    assert "InvalidSpec" in cr.status.value and "llamacpp" in cr.status.value


def test_bench_runner_sweeps_batches():
    br = BenchRunner()
    br.variant.value = "gguf-q4_k_m"
    br.batches.value = "1, 2"
    br.prompt_tokens.value, br.new_tokens.value, br.repeats.value = 8, 4, 1
    br.run_button.click()
    br.wait(300)
    assert br.error is None, br.status.value
    assert br.progress.value == 2
    assert list(br.frame["batch"]) == [1, 2] and (br.frame["decode_tok_s"] > 0).all()
    assert br.table.value.count("<tr") == 3 and "llamacpp" in br.table.value
    assert bytes(br.chart.value).startswith(PNG)


def test_bench_runner_bad_batches_message():
    br = BenchRunner()
    br.batches.value = "1,zero"
    assert br.run() is False
    assert "ValueError" in br.status.value and "zero" in br.status.value
