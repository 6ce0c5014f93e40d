"""One real-browser test: Voilà serves a notebook showing the PlanExplorer, headless Chromium (driven
by Playwright) picks another device and types a memory size, and the rendered plan must change.

Needs Debian's chromium (``scripts/bootstrap_browser.sh``), ``playwright`` (no ``playwright install``:
the system chromium is used) and ``voila``. Skipped only when chromium is absent outside CI; in CI
(``CI`` set) a missing piece fails the test. The screenshot lands in ``tests/artifacts/browser.png``.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("TOOLKIT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip(f"{CHROMIUM} not installed (run scripts/bootstrap_browser.sh); required when CI is set",
                allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(path: Path) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Plan explorer (browser test)"),
                nbformat.v4.new_code_cell("from toolkit.widgets import PlanExplorer\n"
                                          "explorer = PlanExplorer(device='cpu:8GiB')\nexplorer")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def voila_url(tmp_path):
    if not os.environ.get("CI"):  # in CI a missing voila/playwright is a failure, not a skip
        pytest.importorskip("voila")
        pytest.importorskip("playwright")
    _notebook(tmp_path / "explorer.ipynb")
    port = _free_port()
    log = open(tmp_path / "voila.log", "w")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "voila", "explorer.ipynb", "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--show_tracebacks=True"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("voila did not start:\n" + (tmp_path / "voila.log").read_text()[-3000:])
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_plan_explorer_reacts_in_a_real_browser(voila_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.goto(voila_url, timeout=120_000)
            summary = page.locator(".toolkit-plan-summary")
            expect(summary).to_contain_text("CPU", timeout=120_000)  # the widget rendered, plan shown
            chart = page.locator(".widget-image").first
            expect(chart).to_be_visible()  # the memory chart
            first, first_src = summary.inner_text(), chart.get_attribute("src")

            page.locator(".widget-dropdown", has_text="device").locator("select").select_option("T4")
            expect(summary).to_contain_text("T4", timeout=30_000)
            expect(summary).to_contain_text("cuda")
            assert summary.inner_text() != first
            page.wait_for_function("([el, old]) => el.src !== old", arg=[chart.element_handle(), first_src],
                                   timeout=30_000)  # the chart was redrawn too
            page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)

            memory = page.locator(".widget-text", has_text="memory").locator("input")
            memory.fill("1MiB")
            memory.press("Enter")
            expect(page.locator(".toolkit-error")).to_contain_text("NothingFits", timeout=30_000)
            expect(summary).to_have_text("")
            page.screenshot(path=str(ARTIFACTS / "browser-error.png"), full_page=True)
        except Exception:
            if "page" in locals():
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
