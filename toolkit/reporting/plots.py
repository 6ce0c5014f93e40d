"""matplotlib figures over compare/bench results, serving load-test rows and plans. Each function
returns a Figure and never calls ``plt.show()``: Jupyter displays the returned figure, scripts save it."""

from __future__ import annotations

from typing import Any

from toolkit.errors import InvalidSpec

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


def _titled(fig: Any, ax: Any, title: str, ylabel: str | None = None) -> Any:
    """Label an axis and give it a small legend; return the figure."""
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


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
    return _titled(fig, ax, "Memory per variant (peak measured while loading and running)", "MiB")


def speed_vs_memory(frame: Any) -> Any:
    """Decode tokens/s against weights size, one point per variant."""
    plt = _plt()
    data = _ok(frame)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    _scatter_by_backend(ax, data, "decode_tok_s")
    return _titled(fig, ax, "Speed vs size", "decode tokens/s")


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


def quality_vs_bits(frame: Any) -> Any:
    """Perplexity ratio and KL divergence (with their standard errors) against bits per weight, one
    point per variant across every format: ``8 * weights_bytes / params``, the weights as held."""
    plt = _plt()
    data = _ok(frame).dropna(subset=["perplexity"])
    if "params" not in data or data["params"].isna().all():
        raise KeyError("params (the rows need the planned parameter count for bits per weight)")
    data = data[data["params"] > 0].copy()
    data["bits"] = 8 * data["weights_bytes"] / data["params"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for backend, group in data.groupby("backend"):
        ratio = group["ppl_ratio"] if "ppl_ratio" in group else group["perplexity"] / group["perplexity"].min()
        err = group["ppl_ratio_err"] if "ppl_ratio_err" in group else None
        a1.errorbar(group["bits"], ratio.fillna(1.0), yerr=None if err is None else err.fillna(0), fmt="o",
                    label=backend, capsize=3)
        kl_err = group["kl_divergence_err"].fillna(0) if "kl_divergence_err" in group else None
        a2.errorbar(group["bits"], group["kl_divergence"].fillna(0), yerr=kl_err, fmt="o", label=backend, capsize=3)
        for _, r in group.iterrows():
            a2.annotate(r["variant"], (r["bits"], r["kl_divergence"] or 0), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    a1.set_xlabel("bits per weight (as held)")
    a2.set_xlabel("bits per weight (as held)")
    a2.set_yscale("symlog", linthresh=1e-4)
    a1.set_ylabel("PPL(variant) / PPL(reference)")
    _titled(fig, a1, "Perplexity ratio vs bits per weight")
    return _titled(fig, a2, "KL divergence vs bits per weight (nats/token)")


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
    return _titled(fig, ax, "Throughput vs batch", "decode tokens/s (all sequences)")


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


def serving_throughput_latency(rows: Any, latency: str = "ttft") -> Any:
    """Output tokens/s against latency for serving load-test rows (``toolkit.measuring.serving``): one
    point per concurrency level, at the median (filled) and p90 (hollow, joined to it) of ``latency``
    (``ttft``, ``tpot``, ``itl`` or ``e2e``), each labelled with its concurrency; one series per
    (model, server, arrival rate). The knee is where latency grows and throughput stops growing."""
    plt = _plt()
    import pandas as pd

    if latency not in ("ttft", "tpot", "itl", "e2e"):
        raise InvalidSpec(f"latency must be ttft, tpot, itl or e2e, got {latency!r}")
    data = pd.DataFrame(rows) if not hasattr(rows, "groupby") else rows
    data = data.dropna(subset=[f"{latency}_median_s"])
    data = data.assign(_rate=data["request_rate"].fillna(0) if "request_rate" in data else 0)
    names = {"ttft": "TTFT", "tpot": "TPOT", "itl": "ITL", "e2e": "end-to-end latency"}
    fig, ax = plt.subplots(figsize=(6.5, 4.2), layout="constrained")
    for (model, url, rate), group in data.groupby(["model", "base_url", "_rate"], sort=False):
        group = group.sort_values("concurrency")
        median = group[f"{latency}_median_s"] * 1000
        p90 = group[f"{latency}_p90_s"] * 1000
        label = f"{model} @ {url}" + (f", {rate:g} req/s" if rate else ", closed loop")
        line = ax.plot(median, group["output_throughput"], marker="o", label=f"{label} (median)")[0]
        ax.scatter(p90, group["output_throughput"], marker="o", facecolors="none", edgecolors=line.get_color(),
                   label=f"{label} (p90)")
        for x0, x1, y, c in zip(median, p90, group["output_throughput"], group["concurrency"]):
            ax.plot([x0, x1], [y, y], color=line.get_color(), linewidth=0.8, alpha=0.6)
            ax.annotate(f"c={c}", (x0, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"{names[latency]} (ms)")
    return _titled(fig, ax, f"Serving: throughput vs {names[latency]}", "output tokens/s")
