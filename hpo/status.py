"""``hpo status``: one compact table row per study."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from hpo.errors import HpoError

_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING,
           TrialState.WAITING)


def study_rows(storage, only: str | None = None) -> list[dict]:
    summaries = storage.get_all_studies()
    if only is not None and only not in {s.study_name for s in summaries}:
        known = ", ".join(sorted(s.study_name for s in summaries)) or "none"
        raise HpoError(f"unknown study {only!r}; studies in this storage: {known}")
    rows = []
    for summary in sorted(summaries, key=lambda s: s.study_name):
        if only is not None and summary.study_name != only:
            continue
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(
            deepcopy=False)
        counts = {state: sum(t.state == state for t in trials) for state in _STATES}
        complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
        best = max(complete, key=lambda t: t.values[0]) if complete else None
        running = [f"#{t.number}@{t.user_attrs.get('host', '?')}:{t.user_attrs.get('pid', '?')}"
                   for t in trials if t.state == TrialState.RUNNING]
        rows.append({
            "study": summary.study_name,
            "stage": summary.user_attrs.get("stage", "-"),
            **{state.name.lower(): n for state, n in counts.items()},
            "best": best.values[0] if best else None,
            "best_trial": best.number if best else None,
            "running_now": running,
        })
    return rows


def status_table(storage, only: str | None = None) -> str:
    rows = study_rows(storage, only)
    if not rows:
        return "no studies in this storage yet (start one with: hpo-worker --study stage1_layers)"
    header = (f"{'study':<24}{'stage':<22}{'done':>5}{'pruned':>7}{'failed':>7}{'running':>8}"
              f"{'waiting':>8}  {'best':<16}running now")
    lines = [header, "-" * len(header)]
    for r in rows:
        best = f"{r['best']:.4f} (#{r['best_trial']})" if r["best"] is not None else "-"
        lines.append(f"{r['study']:<24}{r['stage']:<22}{r['complete']:>5}{r['pruned']:>7}"
                     f"{r['fail']:>7}{r['running']:>8}{r['waiting']:>8}  {best:<16}"
                     f"{' '.join(r['running_now']) or '-'}")
    return "\n".join(lines)
