"""An offline report over finished studies: PNG figures per study and one self-contained HTML page.

``write_report(storage, ["stage1_layers", "stage2_fc"], "report/")`` writes, per study, a folder of
PNGs (optimisation history, parameter importances, parallel coordinates, top learning curves,
train-validation gap, accuracy against training time, and the Pareto front of multi-objective
studies), a ``chain.png`` when the studies build on one another, and ``index.html`` with every image
embedded as a data URI. A figure that cannot be drawn from the trials at hand (no complete trial,
a single parameter) is replaced by a note on the page; a report is never refused for its content.
"""

from __future__ import annotations

import collections
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpo.views import plots
from hpo.errors import HpoError
from hpo.views.report_html import Figure, StudyReport, render, slug

logger = logging.getLogger(__name__)

TOP_CURVES = 5


def write_report(storage: Any, study_names: Sequence[str], out_dir: str | Path) -> list[Path]:
    """Write the figures and ``index.html`` for ``study_names`` under ``out_dir``; return the files.

    ``storage`` is an Optuna storage object or a URL such as ``sqlite:///hpo.db``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import optuna

    if isinstance(storage, str):
        storage = optuna.storages.RDBStorage(storage)
    known = optuna.get_all_study_names(storage)
    for name in study_names:
        if name not in known:
            raise HpoError(f"unknown study {name!r}; known: {', '.join(sorted(known)) or '(none)'}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    reports = []
    with warnings.catch_warnings():
        # Optuna's matplotlib plots are experimental and its importance evaluator warns on few
        # trials; the report says in words what is missing instead.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name in study_names:
            study = optuna.load_study(study_name=name, storage=storage)
            if "chain" in study.user_attrs:
                continue  # a chain's record: no trials, shown as the chain's table below
            reports.append(_report_study(study, out_dir / slug(name)))
    chain = _chain(reports)
    chain_figure = _figure("Stage chain", out_dir / "chain.png",
                           lambda path: _chain_plot(chain, path)) if chain else None
    index = out_dir / "index.html"
    from hpo.views.chain_view import chain_views

    chains = [v for v in chain_views(storage)
              if any(r.name.startswith(f"{v.name}.") for r in reports)]
    index.write_text(render(reports, chain, chain_figure, chains), encoding="utf-8")
    figures = [f for r in reports for f in r.figures] + ([chain_figure] if chain_figure else [])
    return [f.path for f in figures if f.path is not None] + [index]


def _report_study(study: Any, folder: Path) -> StudyReport:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    multi = len(study.directions) > 1
    sign = 1.0 if study.directions[0].name == "MAXIMIZE" else -1.0
    if multi:
        best = sorted(study.best_trials, key=lambda t: -sign * t.values[0]) if complete else []
    else:
        best = [max(complete, key=lambda t: sign * t.value)] if complete else []
    names = _objective_names(study, complete)
    figures = [
        _figure("Optimisation history", folder / "history.png",
                lambda path: _history(study, complete, names, path)),
        _figure("Parameter importances", folder / "importances.png",
                lambda path: _importances(study, complete, path)),
        _figure("Parallel coordinates", folder / "parallel.png",
                lambda path: _parallel(study, complete, names, path)),
        _figure(f"Learning curves of the top {TOP_CURVES} trials", folder / "curves.png",
                lambda path: _curves(trials, sign, path)),
        _figure("Train-validation gap per trial", folder / "gap.png",
                lambda path: _gap(trials, path)),
        _figure("Accuracy against training time", folder / "accuracy_time.png",
                lambda path: _accuracy_time(trials, path)),
    ]
    if multi:
        figures.append(_figure("Pareto front", folder / "pareto.png",
                               lambda path: _pareto(study, complete, names, path)))
    return StudyReport(
        name=study.study_name,
        attrs=dict(study.user_attrs),
        directions=[d.name.lower() for d in study.directions],
        counts=dict(collections.Counter(t.state.name for t in trials)),
        best=best,
        best_accuracy=best[0].values[0] if best else None,
        figures=figures,
    )


def _figure(title: str, path: Path, draw: Callable[[Path], str | None]) -> Figure:
    """Run ``draw(path)``: it writes the PNG and returns None, or returns why it drew nothing."""
    try:
        note = draw(path)
    except Exception as exc:  # one bad figure must not cost the rest of the report
        logger.warning("report: could not draw %s", path, exc_info=True)
        return Figure(title, None, f"not drawn: {type(exc).__name__}: {exc}")
    return Figure(title, None, note) if note else Figure(title, path)


# --- what a trial says about itself -----------------------------------------------------------


def _accuracy(trial: Any) -> float | None:
    """The objective for complete trials, else the best validation accuracy reached before stop."""
    if trial.state.name == "COMPLETE":
        return trial.values[0]
    history = [r["val_acc"] for r in trial.user_attrs.get("history", [])
               if _finite(r.get("val_acc"))]
    reported = [v for v in trial.intermediate_values.values() if _finite(v)]
    return max(history or reported, default=None)


def _seconds(trial: Any) -> float | None:
    seconds = trial.user_attrs.get("seconds")
    if _finite(seconds):
        return float(seconds)
    return trial.duration.total_seconds() if trial.duration is not None else None


def _gap_of(trial: Any) -> float | None:
    gap = trial.user_attrs.get("gap")
    if _finite(gap):
        return float(gap)
    last = (trial.user_attrs.get("history") or [{}])[-1]
    if _finite(last.get("train_acc")) and _finite(last.get("val_acc")):
        return last["train_acc"] - last["val_acc"]
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _objective_names(study: Any, complete: list) -> list[str]:
    """Study metric names (hpo sets them when it creates a study), else generic ones."""
    if study.metric_names:
        return list(study.metric_names)
    return ["accuracy"] + [f"objective {i}" for i in range(1, len(study.directions))]


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


def _history(study: Any, complete: list, names: list[str], path: Path) -> str | None:
    import optuna.visualization.matplotlib as ovm

    if not complete:
        return "no complete trial yet"
    target = (lambda t: t.values[0]) if len(names) > 1 else None
    _save_optuna_axes(lambda: ovm.plot_optimization_history(
        study, target=target, target_name=names[0]), path)
    return None


def _importances(study: Any, complete: list, path: Path) -> str | None:
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


def _parallel(study: Any, complete: list, names: list[str], path: Path) -> str | None:
    import optuna.visualization.matplotlib as ovm

    if not complete or not any(t.params for t in complete):
        return "no complete trial with parameters yet"
    target = (lambda t: t.values[0]) if len(names) > 1 else None
    _save_optuna_axes(lambda: ovm.plot_parallel_coordinate(
        study, target=target, target_name=names[0]), path)
    return None


def _curves(trials: list, sign: float, path: Path) -> str | None:
    with_history = [t for t in trials if t.user_attrs.get("history") and _accuracy(t) is not None]
    if not with_history:
        return "no trial has a recorded history"
    # Complete trials first, best first; pruned ones only fill the places left.
    ranked = sorted(with_history, key=lambda t: (t.state.name == "COMPLETE", sign * _accuracy(t)),
                    reverse=True)[:TOP_CURVES]
    curves = {f"#{t.number} {t.state.name.lower()} {_accuracy(t):.3f}": t.user_attrs["history"]
              for t in ranked}
    plots.plot_val_curves(curves, path, title=f"Validation accuracy, top {len(curves)} trials")
    return None


def _gap(trials: list, path: Path) -> str | None:
    rows = [(t.number, t.state.name, _gap_of(t)) for t in trials]
    rows = [row for row in rows if row[2] is not None]
    if not rows:
        return "no trial recorded a train-validation gap"
    plots.plot_gap(rows, path)
    return None


def _accuracy_time(trials: list, path: Path) -> str | None:
    rows = [(t.number, t.state.name, _seconds(t), _accuracy(t))
            for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    rows = [row for row in rows if row[2] is not None and row[3] is not None]
    if not rows:
        return "no finished trial with both accuracy and training time"
    plots.plot_accuracy_time(rows, path)
    return None


def _pareto(study: Any, complete: list, names: list[str], path: Path) -> str | None:
    import optuna.visualization.matplotlib as ovm

    if not complete:
        return "no complete trial yet"
    if len(names) > 3:
        return f"a Pareto plot shows 2 or 3 objectives, this study has {len(names)}"
    _save_optuna_axes(lambda: ovm.plot_pareto_front(study, target_names=names), path)
    return None


# --- the stage chain --------------------------------------------------------------------------


def _frozen_value(report: StudyReport) -> float | None:
    frozen = report.attrs.get("frozen_from")
    value = frozen.get("value") if isinstance(frozen, dict) else None
    return float(value) if _finite(value) else None


def _chain_plot(chain: list[StudyReport], path: Path) -> None:
    plots.plot_chain([(r.name, _frozen_value(r), r.best_accuracy) for r in chain], path)


def _chain(reports: list[StudyReport]) -> list[StudyReport]:
    """Studies linked by ``frozen_from.study`` or ``builds_on`` (study or stage name), roots first.

    Empty when no two of the given studies are linked.
    """
    by_name = {r.name: r for r in reports}
    by_stage = {r.attrs.get("stage", r.name): r.name for r in reports}
    parent = {}
    for r in reports:
        frozen = r.attrs.get("frozen_from")
        candidates = [frozen.get("study") if isinstance(frozen, dict) else None,
                      r.attrs.get("builds_on")]
        for c in candidates:
            found = c if c in by_name else by_stage.get(c)
            if found and found != r.name:
                parent[r.name] = found
                break
    if not parent:
        return []
    children = collections.defaultdict(list)
    for child, p in parent.items():
        children[p].append(child)
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name not in ordered:
            ordered.append(name)
            for child in children[name]:
                visit(child)

    linked = set(parent) | set(parent.values())
    for r in reports:
        if r.name in linked and r.name not in parent:
            visit(r.name)
    for r in reports:  # members of a cycle have no root; keep them rather than lose them
        if r.name in linked:
            visit(r.name)
    return [by_name[name] for name in ordered]


# --- HTML -------------------------------------------------------------------------------------
