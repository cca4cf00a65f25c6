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
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpo.views import plots
from hpo.errors import HpoError
from hpo.views.report_figures import (TOP_CURVES, draw_accuracy_time, draw_curves, draw_gap,
                                      draw_history, draw_importances, draw_parallel, draw_pareto,
                                      figure, finite)
from hpo.views.report_html import StudyReport, render, slug


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
    chain_figure = figure("Stage chain", out_dir / "chain.png",
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
        figure("Optimisation history", folder / "history.png",
               lambda path: draw_history(study, complete, names, path)),
        figure("Parameter importances", folder / "importances.png",
               lambda path: draw_importances(study, complete, path)),
        figure("Parallel coordinates", folder / "parallel.png",
               lambda path: draw_parallel(study, complete, names, path)),
        figure(f"Learning curves of the top {TOP_CURVES} trials", folder / "curves.png",
               lambda path: draw_curves(trials, sign, path)),
        figure("Train-validation gap per trial", folder / "gap.png",
               lambda path: draw_gap(trials, path)),
        figure("Accuracy against training time", folder / "accuracy_time.png",
               lambda path: draw_accuracy_time(trials, path)),
    ]
    if multi:
        figures.append(figure("Pareto front", folder / "pareto.png",
                              lambda path: draw_pareto(study, complete, names, path)))
    return StudyReport(
        name=study.study_name,
        attrs=dict(study.user_attrs),
        directions=[d.name.lower() for d in study.directions],
        counts=dict(collections.Counter(t.state.name for t in trials)),
        best=best,
        best_accuracy=best[0].values[0] if best else None,
        figures=figures,
    )


def _objective_names(study: Any, complete: list) -> list[str]:
    """Study metric names (hpo sets them when it creates a study), else generic ones."""
    if study.metric_names:
        return list(study.metric_names)
    return ["accuracy"] + [f"objective {i}" for i in range(1, len(study.directions))]


# --- the stage chain --------------------------------------------------------------------------


def _frozen_value(report: StudyReport) -> float | None:
    frozen = report.attrs.get("frozen_from")
    value = frozen.get("value") if isinstance(frozen, dict) else None
    return float(value) if finite(value) else None


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
