"""The report's figures: loss curves, the PLD schedule as executed, throughput (PNG bytes).

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly, so nothing here touches
pyplot's global state or needs a display.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bertpld.json_numbers import finite_number

# tab10, so that a run keeps its colour in every figure
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


LINESTYLES = ["-", "--", ":", "-."]


@dataclass
class Curve:
    """One run as the plots need it: its label, its metrics.jsonl rows, which losses to draw and
    its arm (the seeds of one arm share a colour and differ in line style)."""

    label: str
    rows: list[dict[str, Any]]
    color: str = ""
    train_key: str = "loss"
    val_key: str = "val_loss"
    arm: str = ""
    linestyle: str = "-"


def _series(rows: Sequence[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in rows:
        a, b = finite_number(r.get(x)), finite_number(r.get(y))
        if a is not None and b is not None:
            xs.append(a)
            ys.append(b)
    return xs, ys


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _new(ncols: int) -> tuple[Figure, list[Any]]:
    fig = Figure(figsize=(6.0 * ncols, 4.0), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


X_AXES = {
    "samples": ("samples", "training samples (sequences)"),
    "wall": ("wall_s", "training wall-clock (s)"),
    "flops": ("flops", "executed FLOPs (cumulative)"),
}


def loss_figure(
    curves: Sequence[Curve], x: str, target: float | None, unigram: float | None = None, mlm: bool = True
) -> bytes:
    """Train loss (left) and validation loss (right) against samples, wall-clock or FLOPs; the
    unigram line (word frequencies alone) on both when the losses are MLM losses."""
    key, xlabel = X_AXES[x]
    fig, (ax_t, ax_v) = _new(2)
    for c in curves:
        xs, ys = _series(c.rows, key, c.train_key)
        if xs:
            ax_t.plot(xs, ys, color=c.color, ls=c.linestyle, lw=1.2, label=c.label)
        xs, ys = _series(c.rows, key, c.val_key)
        if xs:
            ax_v.plot(xs, ys, color=c.color, ls=c.linestyle, lw=1.5, marker="o", ms=3, label=c.label)
    if target is not None:
        ax_v.axhline(target, color="black", ls="--", lw=1, label="target: baseline's final val loss")
    if unigram is not None and mlm:
        for ax in (ax_t, ax_v):
            ax.axhline(unigram, color="grey", ls=":", lw=1.5, label=f"unigram line ({unigram:.2f})")
    what = "MLM loss" if mlm else "loss"
    ax_t.set_title(f"training {what}")
    ax_v.set_title(f"validation {what}")
    for ax in (ax_t, ax_v):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        if ax.has_data():
            ax.legend(fontsize=8)
    return _png(fig)


def pld_figure(curves: Sequence[Curve]) -> bytes:
    """theta(t) and the number of encoder blocks executed per step, as logged."""
    fig, (ax_th, ax_b) = _new(2)
    for c in curves:
        xs, ys = _series(c.rows, "step", "theta")
        if xs:
            ax_th.plot(xs, ys, color=c.color, lw=1.5, label=c.label)
        xs, ys = _series(c.rows, "step", "blocks_kept")
        if xs:
            ax_b.plot(xs, ys, color=c.color, lw=1.2, label=c.label)
    ax_th.set_title("theta(t): keep probability of the top block")
    ax_th.set_ylabel("theta")
    ax_th.set_ylim(0, 1.05)
    ax_b.set_title("encoder blocks executed per step (mean since last log row)")
    ax_b.set_ylabel("blocks")
    for ax in (ax_th, ax_b):
        ax.set_xlabel("optimizer step")
        if ax.has_data():
            ax.legend(fontsize=8)
    return _png(fig)


def throughput_figure(curves: Sequence[Curve]) -> bytes:
    """Training tokens per second against wall-clock."""
    fig, (ax,) = _new(1)
    fig.set_size_inches(8.0, 4.0)
    for c in curves:
        xs, ys = _series(c.rows, "wall_s", "tokens_per_s")
        if xs:
            ax.plot(xs, ys, color=c.color, lw=1.2, label=c.label)
    ax.set_title("throughput")
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    if ax.has_data():
        ax.legend(fontsize=8)
    return _png(fig)


def all_figures(
    curves: Sequence[Curve], target: float | None, unigram: float | None = None, mlm: bool = True
) -> dict[str, tuple[bytes, str]]:
    """File name -> (PNG bytes, caption), in the order the report shows them."""
    arms: dict[str, int] = {}
    seen: dict[str, int] = {}
    for c in curves:
        arm = c.arm or c.label
        i = arms.setdefault(arm, len(arms))
        c.color = c.color or COLORS[i % len(COLORS)]
        c.linestyle = LINESTYLES[seen.get(arm, 0) % len(LINESTYLES)]
        seen[arm] = seen.get(arm, 0) + 1
    line = "" if unigram is None or not mlm else "; dotted grey: the unigram line"
    return {
        "loss_vs_samples.png": (
            loss_figure(curves, "samples", target, unigram, mlm),
            f"Loss against training samples{line}",
        ),
        "loss_vs_wall.png": (
            loss_figure(curves, "wall", target, unigram, mlm),
            f"Loss against training wall-clock{line}",
        ),
        "loss_vs_flops.png": (
            loss_figure(curves, "flops", target, unigram, mlm),
            f"Loss against executed FLOPs{line}",
        ),
        "pld_schedule.png": (pld_figure(curves), "PLD schedule as executed: theta(t) and blocks per step"),
        "throughput.png": (throughput_figure(curves), "Training throughput over time"),
    }
