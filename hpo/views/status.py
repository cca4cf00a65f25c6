"""``hpo status``: one compact table row per study."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.runtime.retries import left_failed, left_failed_line

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
        if "chain" in summary.user_attrs:
            continue  # a chain's record holds no trials: shown by status_table's chain lines
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
            "left_failed": left_failed(summary.system_attrs),
        })
    return rows


def status_table(storage, only: str | None = None) -> str:
    from hpo.views.chain_view import chain_text, chain_views

    rows = study_rows(storage, only)
    chains = [chain_text(v) for v in chain_views(storage)
              if only is None or only == v.name or only.startswith(f"{v.name}.")]
    if chains and not rows:
        return "\n\n".join(chains)
    if not rows:
        return "no studies in this storage yet (start one with: hpo-worker --study stage1_layers)"
    wide = max(24, *(len(r["study"]) + 2 for r in rows))
    stage = max(22, *(len(r["stage"]) + 2 for r in rows))
    header = (f"{'study':<{wide}}{'stage':<{stage}}{'done':>5}{'pruned':>7}{'failed':>7}"
              f"{'running':>8}{'waiting':>8}  {'best':<16}running now")
    lines = [header, "-" * len(header)]
    for r in rows:
        best = f"{r['best']:.4f} (#{r['best_trial']})" if r["best"] is not None else "-"
        lines.append(f"{r['study']:<{wide}}{r['stage']:<{stage}}{r['complete']:>5}"
                     f"{r['pruned']:>7}{r['fail']:>7}{r['running']:>8}{r['waiting']:>8}  "
                     f"{best:<16}{' '.join(r['running_now']) or '-'}")
    lines += [f"{r['study']}: {left_failed_line(number, record)}"
              for r in rows for number, record in sorted(r["left_failed"].items())]
    return "\n\n".join(["\n".join(lines), *chains])
