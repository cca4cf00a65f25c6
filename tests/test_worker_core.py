"""The worker loop, budget and study set-up in-process, on a real SQLite database: the budget is
the study's, a stop signal never loses a retry, joiners wait for the set-up, precision is a study
setting. Training is stood in for by a runner that returns the outcome the test needs."""

from __future__ import annotations

import threading

import optuna
import pytest
from optuna.trial import TrialState

from hpo.store import study_records
from hpo.studies.budget import stored_budget, tally
from hpo.errors import HpoError
from hpo.runtime.heartbeat import Heartbeat
from hpo.runtime.loop import WorkerLoop
from hpo.runtime.reaper import Reaper
from hpo.runtime.runner import Ending, Outcome
from hpo.store.storage import open_storage
from hpo.studies.budget import update_budget
from hpo.studies.study import CREATED_BY, StudyRequest, open_study
from tests.workers import wait_for

FLAGS = {"dataset": None, "epochs": 1, "train_size": None, "val_fraction": None, "seed": None,
         "n_trials": None, "sampler": "random", "pruner": "none", "objectives": None,
         "precision": None, "matmul_precision": None, "deterministic": None}


@pytest.fixture
def tiny_stages(tiny_stage_env):
    return tiny_stage_env


class ScriptedRunner:
    """Suggests the tiny stage's params, then ends each trial as told by ``endings``."""

    def __init__(self, endings, gate: threading.Event | None = None):
        self.endings, self.gate, self.started = list(endings), gate, threading.Event()

    def run(self, trial, queued=True):
        trial.suggest_float("lr", 0.01, 0.1, log=True)
        trial.set_user_attr("checkpoint", {"artifact_id": "ck", "epoch": 1})
        self.started.set()
        if self.gate is not None:
            self.gate.wait(60)
        ending = self.endings.pop(0) if self.endings else Ending.COMPLETE
        return Outcome(ending, ending.value, [0.5] if ending is Ending.COMPLETE else None)


def _loop(storage, study, runner, stop=None):
    heartbeat = Heartbeat(storage)
    return WorkerLoop(study, storage, runner, lambda: stored_budget(storage, study.study_name), Reaper(storage),
                      heartbeat, stop or threading.Event(), wait_interval=0.2)


def _open(url, n_trials=None, **flags):
    storage = open_storage(url, heartbeat=1, grace=30)
    study, _, settings, _ = open_study(storage, StudyRequest("s", "tiny", {**FLAGS, "n_trials": n_trials, **flags}))
    return storage, study, settings


def test_budget_is_stored_and_a_worker_with_another_budget_is_refused(sqlite_url, tiny_stages):
    # Defect 8: --n-trials was per worker and never stored; two workers ran two budgets.
    storage, study, settings = _open(sqlite_url, n_trials=2)
    assert settings.n_trials == 2 and stored_budget(storage, "s") == 2
    with pytest.raises(HpoError) as refused:
        _open(sqlite_url, n_trials=5)
    message = str(refused.value)
    assert "2" in message and "5" in message and "--update" in message and "\n" not in message
    _, _, joined = _open(sqlite_url)  # no --n-trials: the study's budget
    assert joined.n_trials == 2


def test_raised_budget_is_honoured_by_a_running_worker(sqlite_url, tiny_stages):
    storage, study, _ = _open(sqlite_url, n_trials=1)
    gate = threading.Event()
    runner = ScriptedRunner([], gate=gate)
    loop = _loop(storage, study, runner)
    worker = threading.Thread(target=loop.run)
    worker.start()
    assert runner.started.wait(60)
    update_budget(open_storage(sqlite_url), "s", 3)  # hpo create-study --update, elsewhere
    gate.set()
    worker.join(120)
    assert not worker.is_alive()
    assert tally(study).counts[TrialState.COMPLETE] == 3


def test_stopped_trial_is_queued_again_before_it_is_failed(sqlite_url, tiny_stages):
    # Defect 9: the trial was failed first; in that gap a waiting worker saw a free budget slot,
    # started a fresh trial, and the retry then gave way to the budget: parameters never tried.
    storage, study, _ = _open(sqlite_url, n_trials=1)
    seen_at_fail = []
    real_set_state = storage.set_trial_state_values

    def spy(trial_id, state, values=None):
        changed = real_set_state(trial_id, state, values)
        if state == TrialState.FAIL:
            counts = tally(study)
            seen_at_fail.append((counts.counts[TrialState.WAITING], counts.left(1)))
        return changed

    storage.set_trial_state_values = spy
    stop = threading.Event()
    runner = ScriptedRunner([Ending.STOPPED])
    loop = _loop(storage, study, runner, stop)
    runner_run = runner.run

    def run_then_stop(trial, queued=True):  # the signal arrives mid-trial
        outcome = runner_run(trial, queued)
        stop.set()
        return outcome

    runner.run = run_then_stop
    loop.run()
    # At the moment the trial turned FAIL its retry was already queued, holding the only slot.
    assert seen_at_fail == [(1, 1)]
    (retry,) = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert retry.user_attrs["checkpoint"]["epoch"] == 1

    # Another worker waiting for a slot takes the retry, not a fresh trial.
    other = _loop(storage, study, ScriptedRunner([]))
    other.run()
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert [t.params for t in done] == [retry.params]
    assert not [t for t in study.get_trials() if t.user_attrs.get("end_reason", "").startswith("over budget")]


def test_joiner_waits_for_the_set_up_marker_then_checks_its_flags(sqlite_url, tiny_stages):
    # Defect 10: joiners tested frozen_config (written first), so a worker arriving mid-creation
    # ran with its own flags unchecked.
    storage = open_storage(sqlite_url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.set_user_attr(CREATED_BY, "hpo")
    study_records.write(storage, "s", "frozen_config", {"conv_layers": 1})  # creator mid-way
    reads = []
    real_get = storage.get_study_user_attrs

    def counting(study_id):
        reads.append(1)
        return real_get(study_id)

    joiner_storage = open_storage(sqlite_url)
    joiner_storage.get_study_user_attrs = counting
    result = {}

    def join():
        try:
            result["ok"] = open_study(joiner_storage, StudyRequest("s", "tiny", {**FLAGS, "n_trials": 5}))
        except HpoError as e:
            result["error"] = str(e)

    joiner = threading.Thread(target=join)
    joiner.start()
    wait_for(lambda: len(reads) >= 3, 30, "the joiner to poll for the set-up marker")
    settings = {"stage": "tiny", "dataset": "cifar10-sample", "epochs": 1, "train_size": None,
                "val_fraction": 0.1, "split_seed": 0, "seed": 0, "n_trials": 3,
                "sampler": "random", "pruner": "none", "objectives": "accuracy", "bf16": False,
                "matmul_precision": "highest"}
    study.set_user_attr("settings", settings)
    study.set_user_attr("stage", "tiny")  # the marker, last
    joiner.join(60)
    assert "ok" not in result, "the joiner ran with its own budget"
    assert "budget of 3" in result["error"] and "5" in result["error"]


def test_a_set_up_study_says_who_made_it_not_that_set_up_is_under_way(sqlite_url, tiny_stages):
    # Defect: every finished study kept the user attribute "setting_up: True" (the dashboard
    # and `optuna studies` showed it), though its set-up was long complete.
    storage, study, _ = _open(sqlite_url, n_trials=1)
    attrs = optuna.load_study(study_name="s", storage=storage).user_attrs
    assert attrs[CREATED_BY] == "hpo" and attrs["stage"] == "tiny"
    assert not [key for key, value in attrs.items() if "setting" in key or value is True]


def test_precision_is_a_study_setting_and_exported(sqlite_url, tiny_stages):
    # Defect 12: --bf16 was per worker, recorded nowhere; hpo train could not reproduce it.
    from hpo.views.export import trial_document

    storage, study, settings = _open(sqlite_url, n_trials=1, precision="bf16",
                                     matmul_precision="high", deterministic=True)
    assert (settings.precision, settings.matmul_precision, settings.deterministic) == \
        ("bf16", "high", True)
    _, _, joined = _open(sqlite_url)  # a worker without the flags gets the study's precision
    assert (joined.precision, joined.matmul_precision, joined.deterministic) == \
        ("bf16", "high", True)
    _, _, joined = _open(sqlite_url, precision="auto")  # auto: whatever the study decided
    assert joined.precision == "bf16"
    with pytest.raises(HpoError, match="matmul-precision"):
        _open(sqlite_url, matmul_precision="medium")
    with pytest.raises(HpoError, match="precision='bf16'; got 'fp32'"):
        _open(sqlite_url, precision="fp32")
    trial = study.ask()
    trial.set_user_attr("config", {"conv_layers": 1})
    study.tell(trial, 0.5)
    doc = trial_document(study, study.get_trials()[0], study_records.read(storage, "s"))
    assert (doc["precision"], doc["bf16"], doc["matmul_precision"], doc["deterministic"]) == \
        ("bf16", True, "high", True)


@pytest.mark.parametrize("native", [True, False])
def test_precision_auto_is_decided_once_at_creation_and_stored_concrete(
        sqlite_url, tiny_stages, monkeypatch, native):
    from hpo.training import precision

    asked = []

    def native_bf16(device):
        asked.append(device)
        return native, "stand-in device"

    monkeypatch.setattr(precision, "native_bf16", native_bf16)
    storage, _, settings = _open(sqlite_url)  # no flag: auto
    expected = "bf16" if native else "fp32"
    assert settings.precision == expected and len(asked) == 1
    assert study_records.read(storage, "s")["settings"]["precision"] == expected
    # A joiner on a device that decides otherwise keeps the study's choice; nobody asks again.
    monkeypatch.setattr(precision, "native_bf16", lambda device: (not native, "other device"))
    assert _open(sqlite_url)[2].precision == expected


@pytest.mark.parametrize("stored, expected", [({"bf16": True}, "bf16"), ({"bf16": False}, "fp32"),
                                              ({}, "fp32")])
def test_a_study_from_before_precision_keeps_what_it_ran(sqlite_url, tiny_stages, stored,
                                                         expected):
    from hpo.views.export import trial_document

    storage, study, _ = _open(sqlite_url, precision="fp32")
    settings = dict(study_records.read(storage, "s")["settings"])
    for key in ("precision", "deterministic"):
        settings.pop(key)
    study_records.write(storage, "s", "settings", {**settings, **stored})
    _, _, joined = _open(sqlite_url)
    assert (joined.precision, joined.deterministic) == (expected, False)
    if expected == "fp32":
        with pytest.raises(HpoError, match="precision='fp32'; got 'bf16'"):
            _open(sqlite_url, precision="bf16")
    trial = study.ask()
    trial.set_user_attr("config", {"conv_layers": 1})
    study.tell(trial, 0.5)
    doc = trial_document(study, study.get_trials()[0], study_records.read(storage, "s"))
    assert (doc["precision"], doc["deterministic"]) == (expected, False)


def test_multi_objective_study_refuses_a_pruner(sqlite_url, tiny_stages):
    # Defect 13 (second half): --pruner was silently ignored with several objectives.
    storage = open_storage(sqlite_url)
    with pytest.raises(HpoError, match="--pruner median is invalid with --objectives accuracy,time"):
        open_study(storage, StudyRequest("mo", "tiny", {**FLAGS, "pruner": "median", "objectives": "accuracy,time"}))
    assert "mo" not in {s.study_name for s in storage.get_all_studies()}
    _, _, settings = (None, None, open_study(storage, StudyRequest("mo", "tiny", {**FLAGS, "pruner": None, "objectives": "accuracy,time"}))[2])
    assert settings.pruner == "none"


def _predecessor_with_a_running_trial(url):
    storage = open_storage(url)
    pre = optuna.create_study(study_name="pre", storage=storage, direction="maximize")
    pre.add_trial(optuna.trial.create_trial(value=0.3, user_attrs={"config": {"lr": 0.03}}))
    running = pre.ask()
    return storage, pre, running


def test_stage_waits_for_its_predecessors_running_trials(sqlite_url, tiny_stages, monkeypatch,
                                                         caplog):
    # A stage started while its predecessor still ran used to freeze the best so far, silently.
    import hpo.studies.study

    monkeypatch.setattr(hpo.studies.freezing, "PREDECESSOR_POLL", 0.1)
    storage, pre, running = _predecessor_with_a_running_trial(sqlite_url)
    result = {}
    opener = threading.Thread(target=lambda: result.update(
        opened=open_study(storage, StudyRequest("next", "tiny", FLAGS, after="pre"))))
    with caplog.at_level("WARNING", logger="hpo.studies.freezing"):
        opener.start()
        wait_for(lambda: any("waiting for 'pre' to finish" in r.getMessage()
                             for r in caplog.records), 30, "the stage to say it waits")
        assert opener.is_alive() and "next" not in {s.study_name for s in storage.get_all_studies()}
        running.set_user_attr("config", {"lr": 0.05})
        pre.tell(running, 0.9)  # the predecessor's final best
        opener.join(30)
    frozen = result["opened"][3]
    assert frozen == {"lr": 0.05}


def test_freeze_best_so_far_freezes_now_and_says_so(sqlite_url, tiny_stages, caplog):
    storage, pre, running = _predecessor_with_a_running_trial(sqlite_url)
    with caplog.at_level("WARNING", logger="hpo.studies.freezing"):
        frozen = open_study(storage, StudyRequest("next", "tiny", FLAGS, after="pre", freeze_best_so_far=True))[3]
    assert frozen == {"lr": 0.03}
    assert any("--freeze-best-so-far" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("url_fixture", ["sqlite_url", "pg_url"])
def test_count_query_agrees_with_optunas_trial_list(url_fixture, request):
    # The loop counts trials with two queries on Optuna's schema (hpo/studies/counts.py); this fails if
    # Optuna's models change under it or the two ever disagree.
    from hpo.studies.counts import count_trials

    url = request.getfixturevalue(url_fixture)
    storage = open_storage(url)
    study = optuna.create_study(study_name="c", storage=storage, direction="maximize")
    for state, value in ((TrialState.COMPLETE, 0.4), (TrialState.COMPLETE, 0.7),
                         (TrialState.PRUNED, None), (TrialState.FAIL, None),
                         (TrialState.WAITING, None)):
        study.add_trial(optuna.trial.create_trial(state=state, value=value))
    study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=float("inf")))
    study.ask()  # RUNNING
    optuna.create_study(study_name="other", storage=storage).add_trial(
        optuna.trial.create_trial(value=5.0))  # another study's trials are not counted
    fast, public = count_trials(storage, storage.get_study_id_from_name("c")), tally(study)
    assert fast.counts == public.counts
    assert fast.best == 0.7 and public.best == float("inf")  # an infinite value is no best
