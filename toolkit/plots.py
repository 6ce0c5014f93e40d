"""matplotlib figures over compare/bench results and plans. Each function returns a Figure and
never calls ``plt.show()``: Jupyter displays the returned figure, scripts save it."""

from __future__ import annotations

from typing import Any

MIB = 2**20


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget",
                                                "ipympl", "module://ipympl.backend_nbagg"):
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _label(row: Any) -> str:
    return f"{row['variant']}\n({row['backend']})"


def _ok(frame: Any) -> Any:
    return frame[frame["error"].isna()] if "error" in frame else frame


def _scatter_by_backend(ax: Any, data: Any, column: str) -> None:
    """Weights size against ``column``, a colour per backend, each point labelled with its variant."""
    for backend, group in data.groupby("backend"):
        ax.scatter(group["weights_bytes"] / MIB, group[column], label=backend, s=50)
        for _, r in group.iterrows():
            ax.annotate(r["variant"], (r["weights_bytes"] / MIB, r[column]), fontsize=8,
                        xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("weights (MiB)")


def memory_bars(frame: Any, plan_totals: dict[str, int] | None = None) -> Any:
    """Stacked bars per variant: weights as held, and the rest of the measured peak above them
    (runtime, KV cache, activations); a marker for the planner's predicted weights."""
    plt = _plt()
    data = _ok(frame)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(data)), 4), layout="constrained")
    labels = [_label(r) for _, r in data.iterrows()]
    weights = (data["weights_bytes"].fillna(0) / MIB).tolist()
    rest = ((data["peak_delta_bytes"] if "peak_delta_bytes" in data else data["peak_memory_bytes"]).fillna(0) / MIB
            - (data["weights_bytes"].fillna(0) / MIB)).clip(lower=0).tolist()
    ax.bar(labels, weights, label="weights (measured)", color="#4C72B0")
    ax.bar(labels, rest, bottom=weights, label="peak above weights (load + run)", color="#DD8452", alpha=0.8)
    if "predicted_weights_bytes" in data:
        pred = (data["predicted_weights_bytes"] / MIB).tolist()
        ax.scatter(labels, pred, marker="_", s=600, color="black", zorder=3, label="weights (planner)")
    ax.set_ylabel("MiB")
    ax.set_title("Memory per variant (peak measured while loading and running)")
    ax.legend(fontsize=8)
    return fig


def speed_vs_memory(frame: Any) -> Any:
    """Decode tokens/s against weights size, one point per variant."""
    plt = _plt()
    data = _ok(frame)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    _scatter_by_backend(ax, data, "decode_tok_s")
    ax.set_ylabel("decode tokens/s")
    ax.set_title("Speed vs size")
    ax.legend(fontsize=8)
    return fig


def quality_vs_size(frame: Any) -> Any:
    """Perplexity and KL divergence against weights size."""
    plt = _plt()
    data = _ok(frame).dropna(subset=["perplexity"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for ax, col, title in ((a1, "perplexity", "Perplexity (held-out text)"),
                           (a2, "kl_divergence", "KL divergence vs full precision (nats/token)")):
        _scatter_by_backend(ax, data, col)
        ax.set_title(title)
    a1.legend(fontsize=8)
    return fig


def throughput_vs_batch(rows: Any) -> Any:
    """Decode tokens/s against batch size, one line per (backend, quantization)."""
    plt = _plt()
    import pandas as pd

    data = pd.DataFrame(rows) if not hasattr(rows, "groupby") else rows
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    for (backend, quant), group in data.groupby(["backend", "quantization"]):
        group = group.sort_values("batch")
        ax.plot(group["batch"], group["decode_tok_s"], marker="o", label=f"{backend} {quant}")
    ax.set_xlabel("batch")
    ax.set_ylabel("decode tokens/s (all sequences)")
    ax.set_title("Throughput vs batch")
    ax.legend(fontsize=8)
    return fig


def plan_breakdown(plan: Any) -> Any:
    """One stacked horizontal bar of a plan's predicted memory against its budget."""
    plt = _plt()
    m = plan.memory
    parts = [("weights", m.weights_bytes), ("KV cache", m.kv_cache_bytes), ("activations", m.activation_bytes),
             ("overhead", m.overhead_bytes)]
    fig, ax = plt.subplots(figsize=(7, 1.8), layout="constrained")
    left = 0.0
    for name, value in parts:
        ax.barh([0], [value / MIB], left=left, label=f"{name} {value / MIB:.1f} MiB")
        left += value / MIB
    ax.axvline(m.budget_bytes / MIB, color="red", linestyle="--", label=f"budget {m.budget_bytes / MIB:.0f} MiB")
    ax.set_yticks([])
    ax.set_xlabel("MiB")
    ax.set_title(f"{plan.backend} {plan.quantization} {plan.dtype}, context {plan.max_context}")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3)
    return fig
