"""Where each chain stands, for ``hpo status``, ``hpo report`` and the dashboard's notes: the
active stage, each stage's best, what it froze and from where, epochs spent and left."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo.store import study_records
from hpo.studies.chain import stage_budget
from search_spaces import get_stage

USED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclasses.dataclass
class StageRow:
    stage: str
    study: str
    state: str  # finished | active | not started
    trained: int  # complete + pruned
    budget: int
    best: float | None
    best_trial: int | None
    froze: str  # "defaults" or "<study> #<trial> (<value>)"
    epochs: int  # trained so far, every trial's epochs counted


@dataclasses.dataclass
class ChainView:
    name: str
    settings: dict[str, Any]
    rows: list[StageRow]

    @property
    def active(self) -> StageRow | None:
        return next((r for r in self.rows if r.state != "finished"), None)

    @property
    def epochs_spent(self) -> int:
        return sum(r.epochs for r in self.rows)

    @property
    def epochs_left(self) -> int:
        """At most this many more (before pruning): untrained budget times epochs per trial."""
        return sum(max(0, r.budget - r.trained) for r in self.rows) * self.settings["epochs"]


def is_chain_record(summary) -> bool:
    return "chain" in summary.user_attrs


def chain_views(storage) -> list[ChainView]:
    summaries = {s.study_name: s for s in storage.get_all_studies()}
    return [_view(storage, name, study_records.of(s)["chain"], summaries)
            for name, s in sorted(summaries.items()) if is_chain_record(s)]


def _froze(attrs: dict[str, Any]) -> str:
    origin = attrs.get("frozen_from") or {}
    if origin.get("defaults"):
        return "the chain's base" if origin.get("base") == "chain" else "defaults"
    if origin.get("file"):
        return f"file {origin['file']}"
    value = origin.get("value")
    shown = f" ({value:.4f})" if isinstance(value, float) else ""
    return f"{origin.get('study')} #{origin.get('trial')}{shown}"


def _view(storage, name: str, settings: dict[str, Any], summaries) -> ChainView:
    rows = []
    for stage_name in settings["stages"]:
        study_name = f"{name}.{stage_name}"
        summary = summaries.get(study_name)
        if summary is None or "stage" not in summary.user_attrs:
            rows.append(StageRow(stage_name, study_name, "not started", 0,
                                 stage_budget(get_stage(stage_name), settings), None, None, "-", 0))
            continue
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(
            deepcopy=False)
        budget = study_records.of(summary)["settings"]["n_trials"]
        trained = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        busy = any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
        used = sum(t.state in USED for t in trials)
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        best = max(complete, key=lambda t: (t.values[0], -t.number)) if complete else None
        epochs = sum(len(t.user_attrs.get("history", [])) or len(t.intermediate_values)
                     for t in trials)
        state = "finished" if used >= budget and not busy else "active"
        rows.append(StageRow(stage_name, study_name, state, trained, budget,
                             best.values[0] if best else None, best.number if best else None,
                             _froze(summary.user_attrs), epochs))
    return ChainView(name, settings, rows)


def chain_text(view: ChainView) -> str:
    s = view.settings
    active = view.active
    where = (f"active stage {active.stage} ({view.rows.index(active) + 1} of {len(view.rows)})"
             if active else "finished")
    lines = [f"chain {view.name!r}: {s['stages'][0]}..{s['stages'][-1]}, {s['epochs']} epochs "
             f"per trial, {s['sampler']} + {s['pruner']}; {where}",
             f"  {'stage':<23}{'state':<13}{'trials':>8}  {'best':<16}{'froze':<38}{'epochs':>7}"]
    for r in view.rows:
        best = f"{r.best:.4f} (#{r.best_trial})" if r.best is not None else "-"
        lines.append(f"  {r.stage:<23}{r.state:<13}{f'{r.trained}/{r.budget}':>8}  {best:<16}"
                     f"{r.froze:<38}{r.epochs:>7}")
    lines.append(f"  epochs: {view.epochs_spent} trained, at most {view.epochs_left} to go "
                 "(pruning stops many trials early)")
    return "\n".join(lines)


def chain_note(view: ChainView) -> str:
    """The chain record's dashboard note (Markdown)."""
    s, active = view.settings, view.active
    lines = [f"## Chain `{view.name}`", "",
             f"`{s['stages'][0]}` .. `{s['stages'][-1]}`: {s['epochs']} epochs per trial, "
             f"{s['sampler']} sampler, {s['pruner']} pruner, dataset `{s['dataset'] or 'default'}`"
             f". Each stage freezes its predecessor's final best and starts with it (the warm "
             "start).", "",
             f"**{'Active stage: `' + active.stage + '`' if active else 'Finished'}.** Epochs "
             f"trained: {view.epochs_spent}; at most {view.epochs_left} to go.", "",
             "| stage | study | state | trials | best | froze |", "|---|---|---|---|---|---|"]
    for r in view.rows:
        best = f"{r.best:.4f} (#{r.best_trial})" if r.best is not None else "-"
        lines.append(f"| `{r.stage}` | `{r.study}` | {r.state} | {r.trained}/{r.budget} | "
                     f"{best} | {r.froze} |")
    return "\n".join(lines) + "\n"


def write_chain_note(storage, name: str) -> None:
    """Refresh the chain's note; a failure is logged, never raised (it is only a view)."""
    import logging

    try:
        from optuna_dashboard import save_note

        view = next(v for v in chain_views(storage) if v.name == name)
        save_note(optuna.load_study(study_name=name, storage=storage), chain_note(view))
    except Exception as e:
        logging.getLogger(__name__).warning("chain %r: could not write the dashboard note (%s)",
                                            name, e)
