"""Telling Optuna how a trial ended, without reading the whole trial back.

``Study.tell`` is Optuna's own telling (checks, the sampler's ``after_trial``, the state write)
followed by a full re-read of the trial, deep-copied, to return it: one trial read (six
statements and an ORM load) per trial that the worker loop does not need, and the largest part
of its cost over ``study.optimize``, which calls the telling step alone
(benchmarks/orchestration.py part a).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import TrialState


@dataclasses.dataclass(frozen=True)
class Told:
    """What a trial ended as, for the progress line (a FrozenTrial's fields it reads)."""

    number: int
    state: TrialState
    values: list[float] | None
    user_attrs: dict[str, Any]


def tell(study: optuna.Study, trial: optuna.Trial, values: Sequence[float] | None,
         state: TrialState, reason: str = "") -> Told:
    """Tell ``state`` (and ``values``); a trial finished already (failed by a stale-trial check)
    is left as it is, and the state it has is returned."""
    # Private, as a last resort: the telling step of Study.tell without its re-read, the same
    # function study.optimize calls (tests/test_optuna_contract.py fails if it changes).
    from optuna.study._tell import _tell_with_warning  # private: Study.tell minus its re-read

    told_state, told_values, _ = _tell_with_warning(
        study=study, trial=trial, value_or_values=values, state=state, skip_if_finished=True)
    return Told(trial.number, told_state, list(told_values) if told_values else None,
                {"end_reason": reason} if reason else {})
