"""Playground: load a variant of a model, then stream generations from it."""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as W

from toolkit.backends.generation import GenerationConfig
from toolkit.capabilities import backend_for
from toolkit.units import fmt_bytes
from toolkit.widgets._common import Background, note_html


def load_variant(variant: str, model: Any = None, builtin: str = "tiny") -> Any:
    """Load a built-in model's variant (``builtin``: tiny or smollm2) with the backend that runs its
    format (or ``model`` as planned)."""
    from toolkit.backends import load

    if model is not None:
        return load(str(model))
    from toolkit.builtin import variant_path

    quant = variant if variant.startswith("bnb-") else None
    path = variant_path(builtin, "none" if quant else variant, progress=False)
    return load(str(path), backend_for(variant), quantization=quant, fallback=False)


class Playground(Background):
    """Load a model (a built-in model's variant, or ``model``), then stream text from a prompt.

    Args:
        model: A built-in model's name (``"tiny"``, ``"smollm2"``: its variants are offered), or a model
            folder / GGUF file / hub id to offer first before the tiny variants; default the tiny variants.
        variant: The variant selected at start.
    """

    def __init__(self, model: Any = None, variant: str = "none") -> None:
        from toolkit.builtin import is_builtin, variant_names

        self.builtin = str(model) if is_builtin(model) else "tiny"
        if is_builtin(model):
            model = None
        options = ([str(model)] if model is not None else []) + variant_names(self.builtin)
        self._model = str(model) if model is not None else None
        self.variant = W.Dropdown(options=options, value=self._model or variant, description="variant")
        self.load_button = W.Button(description="Load", icon="download", button_style="primary")
        self.unload_button = W.Button(description="Unload", icon="eject", disabled=True)
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="160px"))
        self.status = W.HTML(note_html("not loaded"))
        self.prompt = W.Textarea(value="Once upon a time", description="prompt", layout=W.Layout(width="70%"))
        self.max_tokens = W.IntSlider(value=32, min=1, max=512, description="max_tokens")
        self.temperature = W.FloatSlider(value=0.0, min=0.0, max=2.0, step=0.05, description="temperature")
        self.generate_button = W.Button(description="Generate", icon="play", disabled=True)
        self.text = W.HTML()
        self.stats = W.HTML()
        self.loaded: Any = None
        self.chunks = 0  # chunks received by the last generation (tests check it streamed)
        self.load_button.on_click(lambda _: self.load())
        self.unload_button.on_click(lambda _: self.unload())
        self.generate_button.on_click(lambda _: self.generate())
        self.widget = W.VBox([
            W.HTML("<b>Playground</b>"),
            W.HBox([self.variant, self.load_button, self.unload_button, self.progress]), self.status,
            self.prompt, W.HBox([self.max_tokens, self.temperature]), self.generate_button, self.text, self.stats])

    def _buttons(self) -> list[W.Button]:
        return [self.load_button, self.unload_button, self.generate_button]

    def _finished(self) -> None:
        self.generate_button.disabled = self.unload_button.disabled = self.loaded is None

    def load(self) -> bool:
        """Load the selected variant in the background (unloading the previous one)."""
        variant = self.variant.value

        def work() -> None:
            if self.loaded is not None:
                self.loaded.unload()
                self.loaded = None
            self.progress.value, self.progress.bar_style = 0, "info"
            self.status.value = note_html(f"loading {variant}…")
            start = time.perf_counter()
            try:
                loaded = load_variant(variant, self._model if variant == self._model else None, self.builtin)
            except Exception:
                self.progress.bar_style = "danger"
                raise
            self.loaded = loaded
            self.progress.value, self.progress.bar_style = 1, "success"
            self.status.value = (f"loaded <b>{html.escape(variant)}</b> with {html.escape(loaded.backend)} "
                                 f"({html.escape(loaded.target.quantization)}) in {time.perf_counter() - start:.1f} s"
                                 f"; weights {fmt_bytes(loaded.weights_bytes())}")

        return self._start(work, "load")

    def generate(self) -> bool:
        """Stream a generation into ``self.text`` chunk by chunk, in the background."""
        if self.loaded is None:
            self.status.value = note_html("load a model first", "#b60")
            return False
        config = GenerationConfig(max_tokens=self.max_tokens.value, temperature=self.temperature.value)
        prompt = self.prompt.value

        def work() -> None:
            self.chunks = 0
            self.text.value = ""
            out = ""
            last = None
            for chunk in self.loaded.stream(prompt, config):
                out += chunk.text
                self.chunks += 1
                last = chunk
                self.text.value = (f"<pre style='white-space:pre-wrap'><span style='color:#888'>{html.escape(prompt)}"
                                   f"</span>{html.escape(out)}</pre>")
                self.stats.value = f"{chunk.generated_tokens} tokens · {chunk.tokens_per_s:.1f} tok/s"
            mem = self.loaded.memory()
            if last is not None:
                self.stats.value = (
                    f"{last.generated_tokens} tokens in {last.elapsed_s:.2f} s · first token {last.ttft_s * 1000:.0f} ms"
                    f" · <b>{last.tokens_per_s:.1f} tok/s</b> · finish: {last.finish_reason} · "
                    f"memory: RSS {fmt_bytes(mem.get('rss_bytes'))}, peak {fmt_bytes(mem.get('peak_rss_bytes'))}")

        return self._start(work, "generate")

    def unload(self) -> bool:
        """Free the loaded model."""

        def work() -> None:
            if self.loaded is not None:
                self.loaded.unload()
            self.loaded = None
            self.progress.value, self.progress.bar_style = 0, ""
            self.status.value = note_html("unloaded")

        return self._start(work, "unload")
