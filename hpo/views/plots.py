"""Matplotlib figures drawn from plain data (histories, per-trial rows); no Optuna here.

Figures are built on the object-oriented Agg canvas, never through ``pyplot``: no global state, safe
in worker threads, and matplotlib is imported only when a figure is drawn, so ``import hpo`` stays
light. ``hpo.views.report`` and ``hpo.views.report_figures`` gather the data from the study
database and call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STATE_COLORS = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}
DPI = 80


def new_figure(
    width: float = 6.4, height: float = 4.0, ncols: int = 1, layout: str | None = "constrained"
) -> tuple[Any, Any]:
    """A figure on an Agg canvas and its axes (one, or a tuple when ``ncols > 1``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG, creating the parent folder, and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI)
    return path


def _series(history: Sequence[dict], key: str) -> list[tuple[Any, float]]:
    """(epoch, value) pairs of ``key``, skipping epochs where it is missing or not finite."""
    return [(row.get("epoch", i), row[key]) for i, row in enumerate(history)
            if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])]


def plot_learning_curve(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Two panels per epoch: train/val accuracy and train/val loss. Fast enough for every trial.

    A fixed layout rather than a layout engine keeps it near 0.1 s; epochs whose loss diverged
    (NaN, inf) are left out rather than flattening the axis.
    """
    fig, (acc_ax, loss_ax) = new_figure(7.0, 2.8, ncols=2, layout=None)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.88, wspace=0.25)
    for ax, metric in ((acc_ax, "acc"), (loss_ax, "loss")):
        for split, style in (("train", "--"), ("val", "-")):
            points = _series(history, f"{split}_{metric}")
            if points:
                ax.plot(*zip(*points), style, marker=".", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "loss")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize="small")
    if not history:
        acc_ax.text(0.5, 0.5, "no epochs recorded", ha="center", va="center",
                    transform=acc_ax.transAxes)
    if title:
        fig.suptitle(title, fontsize="medium")
    return save_figure(fig, path)


def plot_val_curves(curves: dict[str, Sequence[dict]], path: str | Path, title: str = "") -> Path:
    """Validation accuracy per epoch, one line per labelled history (e.g. the top trials)."""
    fig, ax = new_figure()
    for label, history in curves.items():
        points = _series(history, "val_acc")
        if points:
            ax.plot(*zip(*points), marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "Learning curves", loc="left")
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_gap(rows: Sequence[tuple[int, str, float]], path: str | Path, title: str = "") -> Path:
    """Train-minus-validation accuracy gap per trial: rows of (trial number, state, gap)."""
    fig, ax = new_figure()
    for state in sorted({state for _, state, _ in rows}):
        picked = [(n, gap) for n, s, gap in rows if s == state]
        ax.bar(*zip(*picked), color=STATE_COLORS.get(state, "tab:gray"), label=state.lower())
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("trial")
    ax.set_ylabel("train acc - val acc (last epoch)")
    ax.set_title(title or "Overfitting gap per trial", loc="left")
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (seconds, accuracy) points no other point beats on both: faster and at least as good."""
    front: list[tuple[float, float]] = []
    for seconds, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((seconds, acc))
    return front


def plot_accuracy_time(
    rows: Sequence[tuple[int, str, float, float]], path: str | Path, title: str = ""
) -> Path:
    """Accuracy against training seconds, rows of (trial, state, seconds, accuracy).

    Complete trials are the objective values; pruned ones show the best accuracy they reached
    before being stopped. The accuracy/time Pareto front of complete trials is drawn as a step line.
    """
    fig, ax = new_figure()
    for state in sorted({row[1] for row in rows}):
        picked = [(secs, acc) for _, s, secs, acc in rows if s == state]
        ax.scatter(*zip(*picked), s=18, alpha=0.9 if state == "COMPLETE" else 0.5,
                   color=STATE_COLORS.get(state, "tab:gray"), label=state.lower())
    front = pareto_front([(secs, acc) for _, s, secs, acc in rows if s == "COMPLETE"])
    if front:
        ax.step(*zip(*front), where="post", color="tab:green", linewidth=1.5,
                label="accuracy/time front")
        ax.scatter(*zip(*front), s=50, facecolors="none", edgecolors="tab:green")
        numbers = {(secs, acc): n for n, s, secs, acc in rows if s == "COMPLETE"}
        for point in front:
            ax.annotate(f"#{numbers[point]}", point, textcoords="offset points", xytext=(4, 4),
                        fontsize="x-small")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "Accuracy against training time", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def plot_importances(importances: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Horizontal bars of parameter importances, most important on top."""
    ordered = sorted(importances.items(), key=lambda kv: kv[1])
    fig, ax = new_figure(6.4, 1.2 + 0.35 * len(ordered))
    names, values = zip(*ordered)
    ax.barh(names, values, color="tab:blue")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize="small")
    ax.set_xlim(0, max(values) * 1.15 or 1.0)
    ax.set_xlabel("importance (PED-ANOVA, normalised)")
    ax.set_title(title or "Parameter importances", loc="left")
    return save_figure(fig, path)


def plot_chain(
    stages: Sequence[tuple[str, float | None, float | None]], path: str | Path, title: str = ""
) -> Path:
    """Best accuracy per stage in chain order: rows of (stage, accuracy it started from, best).

    The start is the frozen predecessor's value (None for defaults); a stage without a complete
    trial has best None and shows as an empty slot.
    """
    fig, ax = new_figure(max(6.4, 1.3 * len(stages)), 4.0)
    xs = range(len(stages))
    best = [b for _, _, b in stages]
    ax.bar(xs, [b or 0.0 for b in best], color="tab:blue", alpha=0.7, label="best accuracy")
    drawn = [(x, b) for x, b in zip(xs, best) if b is not None]
    if drawn:
        ax.plot(*zip(*drawn), color="tab:blue", marker="o")
    starts = [(x, s) for x, (_, s, _) in zip(xs, stages) if s is not None]
    if starts:
        ax.scatter(*zip(*starts), marker="_", s=400, color="black", zorder=3,
                   label="frozen from predecessor")
    top = max([b for b in best if b is not None] + [s for _, s in starts] + [0.0]) or 1.0
    for x, (_, start, b) in zip(xs, stages):
        if b is None:
            ax.text(x, top / 2, "no complete\ntrial", ha="center", color="gray", fontsize="small")
            continue
        text = f"{b:.3f}" if start is None else f"{b:.3f}\n({b - start:+.3f})"
        ax.text(x, b + top * 0.02, text, ha="center", va="bottom", fontsize="small")
    ax.set_xticks(list(xs), [name for name, _, _ in stages], rotation=20, ha="right")
    ax.set_ylim(0, top * 1.35)
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "How each stage moved the best accuracy", loc="left")
    ax.legend(fontsize="small", loc="upper left", ncols=2)
    return save_figure(fig, path)
