"""The figures of a study's report, each a PNG drawn from its trials or a note saying why not."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpo.views import plots
from hpo.views.report_html import Figure

logger = logging.getLogger(__name__)

TOP_CURVES = 5


def figure(title: str, path: Path, draw: Callable[[Path], str | None]) -> Figure:
    """Run ``draw(path)``: it writes the PNG and returns None, or returns why it drew nothing."""
    try:
        note = draw(path)
    except Exception as exc:  # one bad figure must not cost the rest of the report
        logger.warning("report: could not draw %s", path, exc_info=True)
        return Figure(title, None, f"not drawn: {type(exc).__name__}: {exc}")
    return Figure(title, None, note) if note else Figure(title, path)


# --- what a trial says about itself -----------------------------------------------------------


def trial_accuracy(trial: Any) -> float | None:
    """The objective for complete trials, else the best validation accuracy reached before stop."""
    if trial.state.name == "COMPLETE":
        return trial.values[0]
    history = [r["val_acc"] for r in trial.user_attrs.get("history", [])
               if finite(r.get("val_acc"))]
    reported = [v for v in trial.intermediate_values.values() if finite(v)]
    return max(history or reported, default=None)


def trial_seconds(trial: Any) -> float | None:
    seconds = trial.user_attrs.get("seconds")
    if finite(seconds):
        return float(seconds)
    return trial.duration.total_seconds() if trial.duration is not None else None


def trial_gap(trial: Any) -> float | None:
    gap = trial.user_attrs.get("gap")
    if finite(gap):
        return float(gap)
    last = (trial.user_attrs.get("history") or [{}])[-1]
    if finite(last.get("train_acc")) and finite(last.get("val_acc")):
        return last["train_acc"] - last["val_acc"]
    return None


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- figures ----------------------------------------------------------------------------------


def _save_optuna_axes(make_axes: Callable[[], Any], path: Path) -> None:
    """Save the figure of an ``optuna.visualization.matplotlib`` plot, keeping its style local."""
    import matplotlib
    import matplotlib.pyplot as plt

    with matplotlib.rc_context():  # the plots switch pyplot to the ggplot style globally
        ax = make_axes()
        fig = ax.figure
        try:
            fig.set_size_inches(6.4, 4.0)
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=plots.DPI, bbox_inches="tight")
        finally:
            plt.close(fig)


def _save_first_objective(plot: Callable, study: Any, names: list[str], path: Path) -> None:
    """An Optuna plot of the first objective (named; with several objectives, picked out)."""
    target = (lambda t: t.values[0]) if len(names) > 1 else None
    _save_optuna_axes(lambda: plot(study, target=target, target_name=names[0]), path)


def draw_history(study: Any, complete: list, names: list[str], path: Path) -> str | None:
    import optuna.visualization.matplotlib as ovm

    if not complete:
        return "no complete trial yet"
    _save_first_objective(ovm.plot_optimization_history, study, names, path)
    return None


def draw_importances(study: Any, complete: list, path: Path) -> str | None:
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    params = {name for t in complete for name in t.params}
    if len(complete) < 2 or len(params) < 2:
        return (f"needs at least 2 complete trials and 2 parameters "
                f"(has {len(complete)} and {len(params)})")
    # PED-ANOVA is Optuna's default and needs no scikit-learn (fANOVA and MDI do). Without a
    # target it honours the direction, and for several objectives it scores reaching the front.
    importances = get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    if not any(importances.values()):
        return f"too few complete trials ({len(complete)}) to tell the parameters apart"
    plots.plot_importances(importances, path, title="Parameter importances (PED-ANOVA)")
    return None


def draw_parallel(study: Any, complete: list, names: list[str], path: Path) -> str | None:
    import optuna.visualization.matplotlib as ovm

    if not complete or not any(t.params for t in complete):
        return "no complete trial with parameters yet"
    _save_first_objective(ovm.plot_parallel_coordinate, study, names, path)
    return None


def draw_curves(trials: list, sign: float, path: Path) -> str | None:
    with_history = [t for t in trials
                    if t.user_attrs.get("history") and trial_accuracy(t) is not None]
    if not with_history:
        return "no trial has a recorded history"
    # Complete trials first, best first; pruned ones only fill the places left.
    ranked = sorted(with_history,
                    key=lambda t: (t.state.name == "COMPLETE", sign * trial_accuracy(t)),
                    reverse=True)[:TOP_CURVES]
    curves = {f"#{t.number} {t.state.name.lower()} {trial_accuracy(t):.3f}": t.user_attrs["history"]
              for t in ranked}
    plots.plot_val_curves(curves, path, title=f"Validation accuracy, top {len(curves)} trials")
    return None


def draw_gap(trials: list, path: Path) -> str | None:
    rows = [(t.number, t.state.name, trial_gap(t)) for t in trials]
    rows = [row for row in rows if row[2] is not None]
    if not rows:
        return "no trial recorded a train-validation gap"
    plots.plot_gap(rows, path)
    return None


def draw_accuracy_time(trials: list, path: Path) -> str | None:
    rows = [(t.number, t.state.name, trial_seconds(t), trial_accuracy(t))
            for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    rows = [row for row in rows if row[2] is not None and row[3] is not None]
    if not rows:
        return "no finished trial with both accuracy and training time"
    plots.plot_accuracy_time(rows, path)
    return None


def draw_pareto(study: Any, complete: list, names: list[str], path: Path) -> str | None:
    import optuna.visualization.matplotlib as ovm

    if not complete:
        return "no complete trial yet"
    if len(names) > 3:
        return f"a Pareto plot shows 2 or 3 objectives, this study has {len(names)}"
    _save_optuna_axes(lambda: ovm.plot_pareto_front(study, target_names=names), path)
    return None
