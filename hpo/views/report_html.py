"""The report's one self-contained HTML page: tables and figures embedded as data URIs."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import json
import re
from pathlib import Path
from typing import Any

MAX_PARETO_ROWS = 10


@dataclasses.dataclass
class Figure:
    title: str
    path: Path | None
    note: str = ""


@dataclasses.dataclass
class StudyReport:
    name: str
    attrs: dict[str, Any]
    directions: list[str]
    counts: dict[str, int]
    best: list[Any]  # FrozenTrials: the best one, or the Pareto set of a multi-objective study
    best_accuracy: float | None
    figures: list[Figure]


_CSS = """body{font-family:sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:520px}.note{color:#777}
code{font-size:90%}"""


def render(reports: list[StudyReport], chain: list[StudyReport], chain_figure: Figure | None,
           chains: list | None = None) -> str:
    now = datetime.datetime.now().isoformat(timespec="seconds")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>HPO report</title>"
             f"<style>{_CSS}</style></head><body><h1>HPO report</h1><p>Written {now}.</p>"]
    rows = [[f"<a href='#{slug(r.name)}'>{_e(r.name)}</a>", _e(r.attrs.get("stage", "")),
             *(str(r.counts.get(s, 0)) for s in ("COMPLETE", "PRUNED", "FAIL")),
             _e(fmt(r.best_accuracy))] for r in reports]
    parts.append(_table(["study", "stage", "complete", "pruned", "failed", "best accuracy"], rows))
    for view in chains or []:  # hpo-worker --chain: hpo.views.chain_view.ChainView
        active = view.active
        parts.append(f"<h2 id='chain-{slug(view.name)}'>Chain {_e(view.name)}</h2><p>"
                     f"{_e(view.settings['epochs'])} epochs per trial, "
                     f"{_e(view.settings['sampler'])} + {_e(view.settings['pruner'])}; "
                     f"{'active stage ' + _e(active.stage) if active else 'finished'}; epochs "
                     f"trained {view.epochs_spent}, at most {view.epochs_left} to go.</p>")
        parts.append(_table(["stage", "study", "state", "trials", "best", "froze"], [
            [_e(r.stage), _e(r.study), _e(r.state), f"{r.trained}/{r.budget}",
             _e(fmt(r.best)) + (f" (#{r.best_trial})" if r.best_trial is not None else ""),
             _e(r.froze)] for r in view.rows]))
    if chain:
        parts.append("<h2 id='chain'>Stage chain</h2><p>"
                     + " &rarr; ".join(_e(r.name) for r in chain) + "</p>")
        if chain_figure:
            parts.append(_figure_html(chain_figure))
    for r in reports:
        parts.append(_study_html(r))
    parts.append("</body></html>")
    return "\n".join(parts)


def _study_html(r: StudyReport) -> str:
    frozen = r.attrs.get("frozen_from")
    summary = [
        ["directions", _e(", ".join(r.directions))],
        ["trials by state", _e(", ".join(f"{k.lower()} {v}" for k, v in sorted(r.counts.items()))
                               or "no trials")],
        ["stage", _e(r.attrs.get("stage", "-"))],
        ["builds on", _e(r.attrs.get("builds_on") or "-")],
        ["frozen from", f"<code>{_e(json.dumps(frozen))}</code>" if frozen else "-"],
    ]
    if len(r.directions) == 1:
        summary.append(["best value", _e(fmt(r.best[0].value) if r.best else "none yet")])
        if r.best:
            summary.append(["best trial", f"#{r.best[0].number}"])
            summary.append(["best params", _params_html(r.best[0].params)])
    out = [f"<h2 id='{slug(r.name)}'>{_e(r.name)}</h2>", _table(["", ""], summary)]
    if len(r.directions) > 1:
        out.append(f"<h3>Pareto-optimal trials ({len(r.best)})</h3>")
        rows = [[f"#{t.number}", _e(", ".join(fmt(v) for v in t.values)), _params_html(t.params)]
                for t in r.best[:MAX_PARETO_ROWS]]
        out.append(_table(["trial", "values", "params"], rows) if rows
                   else "<p class='note'>none yet</p>")
    out.extend(_figure_html(f) for f in r.figures)
    return "\n".join(out)


def _figure_html(figure: Figure) -> str:
    if figure.path is None:
        return (f"<figure><figcaption>{_e(figure.title)}</figcaption>"
                f"<p class='note'>{_e(figure.note)}</p></figure>")
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (f"<figure><figcaption>{_e(figure.title)}</figcaption>"
            f"<img alt='{_e(figure.title)}' src='data:image/png;base64,{data}'></figure>")


def _params_html(params: dict) -> str:
    return "<br>".join(f"<code>{_e(k)} = {_e(fmt(v))}</code>" for k, v in params.items()) or "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "_"
