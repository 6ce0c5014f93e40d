"""CompareRunner: sweep variants × backends with :func:`toolkit.measuring.compare.compare`, a live table and plots."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W

from toolkit.widgets._common import Background, frame_html, note_html, png

DEFAULT = ("none", "bnb-4bit", "gptq-4bit", "awq-4bit")
COLUMNS = ("variant", "backend", "quantization", "weights_bytes", "peak_delta_bytes", "load_s", "decode_tok_s",
           "perplexity", "kl_divergence", "top1_agreement", "error")


class CompareRunner(Background):
    """Pick variants and backends, run the sweep in the background, save a report.

    Args:
        model: ``None`` for the built-in tiny model, a built-in model's name (``"smollm2"``) or a
            model folder (the variants are built on demand).
        variants, backends: Initial selections.
    """

    def __init__(self, model: Any = None, variants: tuple[str, ...] = DEFAULT,
                 backends: tuple[str, ...] = ("hf",)) -> None:
        from toolkit.builtin import is_builtin, variant_names
        from toolkit.builtin.quantize import METHODS

        self.model = model
        options = variant_names(str(model)) if is_builtin(model) else variant_names("tiny") if model is None else [
            "none", "bnb-8bit", "bnb-4bit", *METHODS]
        self.variants = W.SelectMultiple(options=options, value=tuple(v for v in variants if v in options),
                                         description="variants", rows=7)
        self.backends = W.SelectMultiple(options=("hf", "llamacpp", "mlx"), value=tuple(backends),
                                         description="backends", rows=3)
        self.windows = W.IntText(value=8, description="windows", tooltip="quality windows (more = slower, steadier)")
        self.repeats = W.IntText(value=2, description="repeats")
        self.new_tokens = W.IntText(value=16, description="new tokens")
        self.isolate = W.Checkbox(value=True, description="isolate (own process per variant: honest memory)")
        self.results = W.Text(value="", description="results", placeholder="optional .jsonl file (resumable)")
        self.run_button = W.Button(description="Run", icon="play", button_style="primary")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="variants")
        self.status = W.HTML()
        self.table = W.HTML()
        self.plots = W.Output()
        self.folder = W.Text(value="toolkit-report", description="report dir")
        self.save_button = W.Button(description="Save report", icon="save", disabled=True)
        self.rows: list[dict[str, Any]] = []
        self.frame: Any = None
        self.run_button.on_click(lambda _: self.run())
        self.save_button.on_click(lambda _: self.save())
        self.widget = W.VBox([
            W.HTML("<b>Compare variants</b>"), W.HBox([self.variants, self.backends]),
            W.HBox([self.windows, self.repeats, self.new_tokens]), W.HBox([self.isolate, self.results]),
            W.HBox([self.run_button, self.progress]), self.status, self.table, self.plots,
            W.HBox([self.folder, self.save_button])])

    def _buttons(self) -> list[W.Button]:
        return [self.run_button, self.save_button]

    def _finished(self) -> None:
        self.save_button.disabled = self.frame is None

    def on_row(self, row: dict[str, Any]) -> None:
        """Called by ``compare`` for each finished row: advance the bar, redraw the table."""
        import pandas as pd

        self.rows.append(row)
        self.progress.value = min(self.progress.max, self.progress.value + 1)
        self.table.value = frame_html(pd.DataFrame(self.rows), COLUMNS)
        self.status.value = note_html(f"finished {row['variant']} on {row['backend']}"
                                      + (f" — {row['error']}" if row.get("error") else ""))

    def run(self) -> bool:
        """Start the sweep in the background."""
        from toolkit.measuring.compare import compare, plan_jobs

        variants, backends = list(self.variants.value), list(self.backends.value)
        try:
            jobs = plan_jobs(self.model, variants, backends)
        except Exception as exc:
            from toolkit.widgets._common import error_html

            self.status.value = error_html(exc)
            return False
        settings = dict(windows=max(1, self.windows.value), repeats=max(1, self.repeats.value),
                        new_tokens=max(2, self.new_tokens.value), prompt_tokens=32, isolate=self.isolate.value,
                        results=self.results.value.strip() or None)

        def work() -> None:
            self.rows, self.frame = [], None
            self.progress.max, self.progress.value, self.progress.bar_style = len(jobs), 0, "info"
            self.table.value = frame_html(None)
            self.plots.clear_output()
            self.status.value = note_html(f"running {len(jobs)} jobs: "
                                          + ", ".join(f"{j.variant}/{j.backend}" for j in jobs))
            frame = compare(self.model, variants, backends, on_row=self.on_row, progress=False, **settings)
            self.frame = frame
            self.progress.value, self.progress.bar_style = self.progress.max, "success"
            self.table.value = frame_html(frame, COLUMNS)
            self.show_plots()
            errors = int(frame["error"].notna().sum()) if "error" in frame else 0
            self.status.value = note_html(f"done: {len(frame)} rows, {errors} errors")

        return self._start(work, "compare")

    def show_plots(self) -> None:
        """Draw the memory, speed and quality figures of the last sweep into ``self.plots``."""
        from IPython.display import Image

        from toolkit.reporting import plots

        self.plots.clear_output()
        ok = self.frame[self.frame["error"].isna()] if "error" in self.frame else self.frame
        if not len(ok):
            return
        for make in (plots.memory_bars, plots.speed_vs_memory, plots.quality_vs_size):
            try:
                self.plots.append_display_data(Image(data=png(make(self.frame)), format="png"))
            except (KeyError, ValueError, TypeError) as exc:  # a partial sweep may lack a column
                self.plots.append_stdout(f"{make.__name__} skipped: {exc}\n")

    def save(self) -> str | None:
        """Write the HTML/Markdown report of the last sweep into the folder; returns report.html's path."""
        from toolkit.reporting.report import write_report

        if self.frame is None:
            self.status.value = note_html("run a comparison first", "#b60")
            return None
        path = write_report(self.frame, self.folder.value.strip() or "toolkit-report")
        self.status.value = f"report written: <code>{html.escape(str(path))}</code>"
        return str(path)
