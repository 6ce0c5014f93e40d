"""Shared pieces of the widgets: background work with ``wait()``, figures as PNG, HTML tables and
readable error messages. Output is written with ``HTML.value`` / ``Output.append_*`` (never
``with out: print()``) so that a test without a frontend can read what a click produced."""

from __future__ import annotations

import html
import io
import threading
import traceback
from typing import Any, Callable

import ipywidgets as W

from toolkit.units import fmt_bytes


def png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it (a widget keeps no live figure)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def error_html(exc: BaseException) -> str:
    """A one-paragraph message for the user: the error's kind and its first lines, no traceback."""
    text = str(exc).strip() or type(exc).__name__
    return (f"<div class='toolkit-error' style='color:#b00'><b>{html.escape(type(exc).__name__)}</b>: "
            f"{html.escape(text).replace(chr(10), '<br>')}</div>")


def note_html(text: str, color: str = "#555") -> str:
    return f"<span style='color:{color}'>{html.escape(text)}</span>"


def table_html(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """A ``toolkit-table`` with every cell escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='toolkit-table'><tr>{head}</tr>{body}</table>"


def frame_html(frame: Any, columns: tuple[str, ...] | None = None) -> str:
    """A compact HTML table of a DataFrame; byte columns shown in MiB/GiB."""
    if frame is None or len(frame) == 0:
        return "<i>no rows yet</i>"
    view = frame[[c for c in columns if c in frame.columns]].copy() if columns else frame.copy()
    for col in view.columns:
        if col.endswith("_bytes"):
            view[col] = view[col].map(fmt_bytes)
        elif col == "error":
            view[col] = view[col].map(lambda e: "" if e is None or e != e else e)
    return view.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}", border=0,
                        classes="toolkit-table")


class Base:
    """A widget front end: ``.widget`` is the ipywidgets container; displaying the object shows it."""

    widget: W.Widget

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class Background(Base):
    """Runs long work (load, generate, compare, bench) in a thread so the kernel stays responsive.

    ``wait()`` joins the thread (tests and notebooks call it after ``button.click()``); an error
    in the work is shown in ``self.status`` and kept in ``self.error`` instead of being raised.
    """

    status: W.HTML
    error: BaseException | None = None
    _thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _buttons(self) -> list[W.Button]:
        """Buttons disabled while work runs."""
        return []

    def _start(self, work: Callable[[], None], name: str) -> bool:
        if self.running:
            self.status.value = note_html(f"busy: wait for the current run to finish before '{name}'", "#b60")
            return False
        self.error = None
        for b in self._buttons():
            b.disabled = True

        def guarded() -> None:
            try:
                work()
            except Exception as exc:  # shown in the widget; a thread has nobody to raise to
                self.error = exc
                self.status.value = error_html(exc)
                self._traceback = traceback.format_exc(limit=8)
            finally:
                for b in self._buttons():
                    b.disabled = False
                self._finished()

        self._thread = threading.Thread(target=guarded, name=f"toolkit-{name}", daemon=True)
        self._thread.start()
        return True

    def _finished(self) -> None:
        """Hook run in the thread after each piece of work (enable/disable controls)."""

    def wait(self, timeout: float | None = None) -> "Background":
        """Block until the background work ends (or ``timeout`` seconds pass); returns self."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self
