"""PlanExplorer: change the model, device, memory, context, backend or quantization and see the plan,
its memory breakdown and the rejected alternatives update at once."""

from __future__ import annotations

import html
from dataclasses import replace
from typing import Any

import ipywidgets as W

from toolkit import capabilities as caps
from toolkit.facts.devices import device_from_spec
from toolkit.units import fmt_bytes, parse_memory
from toolkit.widgets._common import Base, error_html, png, table_html

DEVICES = ("auto", "cpu:8GiB", "T4", "A100-80GB", "24GiB", "2xH100", "M2-Max-32GB")
GGUF_CHOICES = ("gguf-f16", "gguf-q8_0", "gguf-q4_k_m")


class PlanExplorer(Base):
    """Interactive :func:`toolkit.planning.plan.plan`. Planning is pure and fast, so it runs on every change.

    Args:
        model: A model folder, GGUF file, hub id or built-in model name (``"smollm2"``); default the
            built-in tiny model.
        device: Initial device choice (one of ``DEVICES`` or any spec ``device_from_spec`` takes).
    """

    def __init__(self, model: Any = None, device: str = "auto") -> None:
        if model is None:
            from toolkit.builtin.tiny import tiny

            model = tiny(progress=False)
        options = list(DEVICES) if device in DEVICES else [device, *DEVICES]
        self.model = W.Text(value=str(model), description="model", continuous_update=False,
                            layout=W.Layout(width="60%"))
        self.device = W.Dropdown(options=options, value=device, description="device")
        self.memory = W.Text(value="", description="memory", placeholder="e.g. 6GiB (overrides the device's)",
                             continuous_update=False)
        self.context = W.IntText(value=0, description="context", tooltip="0 = as much as fits")
        # the backend records, read now: a backend registered after import is offered too
        self.backend = W.Dropdown(options=("auto", *caps.planned_backends()), value="auto", description="backend")
        self.quantization = W.Dropdown(options=("auto", *caps.QUANTIZATIONS, *GGUF_CHOICES), value="auto",
                                       description="quantization")
        self.message = W.HTML()
        self.summary = W.HTML().add_class("toolkit-plan-summary")
        self.table = W.HTML()
        self.chart = W.Image(format="png", layout=W.Layout(width="640px", height="auto", object_fit="contain"))
        self.alternatives = W.HTML()
        self.plan = None
        self.error: BaseException | None = None
        for control in (self.model, self.device, self.memory, self.context, self.backend, self.quantization):
            control.observe(self.update, names="value")
        self.widget = W.VBox([
            W.HTML("<b>Plan explorer</b>"), self.model,
            W.HBox([self.device, self.memory]), W.HBox([self.context, self.backend, self.quantization]),
            self.message, self.summary, W.HBox([self.table, self.chart], layout=W.Layout(align_items="flex-start")), self.alternatives])
        self.update()

    def _device(self) -> Any:
        from toolkit.facts.probe import best_device, probe

        dev = best_device(probe()) if self.device.value == "auto" else device_from_spec(self.device.value)
        if self.memory.value.strip():
            size = parse_memory(self.memory.value.strip())
            dev = replace(dev, total_bytes=size, free_bytes=size, source=f"{dev.source}+memory:{self.memory.value}")
        return dev

    def update(self, change: Any = None) -> None:
        """Plan again from the controls and redraw (the observer of every control)."""
        from toolkit.planning.plan import plan
        from toolkit.reporting.plots import plan_breakdown

        try:
            dev = self._device()
            result = plan(self.model.value.strip(), dev,
                          backend=None if self.backend.value == "auto" else self.backend.value,
                          quantization=None if self.quantization.value == "auto" else self.quantization.value,
                          context=self.context.value or None)
        except Exception as exc:  # NothingFits, InvalidSpec, ModelNotFound...: a message, not a traceback
            self.plan, self.error = None, exc
            self.message.value = error_html(exc)
            self.summary.value = self.table.value = self.alternatives.value = ""
            self.chart.value = b""
            self.chart.layout.display = "none"  # no broken-image icon in a browser
            return
        self.plan, self.error = result, None
        self.message.value = ""
        self.summary.value = (
            f"<b>{html.escape(result.backend)}</b> · <b>{html.escape(result.quantization)}</b> · "
            f"{html.escape(result.dtype)} · context {result.max_context} on "
            f"<b>{html.escape(dev.name)}</b> x{dev.count} ({html.escape(dev.kind)}, "
            f"{fmt_bytes(dev.free_bytes)} free): needs {fmt_bytes(result.memory.total_bytes)}"
            "<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons) + "</ul>")
        self.table.value = result._repr_html_().split("<ul>")[0]
        self.chart.value = png(plan_breakdown(result))
        self.chart.layout.display = None
        rows = [(a["backend"], a["quantization"], a.get("dtype") or "",
                 fmt_bytes((a.get("memory") or {}).get("total_bytes")), a["rejected"]) for a in result.alternatives]
        self.alternatives.value = (
            "<b>Alternatives not chosen</b>" + table_html(("backend", "quantization", "dtype", "needs", "why not"), rows)
            if rows else "")
