"""A plan as a value: what was chosen, its memory breakdown, why, and the rejected alternatives;
rendered as text, HTML and JSON."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from toolkit.errors import InvalidSpec
from toolkit.units import fmt_bytes as _fmt

if TYPE_CHECKING:
    import pandas


@dataclass
class MemoryBreakdown:
    """Predicted bytes per component; ``total_bytes <= budget_bytes`` for a chosen plan."""

    budget_bytes: int
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    total_bytes: int
    # the engine's own buffers as predicted, where they differ from what becomes resident (llama.cpp on
    # the CPU reserves a compute buffer for n_ubatch logits that a generation never writes; mlx on the
    # CPU allocates the outputs of queued operations before it writes them):
    # {"model", "kv", "compute", "output"} in bytes; None when the breakdown is the engine's figure
    engine_buffers: dict | None = None
    # the process's peak while loading, where it is above weights + KV + activations + overhead (hf on
    # the CPU converting a checkpoint's dtype holds the mapped file and the converted copy at once);
    # total_bytes is the larger of the two
    load_peak_bytes: int | None = None

    def engine_figures(self) -> dict:
        """The engine's buffers as predicted: ``engine_buffers`` where they differ from the breakdown, else
        the breakdown itself (weights, KV, and compute + output together as ``compute``)."""
        return self.engine_buffers or {"model": self.weights_bytes, "kv": self.kv_cache_bytes,
                                       "compute": self.activation_bytes, "output": 0}

    def to_dict(self) -> dict:
        """Return a JSON-ready dict."""
        return asdict(self)


@dataclass
class Plan:
    """How to run a model on a device, with the memory it needs and why it was chosen."""

    model: str
    params: int
    backend: str
    quantization: str
    dtype: str
    kv_dtype: str
    max_context: int
    batch: int
    tensor_parallel: int
    device: dict
    memory: MemoryBreakdown
    reasons: list[str] = field(default_factory=list)
    alternatives: list[dict] = field(default_factory=list)
    # the largest context this option fits (max_context is what the plan allocates)
    largest_context: int | None = None
    # engine settings the load applies for the estimate to hold (llama.cpp KV types, offload split...)
    settings: dict = field(default_factory=dict)
    # bytes per device when the model is split (offload, several GPUs or nodes), else None
    split: dict | None = None
    # what a user would run to serve this plan with the engine's own tools
    commands: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Return the ``toolkit plan --json`` object (see DESIGN.md)."""
        d = asdict(self)
        d["memory"] = self.memory.to_dict()
        return d

    def to_table(self) -> str:
        """Readable fixed-width text: the choice, the memory breakdown, reasons and alternatives."""
        m = self.memory
        lines = [
            f"model          {self.model} ({self.params / 1e9:.2f}B params)",
            f"device         {self.device.get('name')} x{self.device.get('count', 1)} ({self.device.get('kind')})",
            f"backend        {self.backend}" + (f"  tensor_parallel={self.tensor_parallel}" if self.tensor_parallel > 1 else ""),
            f"quantization   {self.quantization}",
            f"dtype          {self.dtype}  (kv cache {self.kv_dtype})",
            f"max_context    {self.max_context}  batch {self.batch}"
            + (f"  (largest that fits: {self.largest_context})" if self.largest_context else ""),
            "",
            "memory",
        ]
        for k in ("weights_bytes", "kv_cache_bytes", "activation_bytes", "overhead_bytes", "total_bytes", "budget_bytes"):
            lines.append(f"  {k.removesuffix('_bytes'):<12} {_fmt(getattr(m, k)):>12}")
        lines.append(f"  {'kv/token':<12} {m.kv_bytes_per_token / 1024:>8.1f} KiB")
        if self.settings:
            lines += ["", "engine settings  " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        if self.split:
            lines += ["", "split"] + [f"  {k:<12} {v if isinstance(v, int) and k == 'n_gpu_layers' else _fmt(v)}"
                                      for k, v in self.split.items()]
        lines += ["", "reasons"] + [f"  - {r}" for r in self.reasons]
        if self.commands:
            lines += ["", "commands"] + [f"  $ {c}" for c in self.commands]
        if self.alternatives:
            lines += ["", "alternatives"]
            for a in self.alternatives:
                kv = a.get("kv_dtype") or ""
                lines.append(f"  {a['backend']:<9} {a['quantization']:<13} {a.get('dtype') or '':<9} "
                             f"{'kv ' + kv if kv and kv != a.get('dtype') else '':<10} {a['rejected']}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        m = self.memory
        head = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in [("model", self.model), ("backend", self.backend), ("quantization", self.quantization),
                         ("dtype", self.dtype), ("kv_dtype", self.kv_dtype), ("max_context", self.max_context),
                         ("batch", self.batch), ("tensor_parallel", self.tensor_parallel)]
        )
        memrows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{_fmt(v)}</td></tr>"
                          for k, v in m.to_dict().items())
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons)
        alts = "".join(
            f"<tr><td>{html.escape(a['backend'])}</td><td>{html.escape(a['quantization'])}</td>"
            f"<td>{html.escape(str(a['rejected']))}</td></tr>" for a in self.alternatives
        )
        return (f"<table>{head}{memrows}</table><ul>{reasons}</ul>"
                f"<table><tr><th>backend</th><th>quantization</th><th>rejected</th></tr>{alts}</table>")

    def compare(self, measured: dict | int) -> "pandas.DataFrame":
        """Predicted vs measured bytes per component.

        Args:
            measured: ``{"weights_bytes": n, "total_bytes": n, ...}`` or an int (total bytes).

        Returns:
            A DataFrame with columns component, predicted_bytes, measured_bytes, rel_error.
        """
        import pandas as pd

        if isinstance(measured, int):
            measured = {"total_bytes": measured}
        pred = self.memory.to_dict()
        rows = []
        for k, v in measured.items():
            key = k if k.endswith("_bytes") or k.endswith("_token") else f"{k}_bytes"
            if key not in pred:
                raise InvalidSpec(f"unknown memory component {k!r}: use one of {', '.join(pred)}")
            rows.append({"component": key, "predicted_bytes": pred[key], "measured_bytes": int(v),
                         "rel_error": (pred[key] - v) / v if v else None})
        return pd.DataFrame(rows, columns=["component", "predicted_bytes", "measured_bytes", "rel_error"])
