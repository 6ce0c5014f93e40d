"""An HTML report (figures embedded, readable on its own) and a Markdown twin (figures as PNG
files beside it) from a compare DataFrame."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from pathlib import Path
from typing import Any

from toolkit.reporting import plots

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.err{color:#b00}code{background:#f5f5f5;padding:1px 4px}"""

FIGURES = (("memory", plots.memory_bars, "Memory per variant"),
           ("speed", plots.speed_vs_memory, "Decode speed vs size"),
           ("quality", plots.quality_vs_size, "Quality vs size"),
           ("bits", plots.quality_vs_bits, "Perplexity ratio and KL divergence vs bits per weight"))

TABLE_COLUMNS = ("variant", "backend", "quantization", "weights_bytes", "predicted_weights_bytes",
                 "peak_delta_bytes", "peak_memory_bytes", "runtime_bytes", "load_s", "ttft_s", "prefill_tok_s", "decode_tok_s", "perplexity",
                 "ppl_ratio", "kl_divergence", "kl_divergence_err", "top1_agreement", "top1_agreement_err", "error")


def _table(frame: Any) -> Any:
    view = frame[[c for c in TABLE_COLUMNS if c in frame.columns]].copy()
    for col in ("weights_bytes", "predicted_weights_bytes", "peak_delta_bytes", "peak_memory_bytes", "runtime_bytes"):
        if col in view:
            view[col] = view[col].map(lambda b: "-" if b is None or b != b else f"{b / 2**20:.2f} MiB")
    return view


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def write_report(frame: Any, out_dir: str | Path, *, title: str = "toolkit report",
                 environment: dict[str, Any] | None = None, notes: list[str] | None = None) -> Path:
    """Write ``report.html``, ``report.md``, the figures and ``results.csv`` into ``out_dir``.

    Returns:
        The path of ``report.html``.
    """
    from toolkit.measuring.environment import environment as current_environment

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment or current_environment()
    table = _table(frame)
    frame.drop(columns=[c for c in ("traceback",) if c in frame.columns]).to_csv(out / "results.csv", index=False)
    figures: list[tuple[str, str, bytes]] = []
    ok = frame[frame["error"].isna()] if "error" in frame else frame
    if len(ok):
        for name, make, caption in FIGURES:
            try:
                png = _png(make(frame))
            except (KeyError, ValueError, TypeError) as exc:  # a figure needs columns a partial sweep may lack
                notes = (notes or []) + [f"figure '{caption}' skipped: {exc}"]
                continue
            (out / f"{name}.png").write_bytes(png)
            figures.append((name, caption, png))
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    errors = frame[frame["error"].notna()] if "error" in frame else frame.iloc[0:0]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><p>Generated {stamp}.</p>",
             "<h2>Results</h2>", table.to_html(index=False, na_rep="-", float_format=lambda x: f"{x:.4g}"),
             "<p>Perplexity on the held-out text; KL divergence (nats/token) and top-1 agreement of next-token "
             "distributions against the reference row, on the same tokens. Decode tok/s = (new tokens − 1) / "
             "(generate time − one-token time). Memory: runtime = process RSS after importing the backend's "
             "libraries, before loading; peak = the process RSS high-water mark while loading and running; peak "
             "delta = peak − runtime, what this variant itself cost. Each variant runs in its own process unless "
             "the sweep was run in-process.</p>"]
    for name, caption, png in figures:
        parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{name}' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    if len(errors):
        parts.append("<h2>Errors</h2><ul>" + "".join(
            f"<li class='err'><b>{html.escape(str(r['variant']))} on {html.escape(str(r['backend']))}</b>: "
            f"{html.escape(str(r['error']))}</li>" for _, r in errors.iterrows()) + "</ul>")
    for note in notes or []:
        parts.append(f"<p><i>{html.escape(note)}</i></p>")
    parts.append("<h2>Environment</h2><pre>" + html.escape(json.dumps(env, indent=2)) + "</pre></body></html>")
    (out / "report.html").write_text("".join(parts), encoding="utf-8")

    md = [f"# {title}", "", f"Generated {stamp}.", "", table.to_markdown(index=False) if _has_tabulate()
          else "```\n" + table.to_string(index=False) + "\n```", ""]
    md += [f"## {caption}\n\n![{name}]({name}.png)\n" for name, caption, _ in figures]
    if len(errors):
        md += ["## Errors", ""] + [f"- **{r['variant']}** on {r['backend']}: {r['error']}" for _, r in errors.iterrows()]
    md += ["", "## Environment", "", "```json", json.dumps(env, indent=2), "```", ""]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return out / "report.html"


def _has_tabulate() -> bool:
    import importlib.util

    return importlib.util.find_spec("tabulate") is not None
