"""BenchRunner: a batch-size sweep of :func:`toolkit.measuring.bench.bench` on one variant, with a plot."""

from __future__ import annotations

from typing import Any

import ipywidgets as W

from toolkit.widgets._common import Background, error_html, frame_html, note_html, png

COLUMNS = ("backend", "quantization", "batch", "prompt_tokens", "new_tokens", "ttft_s", "prefill_tok_s",
           "decode_tok_s", "roofline_fraction", "peak_memory_bytes")


def parse_batches(text: str) -> list[int]:
    """``"1, 2,4"`` → ``[1, 2, 4]``; raises ValueError naming the bad part."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"batch sizes are positive integers separated by commas, got {part!r}")
        out.append(int(part))
    if not out:
        raise ValueError("give at least one batch size, e.g. 1,2,4")
    return out


class BenchRunner(Background):
    """Load one variant, bench it at each batch size, show the table and throughput_vs_batch."""

    def __init__(self, variant: str = "none", batches: str = "1,2,4", model: str = "tiny") -> None:
        from toolkit.builtin import variant_names

        self.builtin = model  # a built-in model: tiny or smollm2
        self.variant = W.Dropdown(options=variant_names(model), value=variant, description="variant")
        self.batches = W.Text(value=batches, description="batches", placeholder="1,2,4")
        self.prompt_tokens = W.IntText(value=32, description="prompt tokens")
        self.new_tokens = W.IntText(value=16, description="new tokens")
        self.repeats = W.IntText(value=2, description="repeats")
        self.run_button = W.Button(description="Run", icon="play", button_style="primary")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="batches")
        self.status = W.HTML()
        self.table = W.HTML()
        self.chart = W.Image(format="png", layout=W.Layout(width="560px", height="auto", object_fit="contain"))
        self.rows: list[dict[str, Any]] = []
        self.frame: Any = None
        self.run_button.on_click(lambda _: self.run())
        self.widget = W.VBox([
            W.HTML("<b>Benchmark</b>"), W.HBox([self.variant, self.batches]),
            W.HBox([self.prompt_tokens, self.new_tokens, self.repeats]), W.HBox([self.run_button, self.progress]),
            self.status, self.table, self.chart])

    def _buttons(self) -> list[W.Button]:
        return [self.run_button]

    def run(self) -> bool:
        """Start the sweep in the background."""
        import pandas as pd

        from toolkit.measuring.bench import bench, cpu_bandwidth_bytes_s
        from toolkit.reporting.plots import throughput_vs_batch
        from toolkit.widgets.playground import load_variant

        try:
            batches = parse_batches(self.batches.value)
        except ValueError as exc:
            self.status.value = error_html(exc)
            return False
        variant = self.variant.value
        settings = dict(prompt_tokens=self.prompt_tokens.value, new_tokens=self.new_tokens.value,
                        repeats=self.repeats.value)

        def work() -> None:
            self.rows, self.frame = [], None
            self.progress.max, self.progress.value, self.progress.bar_style = len(batches), 0, "info"
            self.table.value, self.chart.value = frame_html(None), b""
            self.status.value = note_html(f"loading {variant}…")
            loaded = load_variant(variant, builtin=self.builtin)
            try:
                bandwidth = cpu_bandwidth_bytes_s() if getattr(loaded.target, "device", "cpu") == "cpu" else None
                for batch in batches:
                    self.status.value = note_html(f"{variant} on {loaded.backend}: batch {batch}…")
                    result = bench(loaded, batch=batch, bandwidth_bytes_s=bandwidth, **settings)
                    row = result.to_dict()
                    row.pop("environment", None)
                    self.rows.append(row)
                    self.progress.value += 1
                    self.table.value = frame_html(pd.DataFrame(self.rows), COLUMNS)
            finally:
                loaded.unload()
            self.frame = pd.DataFrame(self.rows)
            self.chart.value = png(throughput_vs_batch(self.frame))
            self.progress.bar_style = "success"
            self.status.value = note_html(f"done: {len(self.rows)} batch sizes on {variant}")

        return self._start(work, "bench")
