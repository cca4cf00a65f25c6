"""The study-wide trial budget, stored in the study and shared by every worker.

Trials that use it up: COMPLETE, PRUNED, RUNNING (so workers stop as soon as the budget is in
flight) and WAITING (queued retries: each replaces a FAIL, which does not count). Two workers that
read the budget at the same moment may both create a trial; the later one by number gives way,
so the budget holds exactly. A trial taken from the queue never gives way: its slot was reserved.
"""

from __future__ import annotations

import dataclasses

import optuna
from optuna.trial import TrialState

from hpo.errors import HpoError
from hpo.store import study_records

USED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclasses.dataclass
class Tally:
    counts: dict[TrialState, int]
    best: float | None  # the study-wide best first objective, over COMPLETE trials

    @property
    def finished(self) -> int:
        return self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]

    def left(self, budget: int) -> int:
        """Trials still to start: the budget minus those used, never fewer than those waiting."""
        used = sum(self.counts[state] for state in USED)
        return max(budget - used, self.counts[TrialState.WAITING])


def tally(study: optuna.Study) -> Tally:
    """Trials by state and the best value, from one read of the trial list."""
    counts, best = dict.fromkeys(TrialState, 0), None
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
        if t.state == TrialState.COMPLETE and t.values:
            best = t.values[0] if best is None else max(best, t.values[0])
    return Tally(counts, best)


def gives_way(study: optuna.Study, number: int, budget: int) -> bool:
    """Whether a freshly created trial was created in a race after the budget filled."""
    if number < budget:  # fewer trials than the budget exist at all: no extra read
        return False
    states = (*USED, TrialState.WAITING)
    started_before = sum(t.number < number for t in study.get_trials(deepcopy=False, states=states))
    return started_before >= budget


def stored_budget(storage, study_name: str) -> int:
    """The budget as stored now (``hpo create-study --update`` may have raised it)."""
    return int(study_records.read_one(storage, study_name, "settings")["n_trials"])


def update_budget(storage, study_name: str, n_trials: int) -> tuple[int, int]:
    """Set an existing study's budget (running workers pick it up); (old, new)."""
    settings = dict(study_records.read_one(storage, study_name, "settings") or {})
    if not settings:
        raise HpoError(f"study {study_name!r} was not created by hpo; it has no budget to update")
    old = settings["n_trials"]
    settings["n_trials"] = n_trials
    study_records.write(storage, study_name, "settings", settings)
    return old, n_trials
