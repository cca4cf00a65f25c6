"""Queueing a trial again after its worker died or stopped, and the limit on deaths.

A retry is a WAITING copy of the trial (parameters, user attributes and so its checkpoint,
intermediate values), numbered on, with Optuna's ``failed_trial``/``retry_history`` system
attributes (what ``RetryHeartbeatStaleTrialCallback`` writes) and ``hpo:deaths``: the numbers of
the trials in its line whose worker died. Only a death counts toward ``--max-retries``: a trial
failed by a stale-trial check is presumed dead, but a worker that comes back and finds its trial
failed takes that death back (``alive_after_reap``); a stop signal queues the retry itself and
counts nothing. A trial the limit leaves failed is recorded on its study (``left_failed``) for
``hpo status`` and the stage note. The warm start (the configuration the stage inherited) is
queued again whatever its count: the stage must not finish without it.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

MAX_RETRIES = 3  # default --max-retries: a trial whose worker died 4 times is left failed
DEATHS = "hpo:deaths"  # trial system attribute: numbers in its retry line whose worker died
REAPED_ALIVE = "hpo:reaped_alive"  # trial system attribute: numbers reaped while their worker lived
LEFT_FAILED = "hpo:left_failed:"  # study system attribute prefix, + the trial's number


def queue_retry(study: optuna.Study, trial: FrozenTrial, deaths: list[int],
                reaped_alive: list[int] | None = None) -> None:
    """Queue ``trial`` again as a waiting trial (Optuna's retry, plus the death count)."""
    attrs: dict[str, Any] = {"failed_trial": trial.number, **trial.system_attrs}
    attrs["retry_history"] = [*attrs.get("retry_history", []), trial.number]
    attrs[DEATHS] = deaths
    if reaped_alive:
        attrs[REAPED_ALIVE] = reaped_alive
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs=trial.user_attrs, system_attrs=attrs,
        intermediate_values=trial.intermediate_values))


def queue_stopped(study: optuna.Study, trial: FrozenTrial) -> None:
    """The retry of a trial its own worker stopped (a signal): no death counted."""
    queue_retry(study, trial, list(trial.system_attrs.get(DEATHS, [])),
                trial.system_attrs.get(REAPED_ALIVE))


class RetryStale:
    """The storage's stale-trial callback: the trial's worker is presumed dead. ``storage`` is
    set by hpo.store.storage once it exists (the callback is given to the storage it writes to)."""

    def __init__(self, max_retries: int = MAX_RETRIES):
        self.max_retries = max_retries
        self.storage = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        log.info("trial %d of study %r failed: its heartbeat is late", trial.number,
                 study.study_name)
        deaths = [*trial.system_attrs.get(DEATHS, []), trial.number]
        if len(deaths) > self.max_retries:
            if "warm_start" not in trial.user_attrs:
                log.warning("trial %d of study %r not queued again: its worker died %d times "
                            "(--max-retries %d)", trial.number, study.study_name, len(deaths),
                            self.max_retries)
                record_left_failed(self.storage, study, trial.number, len(deaths),
                                   self.max_retries)
                return
            log.warning("trial %d of study %r is the stage's warm start: queued again although "
                        "its worker died %d times (--max-retries %d)", trial.number,
                        study.study_name, len(deaths), self.max_retries)
        queue_retry(study, trial, deaths, trial.system_attrs.get(REAPED_ALIVE))
        log.info("trial %d of study %r queued again", trial.number, study.study_name)


def record_left_failed(storage, study: optuna.Study, number: int, deaths: int | None,
                       max_retries: int | None) -> None:
    """Mark (or, with ``deaths`` None, unmark) trial ``number`` as left failed by the limit."""
    value = None if deaths is None else {"deaths": deaths, "max_retries": max_retries}
    storage.set_study_system_attr(storage.get_study_id_from_name(study.study_name),
                                  f"{LEFT_FAILED}{number}", value)
    if value is not None:
        _note_left_failed(study, number, deaths, max_retries)


def left_failed(system_attrs: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """{trial number: {"deaths", "max_retries"}} of a study's trials the limit left failed."""
    return {int(k[len(LEFT_FAILED):]): v for k, v in system_attrs.items()
            if k.startswith(LEFT_FAILED) and v}


def left_failed_line(number: int, record: dict[str, Any]) -> str:
    return (f"trial {number} left failed: its worker died {record['deaths']} times "
            f"(--max-retries {record['max_retries']})")


def _note_left_failed(study: optuna.Study, number: int, deaths: int, max_retries: int) -> None:
    """Add a line to the study's dashboard note; a failure is logged, never raised."""
    try:
        from optuna_dashboard import get_note, save_note

        line = f"**{left_failed_line(number, {'deaths': deaths, 'max_retries': max_retries})}.**"
        save_note(study, f"{get_note(study).rstrip()}\n\n{line}\n")
    except Exception as e:
        log.warning("study %r: could not add to the dashboard note (%s)", study.study_name, e)


def alive_after_reap(storage, study: optuna.Study, trial_id: int) -> None:
    """This process's trial was failed by a stale-trial check while it lived: take the death
    back from its retry, or queue it again where the limit left it failed."""
    study_id = storage.get_study_id_from_name(study.study_name)
    mine = storage.get_trial(trial_id)
    log.warning("trial %d of study %r was failed by a stale-trial check while its worker was "
                "alive; its retry re-runs it and does not count that as a death", mine.number,
                study.study_name)
    for other in storage.get_all_trials(study_id, deepcopy=False):
        if mine.number not in other.system_attrs.get("retry_history", []):
            continue
        if other.state.is_finished():
            continue  # its retry already ended: nothing left to count
        deaths = [n for n in other.system_attrs.get(DEATHS, []) if n != mine.number]
        alive = [*other.system_attrs.get(REAPED_ALIVE, []), mine.number]
        other_id = storage.get_trial_id_from_study_id_trial_number(study_id, other.number)
        try:
            storage.set_trial_system_attr(other_id, DEATHS, deaths)
            storage.set_trial_system_attr(other_id, REAPED_ALIVE, alive)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        return
    if mine.number in left_failed(storage.get_study_system_attrs(study_id)):
        deaths = [n for n in mine.system_attrs.get(DEATHS, []) if n != mine.number]
        queue_retry(study, mine, deaths, [*mine.system_attrs.get(REAPED_ALIVE, []), mine.number])
        record_left_failed(storage, study, mine.number, None, None)
        log.warning("trial %d of study %r queued again: the retry limit counts deaths only",
                    mine.number, study.study_name)
