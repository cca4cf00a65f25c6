"""The stale-trial reaper: checked per study, back on after an outage, never fails a live trial."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.runtime.heartbeat import Heartbeat
from hpo.runtime.reaper import Reaper
from hpo.views.status import status_table
from hpo.store.retrying_storage import MAX_BACKOFF, DatabaseUnavailable
from hpo.store.storage import open_storage
from tests.workers import wait_for

pytestmark = pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")


def _dead_trial(study: optuna.Study, storage) -> int:
    """A RUNNING trial with one heartbeat and no worker beating for it any more: its id."""
    number = study.ask().number
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    storage.record_heartbeat(trial_id)
    return trial_id


def _states(study: optuna.Study) -> list[TrialState]:
    return [t.state for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)]


def _failed_and_queued_again(study: optuna.Study) -> bool:
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    return ([t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
            and RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[1]) == 0)


def test_stale_check_of_one_study_does_not_skip_the_next(sqlite_url):
    storage = open_storage(sqlite_url, heartbeat=1, grace=1)
    plain = open_storage(sqlite_url, heartbeat=1, grace=1)  # no Reaper: Optuna's own check
    studies = {name: optuna.create_study(study_name=name, storage=storage) for name in "ABCD"}
    for study in studies.values():
        _dead_trial(study, storage)
    judge = RDBStorage(sqlite_url, heartbeat_interval=1, grace_period=1)  # Optuna's verdict
    try:
        wait_for(lambda: all(judge._get_stale_trial_ids(storage.get_study_id_from_name(name))
                             for name in studies), 30, "all four trials to be stale")
    finally:
        judge.engine.dispose()

    reaper = Reaper(storage)
    reaper.reap(studies["A"])
    reaper.reap(studies["B"])  # right after A: a per-storage throttle skipped this one
    optuna.storages.fail_stale_trials(optuna.load_study(study_name="C", storage=plain))
    optuna.storages.fail_stale_trials(optuna.load_study(study_name="D", storage=plain))
    for name, study in studies.items():
        assert _failed_and_queued_again(study), (name, _states(study))


def test_reaping_resumes_after_a_storage_call_gave_up(throwaway_pg):
    storage = open_storage(throwaway_pg.url(), heartbeat=1, grace=2, outage_timeout=1)
    study = optuna.create_study(study_name="s", storage=storage)
    trial_id = _dead_trial(study, storage)
    reaper = Reaper(storage)
    throwaway_pg.stop()
    with pytest.raises(DatabaseUnavailable):
        storage.get_all_studies()
    throwaway_pg.start()

    def reaped() -> bool:
        reaper.reap(study, force=True)
        return storage.get_trial(trial_id).state == TrialState.FAIL

    # Quiet for the grace period plus the longest backoff after the outage, then reaping again.
    wait_for(reaped, storage.grace_period() + MAX_BACKOFF + 30, "the dead trial to be reaped",
             interval=0.5)
    assert _failed_and_queued_again(study), _states(study)


class SlowAskSampler(optuna.samplers.RandomSampler):
    """A sampler whose work at the start of each trial (in study.ask) takes until released, like
    a GP sampler over a long history."""

    def __init__(self):
        super().__init__(seed=0)
        self.asking, self.release = threading.Event(), threading.Event()

    def before_trial(self, study, trial):
        super().before_trial(study, trial)
        self.asking.set()
        self.release.wait(60)


def test_slow_ask_is_not_mistaken_for_a_dead_worker(sqlite_url):
    grace = 3
    storage = open_storage(sqlite_url, heartbeat=1, grace=grace)
    heartbeat = Heartbeat(storage)
    heartbeat.start()
    storage.on_claim = lambda trial_id, fresh: heartbeat.track(trial_id)  # as WorkerLoop does
    sampler = SlowAskSampler()
    study = optuna.create_study(study_name="slow", storage=storage, sampler=sampler)
    asked, errors = [], []

    def ask():
        try:
            trial = study.ask()
            trial.suggest_float("x", 0, 1)
            asked.append(trial.number)
        except BaseException as e:
            errors.append(e)

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    try:
        assert sampler.asking.wait(30), "study.ask never reached the sampler"
        other = open_storage(sqlite_url, heartbeat=1, grace=grace)  # another worker's view
        theirs = optuna.load_study(study_name="slow", storage=other)
        reaper = Reaper(other)
        until = time.monotonic() + grace + 2  # judged by the other worker for a grace and more
        while time.monotonic() < until:
            reaper.reap(theirs, force=True)
            assert _states(theirs) == [TrialState.RUNNING]
            time.sleep(0.25)
    finally:
        sampler.release.set()
        asker.join(30)
        heartbeat.stop()
    assert not errors, errors
    assert asked == [0] and _states(study) == [TrialState.RUNNING]


def test_heartbeat_thread_beats_soon_after_a_claim_and_not_for_a_trial_already_over(sqlite_url):
    storage = open_storage(sqlite_url, heartbeat=1, grace=2)  # first beat after 0.5 s at most
    study = optuna.create_study(study_name="beats", storage=storage)
    study_id = storage.get_study_id_from_name("beats")
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, study.ask().number)
           for _ in range(2)]
    reaper = Reaper(storage)

    def beats() -> dict:
        return dict(storage.call(reaper._running_heartbeats, study_id)[2])

    heartbeat = Heartbeat(storage)
    heartbeat.start()
    try:
        heartbeat.track(ids[0])
        heartbeat.track(None)  # over in microseconds: no beat is due for it
        heartbeat.track(ids[1])
        wait_for(lambda: beats()[ids[1]] is not None, 30, "the claimed trial's first heartbeat")
        assert beats()[ids[0]] is None  # its beat would have been due before the second's
    finally:
        heartbeat.stop()


def _failed_trial(study: optuna.Study, **attrs) -> optuna.trial.FrozenTrial:
    study.add_trial(optuna.create_trial(
        state=TrialState.FAIL, params={"x": 0.5},
        distributions={"x": optuna.distributions.FloatDistribution(0, 1)}, **attrs))
    return study.trials[-1]


@pytest.mark.parametrize("died_before, queued", [(0, True), (2, True), (3, False)])
def test_a_stale_trial_is_queued_again_until_its_worker_died_more_than_max_retries(
        sqlite_url, died_before, queued):
    from hpo.runtime.retries import DEATHS, MAX_RETRIES, RetryStale, left_failed

    assert MAX_RETRIES == 3  # the documented default of --max-retries
    storage = open_storage(sqlite_url)
    study = optuna.create_study(study_name="limit", storage=storage)
    # Stops in the line do not count: three stopped retries, then died_before deaths.
    history = list(range(3 + died_before))
    trial = _failed_trial(study, system_attrs={"retry_history": history,
                                               DEATHS: history[3:]})
    retry = RetryStale()
    retry.storage = storage
    retry(study, trial)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == int(queued)
    marked = left_failed(storage.get_study_system_attrs(storage.get_study_id_from_name("limit")))
    if queued:
        assert waiting[0].params == {"x": 0.5}
        assert waiting[0].system_attrs["retry_history"] == [*history, trial.number]
        assert waiting[0].system_attrs[DEATHS] == [*history[3:], trial.number]
        assert not marked
    else:
        assert marked == {trial.number: {"deaths": 4, "max_retries": 3}}
        from optuna_dashboard import get_note  # the stage note says so too

        assert f"trial {trial.number} left failed: its worker died 4 times" in get_note(study)
        status = status_table(storage)
        assert f"limit: trial {trial.number} left failed: its worker died 4 times " \
               "(--max-retries 3)" in status, status


def test_a_warm_start_whose_worker_died_past_the_limit_is_queued_again(sqlite_url):
    from hpo.runtime.retries import DEATHS, RetryStale

    storage = open_storage(sqlite_url)
    study = optuna.create_study(study_name="warm", storage=storage)
    source = {"study": "before", "trial": 3}
    trial = _failed_trial(study, user_attrs={"warm_start": source, "checkpoint": {"epoch": 2}},
                          system_attrs={"retry_history": [0, 1, 2], DEATHS: [0, 1, 2]})
    retry = RetryStale(max_retries=3)
    retry.storage = storage
    retry(study, trial)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].user_attrs == {"warm_start": source, "checkpoint": {"epoch": 2}}
    assert waiting[0].params == trial.params


def test_a_worker_alive_after_its_trial_was_reaped_takes_the_death_back(sqlite_url):
    from hpo.runtime.retries import DEATHS, REAPED_ALIVE, RetryStale, alive_after_reap, left_failed

    storage = open_storage(sqlite_url, heartbeat=1, grace=1)
    study = optuna.create_study(study_name="alive", storage=storage)
    study_id = storage.get_study_id_from_name("alive")
    retry = RetryStale(max_retries=0)  # the first death leaves a trial failed
    retry.storage = storage

    # Its retry waiting: the death comes off the retry's count.
    first = _failed_trial(study)
    RetryStale(max_retries=1).__call__(study, first)
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert waiting.system_attrs[DEATHS] == [first.number]
    alive_after_reap(storage, study, storage.get_trial_id_from_study_id_trial_number(
        study_id, first.number))
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    assert waiting.system_attrs[DEATHS] == [] and waiting.system_attrs[REAPED_ALIVE] == [0]

    # Left failed by the limit: queued again, and no longer shown as left failed.
    second = _failed_trial(study)
    retry(study, second)
    assert second.number in left_failed(storage.get_study_system_attrs(study_id))
    alive_after_reap(storage, study, storage.get_trial_id_from_study_id_trial_number(
        study_id, second.number))
    assert not left_failed(storage.get_study_system_attrs(study_id))
    again = [t for t in study.get_trials(states=(TrialState.WAITING,))
             if t.system_attrs["failed_trial"] == second.number]
    assert len(again) == 1 and again[0].system_attrs[DEATHS] == []


def test_heartbeat_notices_its_trial_failed_by_another_workers_check_and_not_its_own_tell(
        sqlite_url):
    storage = open_storage(sqlite_url, heartbeat=1, grace=2)
    study = optuna.create_study(study_name="lost", storage=storage)
    study_id = storage.get_study_id_from_name("lost")
    ids = [storage.get_trial_id_from_study_id_trial_number(study_id, study.ask().number)
           for _ in range(2)]
    other = open_storage(sqlite_url, heartbeat=1, grace=2)  # another worker's stale-trial check
    heartbeat = Heartbeat(storage)
    heartbeat.start()
    try:
        heartbeat.track(ids[0])
        other.set_trial_state_values(ids[0], TrialState.FAIL)
        wait_for(heartbeat.lost.is_set, 30, "the heartbeat to notice its trial was failed")
        heartbeat.track(ids[1])  # the next trial: not lost
        assert not heartbeat.lost.is_set()
        heartbeat.track(None)  # the worker tells its own end untracked (hpo.runtime.loop)
        storage.set_trial_state_values(ids[1], TrialState.FAIL)
        time.sleep(0)  # nothing to wait for: an untracked trial is never read
        assert not heartbeat.lost.is_set()
    finally:
        heartbeat.stop()
