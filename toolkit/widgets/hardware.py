"""HardwarePanel: the devices ``probe()`` sees, with total and free memory."""

from __future__ import annotations

import time

import ipywidgets as W

from toolkit.units import fmt_bytes
from toolkit.widgets._common import Base, error_html, table_html


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
        from toolkit.facts.probe import probe

        try:
            self.devices = probe()
        except Exception as exc:  # probing must never break the panel
            self.table.value = error_html(exc)
            return
        rows = [(d.kind, d.name, d.count, fmt_bytes(d.total_bytes), fmt_bytes(d.free_bytes),
                 ".".join(map(str, d.compute_capability)) if d.compute_capability else "-", d.source)
                for d in self.devices]
        self.table.value = (
            table_html(("kind", "name", "count", "total", "free", "cc", "source"), rows)
            + f"<small>probed at {time.strftime('%H:%M:%S')}</small>")
