"""What hpo relies on in Optuna beyond its public API: these fail loudly if Optuna changes it.

The private uses in hpo/ (grep for ``optuna`` and ``._``):
* hpo/store/retrying_storage.py: ``optuna.storages._heartbeat.BaseHeartbeat``, subclassed so that Optuna's
  ``fail_stale_trials`` accepts RetryingStorage, and its abstract ``_get_stale_trial_ids``,
  overridden (what fail_stale_trials fails) and delegated to ``RDBStorage._get_stale_trial_ids``;
* hpo/store/retrying_storage.py: ``optuna.storages.get_storage`` ("only for internal usage") wrapping an
  RDBStorage in Optuna's trial cache (``_CachedStorage``), and that cache's ``remove_session``;
* hpo/store/retrying_storage.py: ``RDBStorage.grace_period`` (an undocumented attribute);
* hpo/runtime/reaper.py: ``optuna.storages._rdb.models`` (TrialModel, TrialHeartbeatModel columns);
* hpo/runtime/loop.py: the text of the warning Optuna gives when ``ask`` runs with storage heartbeats;
* hpo/store/tell.py: ``optuna.study._tell._tell_with_warning``, Study.tell without its re-read;
* hpo/studies/counts.py: ``optuna.storages._rdb.models`` (TrialModel, TrialValueModel columns).
"""

from __future__ import annotations

import datetime

import optuna
import pytest
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import TrialState

from hpo.runtime.reaper import Reaper
from hpo.store.retrying_storage import RetryingStorage
from hpo.store.storage import open_storage
from tests.workers import wait_for

pytestmark = pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")


def _trial_id(storage, study: optuna.Study, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)


def test_fail_stale_trials_asks_our_storage_which_trials_to_fail(sqlite_url):
    assert "_get_stale_trial_ids" in BaseHeartbeat.__abstractmethods__
    storage = open_storage(sqlite_url, heartbeat=1, grace=1)
    assert isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)
    study = optuna.create_study(study_name="s", storage=storage)
    study_id = storage.get_study_id_from_name("s")
    doomed = _trial_id(storage, study, study.ask().number)
    live = _trial_id(storage, study, study.ask().number)
    asked = []

    def spy(sid):
        asked.append(sid)
        return [doomed]

    storage.stale_trial_ids = spy
    optuna.storages.fail_stale_trials(study)
    assert asked == [study_id]
    assert storage.get_trial(doomed).state == TrialState.FAIL
    assert storage.get_trial(live).state == TrialState.RUNNING
    assert [t.state for t in study.get_trials()][-1] == TrialState.WAITING  # the retry callback

    # Without a reaper, RetryingStorage asks RDBStorage's own (private) check, which judges
    # only trials with a heartbeat row.
    storage.stale_trial_ids = None
    storage.record_heartbeat(live)
    wait_for(lambda: storage._get_stale_trial_ids(study_id) == [live], 30,
             "Optuna's own check to call the live trial stale once its heartbeat is old")


def test_reaper_reads_heartbeats_through_optunas_models(sqlite_url):
    from optuna.storages._rdb import models

    for model, columns in ((models.TrialModel, {"trial_id", "study_id", "state"}),
                           (models.TrialHeartbeatModel, {"trial_id", "heartbeat"})):
        assert columns <= set(model.__table__.columns.keys()), model
    assert models.TrialHeartbeatModel.__table__.c.trial_id.references(
        models.TrialModel.__table__.c.trial_id)

    storage = open_storage(sqlite_url, heartbeat=1, grace=1)
    study = optuna.create_study(study_name="s", storage=storage)
    study_id = storage.get_study_id_from_name("s")
    beating = _trial_id(storage, study, study.ask().number)
    storage.record_heartbeat(beating)  # as the worker's heartbeat thread does
    silent = storage.rdb.create_new_trial(study_id)  # RUNNING, no heartbeat
    number = study.ask().number
    study.tell(number, 1.0)
    finished = _trial_id(storage, study, number)
    now, _up_for, running = storage.call(Reaper(storage)._running_heartbeats, study_id)
    assert isinstance(now, datetime.datetime)
    beats = dict(running)
    assert set(beats) == {beating, silent} and finished not in beats
    assert beats[silent] is None
    assert isinstance(beats[beating], datetime.datetime)
    assert abs((now - beats[beating]).total_seconds()) < 60


def test_trial_cache_wraps_and_delegates_to_the_rdb_storage(sqlite_url):
    rdb = RDBStorage(sqlite_url)
    try:
        cached = optuna.storages.get_storage(rdb)
        assert cached is not rdb and isinstance(cached, BaseStorage)
        assert callable(cached.remove_session)
        study_id = cached.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
        assert rdb.get_study_name_from_id(study_id) == "s"
        trial_id = cached.create_new_trial(study_id)
        assert rdb.get_trial(trial_id).state == TrialState.RUNNING
    finally:
        rdb.engine.dispose()

    storage = open_storage(sqlite_url, heartbeat=1, grace=7)
    assert storage.rdb.grace_period == 7 and storage.grace_period() == 7.0
    assert isinstance(storage, RetryingStorage)
    assert optuna.storages.get_storage(storage) is storage  # not wrapped again: heartbeats show
    study = optuna.load_study(study_name="s", storage=storage)
    with pytest.warns(UserWarning, match="Heartbeat of storage"):  # filtered in hpo/runtime/loop.py
        study.ask()
    storage.remove_session()


def test_enqueued_parameters_wait_in_the_fixed_params_system_attribute():
    # hpo/runtime/duplicates.py reads a queued trial's parameters there to avoid training a point twice.
    study = optuna.create_study()
    study.enqueue_trial({"x": 3})
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0]
    assert waiting.params == {} and waiting.system_attrs["fixed_params"] == {"x": 3}


@pytest.mark.parametrize("told", [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL])
def test_tell_without_re_read_ends_trials_as_study_tell_does(sqlite_url, told):
    from hpo.store.tell import tell

    storage = open_storage(sqlite_url)
    study = optuna.create_study(storage=storage, direction="maximize")
    trial = study.ask()
    trial.report(0.25, 1)
    result = tell(study, trial, [0.5] if told == TrialState.COMPLETE else None, told, "why")
    stored = study.trials[0]
    assert (result.number, result.state, result.values) == (0, told, stored.values)
    assert stored.state == told and stored.datetime_complete is not None
    assert stored.values == {TrialState.COMPLETE: [0.5], TrialState.PRUNED: [0.25],
                             TrialState.FAIL: None}[told]
    # A trial failed meanwhile (a stale-trial check) is left as it is, and says so.
    again = tell(study, trial, [0.9], TrialState.COMPLETE)
    assert again.state == told and study.trials[0].values == stored.values
