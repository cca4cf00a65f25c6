"""TrialRunner: trial -> config -> fit, reporting and pruning, on the embedded sample, in-process,
driven by ask/tell as the worker loop drives it."""

from __future__ import annotations

import os
import socket
import warnings

import optuna
import pytest
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.trial import TrialState

from hpo.training.config import from_dict
from hpo.store.artifacts import ArtifactPublisher
from hpo.training.checkpoints import CheckpointStore
from hpo.runtime.loop import told_state
from hpo.studies.objectives import parse_objectives
from hpo.runtime.runner import TrialRunner
from hpo.runtime.trial_spec import TrialSpec
from hpo.studies.samplers import make_pruner
from hpo.studies.settings import Settings
from search_spaces import DEFAULTS, Stage, get_stage

# One conv layer of 8 filters and a 32-wide head: learns above chance in one epoch on 600 images.
# Leaky ReLU: no unit dies, so a huge learning rate reliably ends in a NaN loss.
TINY = {**DEFAULTS, "conv_layers": 1, "filters": [8], "fc_widths": [32], "batch_size": 32,
        "optimizer": "sgd", "lr": 0.01, "activation": "leaky_relu"}


def _lr_suggest(trial, frozen):
    return {**frozen, "lr": trial.suggest_float("lr", 1e-7, 100.0, log=True)}


LR_STAGE = Stage(name="lr_only", builds_on=None, description="lr of a tiny SGD net",
                 n_trials=4, epochs=3, suggest=_lr_suggest, grid=lambda frozen: {"lr": [0.01]})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets run many times faster on one thread, above all on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def store(tmp_path):
    return FileSystemArtifactStore(str(tmp_path))


def _study(pruner: str = "none", directions=("maximize",), storage=None) -> optuna.Study:
    return optuna.create_study(directions=list(directions), storage=storage,
                               pruner=make_pruner(Settings(stage="lr_only", pruner=pruner)))


class _Run:
    """What the worker loop does with a runner, minus the budget and the database."""

    def __init__(self, runner):
        self.runner = runner

    def __call__(self, study, n_trials):
        for _ in range(n_trials):
            trial = study.ask()
            outcome = self.runner.run(trial)
            state = told_state(outcome.ending)
            study.tell(trial, outcome.values if state == TrialState.COMPLETE else None, state=state)


def _objective(small_data, store, stage=LR_STAGE, frozen=TINY, epochs=2, objectives="accuracy",
               prunable=True):
    spec = TrialSpec(stage, frozen, epochs=epochs, seed=3,
                     objectives=parse_objectives(objectives),
                     prunable=prunable and objectives == "accuracy")
    import threading

    return _Run(TrialRunner(spec, small_data, CheckpointStore(store), ArtifactPublisher(store),
                            threading.Event()))


def test_runner_records_config_history_and_bookkeeping(small_data, store):
    storage = optuna.storages.InMemoryStorage()
    study = _study(storage=storage)
    study.enqueue_trial({"lr": 0.02})
    _objective(small_data, store)(study, 1)
    trial = study.trials[0]
    attrs = trial.user_attrs
    assert trial.state == TrialState.COMPLETE
    config = from_dict(attrs["config"])
    assert (config.lr, config.epochs, config.seed, config.filters) == (0.02, 2, 3, [8])
    history = attrs["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    # the last epoch's accuracy: what the published weights and hpo train give (defect 11)
    assert trial.value == history[-1]["val_acc"]
    assert trial.intermediate_values == {h["epoch"]: h["val_acc"] for h in history}
    assert attrs["gap"] == pytest.approx(history[-1]["train_acc"] - history[-1]["val_acc"])
    assert isinstance(attrs["params"], int) and attrs["params"] > 1000
    assert attrs["seconds"] > 0
    assert (attrs["device"], attrs["host"], attrs["pid"]) == ("cpu", socket.gethostname(),
                                                              os.getpid())
    assert "end_reason" not in attrs  # a trial that ran all its epochs: its state says it
    artifacts = optuna.artifacts.get_all_artifact_meta(trial, storage=storage)
    assert sorted(a.filename for a in artifacts) == [
        "config-trial0.json", "learning-curve-trial0.png", "model-trial0.pt"]


def test_runner_retry_keeps_its_originals_config_artifact_and_adds_none(small_data, store):
    # A retry inherits its original's user and system attributes, config artifact included.
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    storage = optuna.storages.InMemoryStorage()
    study = _study(storage=storage)
    study.enqueue_trial({"lr": 0.02})
    run = _objective(small_data, store)
    trial = study.ask()
    run.runner.stop.set()  # stopped at its first batch, as by SIGTERM
    assert run.runner.run(trial).ending.name == "STOPPED"
    RetryHeartbeatStaleTrialCallback()(study, study.trials[0])
    study.tell(trial, state=TrialState.FAIL)
    run.runner.stop.clear()
    run(study, 1)
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    names = sorted(a.filename for a in optuna.artifacts.get_all_artifact_meta(
        retry, storage=storage))
    assert names == ["config-trial0.json", "learning-curve-trial1.png", "model-trial1.pt"]


def test_runner_removes_its_checkpoint_when_the_trial_ends(small_data, store):
    study = _study()
    study.enqueue_trial({"lr": 0.02})
    _objective(small_data, store, epochs=2)(study, 1)
    pointer = study.trials[0].user_attrs["checkpoint"]  # written after epoch 1 of 2
    assert pointer["epoch"] == 1
    with pytest.raises(Exception):
        store.open_reader(pointer["artifact_id"])


def test_runner_median_pruner_stops_hopeless_trial_before_last_epoch(small_data, store):
    study = _study(pruner="median")
    for lr in (0.01, 0.02, 0.015):
        study.enqueue_trial({"lr": lr})
    study.enqueue_trial({"lr": 1e-6})  # stays at chance
    _objective(small_data, store, epochs=3)(study, 4)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED], \
        [(t.params, t.state.name, t.intermediate_values) for t in study.trials]
    hopeless = study.trials[3]
    assert len(hopeless.user_attrs["history"]) < 3
    assert "pruner" in hopeless.user_attrs["end_reason"]
    assert "gap" in hopeless.user_attrs


def test_runner_diverging_trial_is_pruned_with_reason(small_data, store):
    study = _study(pruner="none")
    study.enqueue_trial({"lr": 50.0})
    study.enqueue_trial({"lr": 0.01})
    _objective(small_data, store)(study, 2)
    diverged, after = study.trials
    assert diverged.state == TrialState.PRUNED
    assert diverged.user_attrs["end_reason"].startswith("diverged")
    assert "loss" in diverged.user_attrs["end_reason"]
    assert diverged.user_attrs["seconds"] > 0  # the epoch that diverged was trained
    assert after.state == TrialState.COMPLETE  # the study goes on


def test_runner_impossible_geometry_is_refused_without_training(small_data, store):
    # Told FAIL, which the budget does not count (issue 10: an impossible map neither trains
    # nor uses up the budget).
    stage4 = get_stage("stage4_conv")
    frozen = {**TINY, "conv_layers": 4, "filters": [8, 8, 8, 8]}
    study = _study(pruner="none")
    study.enqueue_trial({"kernel_size": 7, "stride": 2, "padding": 0, "pool": "max"})
    study.enqueue_trial({"kernel_size": 3, "stride": 1, "padding": 1, "pool": "max"})
    _objective(small_data, store, stage=stage4, frozen=frozen, epochs=1)(study, 2)
    impossible, possible = study.trials
    assert impossible.state == TrialState.FAIL
    assert "impossible" in impossible.user_attrs["end_reason"]
    assert "history" not in impossible.user_attrs and "config" not in impossible.user_attrs
    assert possible.state == TrialState.COMPLETE


def test_runner_never_trains_a_configuration_the_study_already_finished(small_data, store):
    study = _study(pruner="none")
    for lr in (0.02, 0.03, 0.02):
        study.enqueue_trial({"lr": lr})
    _objective(small_data, store, epochs=1)(study, 3)
    first, other, again = study.trials
    assert (first.state, other.state) == (TrialState.COMPLETE, TrialState.COMPLETE)
    assert again.state == TrialState.FAIL  # not counted against the budget
    assert "trial 0" in again.user_attrs["end_reason"]
    assert "history" not in again.user_attrs and "seconds" not in again.user_attrs


def test_runner_multi_objective_returns_accuracy_and_time(small_data, store):
    study = _study(directions=("maximize", "minimize"))
    study.enqueue_trial({"lr": 0.02})
    _objective(small_data, store, epochs=1, objectives="accuracy,time")(study, 1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    accuracy, seconds = trial.values
    assert accuracy == trial.user_attrs["history"][0]["val_acc"]
    assert seconds == pytest.approx(trial.user_attrs["seconds"], rel=0.01)


def test_runner_multi_objective_diverged_trial_is_pruned_and_counted(small_data, store):
    # Defect 13: it used to be FAIL, which the budget does not count, so studies overran it.
    study = _study(directions=("maximize", "minimize"))
    study.enqueue_trial({"lr": 50.0})
    _objective(small_data, store, epochs=1, objectives="accuracy,params")(study, 1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["end_reason"].startswith("diverged")


def test_runner_value_is_the_last_epochs_accuracy_not_the_best(small_data, store, monkeypatch):
    # Defect 11: the value was the best epoch's accuracy while the published weights (and what
    # hpo train re-creates) were the last epoch's.
    import hpo.runtime.runner
    from hpo.training.metrics import EpochMetrics, FitResult

    def fit_that_peaks_early(config, data, on_epoch=None, resume=None, bf16=False, stop=None,
                             between_batches=None, on_model=None):
        history = [EpochMetrics(1, 1.0, 0.5, 1.0, 0.55, 0.1, 0.01),
                   EpochMetrics(2, 0.9, 0.6, 1.2, 0.40, 0.1, 0.01)]
        model = torch.nn.Linear(1, 1)
        return FitResult("completed", "", history, 2, 0.2, model)

    monkeypatch.setattr(hpo.runtime.runner, "fit", fit_that_peaks_early)
    study = _study()
    study.enqueue_trial({"lr": 0.02})
    _objective(small_data, store)(study, 1)
    assert study.trials[0].value == 0.40


def test_runner_asks_the_pruner_while_training_goes_on_and_applies_a_late_decision(
        small_data, store):
    # The report and pruning check of epoch k run while epoch k+1 trains; a decision that
    # arrives even after training ended still prunes at epoch k, as a synchronous check would.
    import threading

    last_epoch_trained = threading.Event()

    class LatePruner(optuna.pruners.BasePruner):
        waited = None

        def prune(self, study, trial):
            if trial.last_step == 1:
                LatePruner.waited = last_epoch_trained.wait(60)
                return True
            return False

    study = optuna.create_study(direction="maximize", pruner=LatePruner())
    study.enqueue_trial({"lr": 0.02})
    spec = TrialSpec(LR_STAGE, TINY, epochs=3, seed=3, objectives=parse_objectives("accuracy"),
                     prunable=True)
    runner = TrialRunner(spec, small_data, CheckpointStore(store), ArtifactPublisher(store),
                         threading.Event(),
                         on_epoch=lambda trial, m: m.epoch == 3 and last_epoch_trained.set(),
                         overlap_reports=True)  # as on a GPU
    _Run(runner)(study, 1)
    trial = study.trials[0]
    assert LatePruner.waited is True, "the pruner's check held up training"
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # nothing reported after the decision
    assert [h["epoch"] for h in trial.user_attrs["history"]] == [1]
    assert "after epoch 1" in trial.user_attrs["end_reason"]


def test_a_trial_failed_under_the_runner_leaves_no_side_write_to_break_the_next(small_data,
                                                                               store):
    # Trial 0 is failed by a stale-trial check during its last epoch: its end-of-trial writes
    # fail. The next trial must not inherit them (it was once reported as reaped for them, and
    # left RUNNING without a heartbeat).
    import threading

    storage = optuna.storages.InMemoryStorage()
    study = _study(pruner="none", storage=storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    study.enqueue_trial({"lr": 0.02})
    study.enqueue_trial({"lr": 0.03})

    def reap_trial_0(trial, m):
        if trial.number == 0 and m.epoch == 2:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, 0)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)

    spec = TrialSpec(LR_STAGE, TINY, epochs=2, seed=3, objectives=parse_objectives("accuracy"),
                     prunable=True)
    runner = TrialRunner(spec, small_data, CheckpointStore(store), ArtifactPublisher(store),
                         threading.Event(), on_epoch=reap_trial_0)
    assert runner.run(study.ask()).ending.name == "REAPED"
    outcome = runner.run(study.ask())
    assert outcome.ending.name == "COMPLETE", outcome.reason


def test_two_fresh_twins_never_both_train_whichever_checks_second():
    # Defect: a trial gave way only to an earlier twin. Two workers drew one point; the later
    # trial checked while the earlier had not yet written its parameters and passed, then the
    # earlier checked and, its twin being later, passed too: both trained one configuration.
    from hpo.runtime.duplicates import already_trained

    study = _study()
    study.sampler = optuna.samplers.PartialFixedSampler({"lr": 0.02}, study.sampler)
    earlier, later = study.ask(), study.ask()
    for trial in (earlier, later):
        trial.suggest_float("lr", 1e-7, 100.0, log=True)
    # The second to check gives way, whichever it is: at most one of them trains.
    assert already_trained(earlier, {"lr": 0.02}, queued=False).number == later.number
    assert already_trained(later, {"lr": 0.02}, queued=False).number == earlier.number


def test_a_queued_trial_keeps_its_slot_against_later_twins_and_its_own_original():
    from hpo.runtime.duplicates import already_trained

    study = _study()
    study.enqueue_trial({"lr": 0.5}, skip_if_exists=False)
    queued = study.ask()
    study.sampler = optuna.samplers.PartialFixedSampler({"lr": 0.5}, study.sampler)
    fresh = study.ask()
    for trial in (queued, fresh):
        trial.suggest_float("lr", 1e-7, 100.0, log=True)
    assert already_trained(queued, {"lr": 0.5}, queued=True) is None
    assert already_trained(fresh, {"lr": 0.5}, queued=False).number == queued.number

    # Defect: a stopped worker queues its trial's retry before failing the original; a worker
    # that took the retry in that gap saw the original running with its parameters, and the
    # retry gave way to it: the point was lost.
    study.sampler = optuna.samplers.PartialFixedSampler({"lr": 0.07}, study.sampler)
    original = study.ask()
    original.suggest_float("lr", 1e-7, 100.0, log=True)
    with warnings.catch_warnings():  # experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback()(  # what the loop does on a stop
            study, next(t for t in study.get_trials() if t.number == original.number))
    retry = study.ask()
    assert retry.params == {"lr": 0.07}
    assert already_trained(retry, {"lr": 0.07}, queued=True) is None


def test_runner_out_of_memory_frees_the_model_before_emptying_the_cache(small_data, store,
                                                                       monkeypatch):
    # Defect: empty_cache() ran inside the except block, whose traceback still held the model
    # and activations: nothing was freed, and the next job on the GPU ran out in turn.
    import types
    import weakref

    import hpo.runtime.runner

    class Activations:
        pass

    held = []

    def fit_that_runs_out(config, data, *args, **kwargs):
        activations = Activations()  # what the failing step's frames keep alive
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    alive_when_emptied = []
    monkeypatch.setattr(hpo.runtime.runner, "fit", fit_that_runs_out)
    monkeypatch.setattr(torch.cuda, "empty_cache",
                        lambda: alive_when_emptied.append(held[0]() is not None))
    gpu_data = types.SimpleNamespace(device=torch.device("cuda", 0),
                                     image_size=small_data.image_size)
    spec = TrialSpec(LR_STAGE, TINY, epochs=2, seed=3, objectives=parse_objectives("accuracy"),
                     prunable=False)
    import threading

    runner = TrialRunner(spec, gpu_data, CheckpointStore(store), ArtifactPublisher(store),
                         threading.Event(), overlap_reports=False)
    study = _study()
    study.enqueue_trial({"lr": 0.02})
    outcome = runner.run(study.ask())
    assert outcome.ending.name == "FAILED" and "out of memory on cuda:0" in outcome.reason
    assert alive_when_emptied == [False]


class _CountingStore(FileSystemArtifactStore):
    def __init__(self, root, release=None):
        super().__init__(root)
        self.writes, self.release = [], release

    def write(self, artifact_id, content_body):
        if self.release is not None:
            assert self.release.wait(60)
        self.writes.append(artifact_id)
        super().write(artifact_id, content_body)


@pytest.mark.parametrize("seconds, saved", [(0.0, 3), (3600.0, 0)])
def test_runner_checkpoints_at_most_every_n_seconds(small_data, tmp_path, seconds, saved):
    import threading

    counting = _CountingStore(str(tmp_path / "a"))
    spec = TrialSpec(LR_STAGE, TINY, epochs=4, seed=3, objectives=parse_objectives("accuracy"),
                     prunable=False, checkpoint_seconds=seconds)
    runner = TrialRunner(spec, small_data, CheckpointStore(counting), ArtifactPublisher(counting),
                         threading.Event())
    study = _study()
    study.enqueue_trial({"lr": 0.02})
    _Run(runner)(study, 1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert len([w for w in counting.writes if w.startswith("checkpoint-")]) == saved


def test_runner_takes_no_checkpoint_while_the_last_is_still_written(small_data, tmp_path):
    # Defect: a slow writer let snapshots pile up in memory, one per epoch.
    import threading

    release = threading.Event()
    counting = _CountingStore(str(tmp_path / "a"), release)
    spec = TrialSpec(LR_STAGE, TINY, epochs=4, seed=3, objectives=parse_objectives("accuracy"),
                     prunable=False)
    checkpoints = CheckpointStore(counting)
    snapshots = []
    real_save = checkpoints.save_in_background
    checkpoints.save_in_background = lambda *a, **k: snapshots.append(a[0]) or real_save(*a, **k)
    runner = TrialRunner(spec, small_data, checkpoints, ArtifactPublisher(FileSystemArtifactStore(
        str(tmp_path / "b"))), threading.Event(),
        on_epoch=lambda trial, m: release.set() if m.epoch == 3 else None)
    study = _study()
    study.enqueue_trial({"lr": 0.02})
    _Run(runner)(study, 1)
    assert study.trials[0].state == TrialState.COMPLETE
    assert len(snapshots) == 1  # epoch 1's; epochs 2 and 3 found it still being written
    assert len(counting.writes) == 1


def test_runner_refuses_a_planted_checkpoint_and_trains_from_scratch(small_data, store, tmp_path,
                                                                     caplog):
    # Issue 25, item 4: a file planted in the shared artifact folder ran code in every worker
    # that resumed the trial it pointed to.
    import io
    import logging

    from tests.test_checkpoints import RunsCode

    marker = tmp_path / "ran"
    buffer = io.BytesIO()
    torch.save({"config": {}, "model": RunsCode(marker)}, buffer)
    buffer.seek(0)
    store.write("checkpoint-planted", buffer)
    study = _study()
    study.enqueue_trial({"lr": 0.02},
                        user_attrs={"checkpoint": {"artifact_id": "checkpoint-planted", "epoch": 1}})
    with caplog.at_level(logging.WARNING):
        _objective(small_data, store)(study, 1)
    trial = study.trials[0]
    assert not marker.exists()
    assert trial.state == TrialState.COMPLETE and "resumed_from_epoch" not in trial.user_attrs
    assert len(trial.user_attrs["history"]) == 2  # both epochs trained here
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "checkpoint-planted" in refused[0] and "\n" not in refused[0]
