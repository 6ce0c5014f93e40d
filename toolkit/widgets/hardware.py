"""HardwarePanel: the devices ``probe()`` sees, with total and free memory."""

from __future__ import annotations

import html
import time

import ipywidgets as W

from toolkit.widgets._common import Base, error_html, fmt_bytes


class HardwarePanel(Base):
    """A table of probed devices and a Refresh button (free memory changes as models load)."""

    def __init__(self) -> None:
        self.table = W.HTML()
        self.refresh_button = W.Button(description="Refresh", icon="refresh", tooltip="probe the devices again")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.devices: list = []
        self.widget = W.VBox([W.HTML("<b>Hardware</b>"), self.table, self.refresh_button])
        self.refresh()

    def refresh(self) -> None:
        """Probe again and redraw the table."""
        from toolkit.hardware import probe

        try:
            self.devices = probe()
        except Exception as exc:  # probing must never break the panel
            self.table.value = error_html(exc)
            return
        rows = "".join(
            f"<tr><td>{html.escape(d.kind)}</td><td>{html.escape(d.name)}</td><td>{d.count}</td>"
            f"<td>{fmt_bytes(d.total_bytes)}</td><td>{fmt_bytes(d.free_bytes)}</td>"
            f"<td>{'.'.join(map(str, d.compute_capability)) if d.compute_capability else '-'}</td>"
            f"<td>{html.escape(d.source)}</td></tr>" for d in self.devices)
        self.table.value = (
            "<table class='toolkit-table'><tr><th>kind</th><th>name</th><th>count</th><th>total</th>"
            f"<th>free</th><th>cc</th><th>source</th></tr>{rows}</table>"
            f"<small>probed at {time.strftime('%H:%M:%S')}</small>")
