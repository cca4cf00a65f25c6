"""hpo-worker as a process: grid replay, chaining stages, pruning, the study-wide budget."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections import Counter

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from hpo.store import study_records
from hpo.store.storage import open_storage
from hpo.studies.study import StudyRequest, open_study
from search_spaces import DEFAULTS
from tests.conftest import BIN, REPO, run_cli

# One thread per worker: tiny nets train many times faster that way on a shared 2-core machine.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
TINY_ENV = {**ONE_THREAD, "HPO_STAGES": "tests.tiny_stages",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
QUICK = ("--epochs", "1", "--train-size", "200", "--devices", "cpu")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# A one-conv net frozen as the predecessor's best: small enough that any head trains quickly.
SMALL = {**DEFAULTS, "conv_layers": 1, "filters": [8], "fc_widths": [16], "lr": 0.0123,
         "batch_size": 64, "epochs": 1}

DIVERGE_STAGE = '''
from search_spaces import DEFAULTS, Stage

def suggest(trial, frozen):
    # Leaky ReLU keeps every unit alive, so SGD at lr 50 reliably ends in a NaN loss.
    return {**frozen, "conv_layers": 1, "filters": [8], "fc_widths": [16],
            "activation": "leaky_relu", "optimizer": "sgd", "batch_size": 32,
            "lr": trial.suggest_categorical("lr", [0.01, 0.02, 50.0])}

def grid(frozen):
    return {"lr": [0.01, 0.02, 50.0]}

STAGE = Stage(name="tiny_diverge", builds_on=None, description="SGD that may diverge",
              n_trials=3, epochs=1, suggest=suggest, grid=grid)
'''


def _worker(url: str, study: str, *args: str, env: dict | None = None):
    return run_cli("hpo-worker", "--study", study, "--storage", url, *QUICK, *args,
                   env={**ONE_THREAD, **(env or {})}, timeout=240)


def _load(url: str, name: str) -> optuna.Study:
    storage = optuna.storages.RDBStorage(url)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    finally:
        storage.engine.dispose()


def _ok(result) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


def _stage1_study(url: str, best_lr: float = 0.0123) -> int:
    """A finished stage1_layers study built directly in the storage; returns the best trial."""
    study = optuna.create_study(study_name="stage1_layers", storage=url, direction="maximize")
    distributions = {"conv_layers": IntDistribution(0, 4),
                     "lr": FloatDistribution(1e-3, 1e-1, log=True),
                     "batch_size": CategoricalDistribution([16, 32, 64, 128])}
    rows = [(0.31, 2, 0.05, 16), (0.52, 1, best_lr, 64), (0.40, 0, 0.002, 32)]
    for value, layers, lr, batch in rows:
        config = {**DEFAULTS, "conv_layers": layers, "filters": [8, 16][:layers],
                  "fc_widths": [16], "lr": lr, "batch_size": batch, "epochs": 1}
        study.add_trial(create_trial(
            value=value, params={"conv_layers": layers, "lr": lr, "batch_size": batch},
            distributions=distributions, user_attrs={"config": config}))
    # A pruned trial is never the one frozen, however well it did before it was stopped.
    study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: 0.9},
                                 user_attrs={"config": {**DEFAULTS, "lr": 0.099}}))
    return 1


def test_worker_grid_replays_each_point_once_from_defaults(sqlite_url):
    stderr = _ok(_worker(sqlite_url, "stage6_batchnorm", "--sampler", "grid"))
    assert "using the documented defaults" in stderr  # no stage5 study: it says so
    study = _load(sqlite_url, "stage6_batchnorm")
    assert study.user_attrs["frozen_from"]["defaults"] is True
    assert "stage5_regularization" in study.user_attrs["frozen_from"]["reason"]
    assert len(study.trials) == 4
    assert all(t.state in FINISHED for t in study.trials)
    points = Counter((t.params["conv_batchnorm"], t.params["fc_batchnorm"]) for t in study.trials)
    assert points == {(a, b): 1 for a in (False, True) for b in (False, True)}
    for t in study.trials:
        config = t.user_attrs["config"]
        assert (config["conv_batchnorm"], config["fc_batchnorm"]) == (
            t.params["conv_batchnorm"], t.params["fc_batchnorm"])
        assert config["filters"] == DEFAULTS["filters"] and config["lr"] == DEFAULTS["lr"]


def test_worker_freezes_best_trial_of_predecessor(sqlite_url):
    best = _stage1_study(sqlite_url)
    stderr = _ok(_worker(sqlite_url, "stage2_fc", "--n-trials", "2", "--sampler", "random",
                         "--seed", "1"))
    assert "documented defaults" not in stderr
    study = _load(sqlite_url, "stage2_fc")
    origin = study.user_attrs["frozen_from"]
    assert (origin["study"], origin["trial"], origin["value"]) == ("stage1_layers", best, 0.52)
    assert study_records.read(optuna.storages.RDBStorage(sqlite_url), "stage2_fc")["frozen_config"]["lr"] == 0.0123
    assert len(study.trials) == 2
    for t in study.trials:
        config = t.user_attrs["config"]
        assert (config["conv_layers"], config["filters"], config["lr"], config["batch_size"]) == (
            1, [8], 0.0123, 64)
        assert len(config["fc_widths"]) == t.params["fc_layers"] - 1  # what stage2 searches


def test_worker_freezes_from_export_file_over_predecessor(sqlite_url, tmp_path):
    _stage1_study(sqlite_url)
    exported = {"format": "hpo-export/1", "study": "elsewhere", "trial": 7, "value": 0.6,
                "config": {**SMALL, "conv_layers": 2, "filters": [4, 8], "lr": 0.0077,
                           "batch_size": 16}}
    path = tmp_path / "best.json"
    path.write_text(json.dumps(exported))
    _ok(_worker(sqlite_url, "fc_from_file", "--space", "stage2_fc", "--from", str(path),
                "--n-trials", "1", "--sampler", "random", "--seed", "0"))
    study = _load(sqlite_url, "fc_from_file")
    assert study.user_attrs["frozen_from"] == {"file": str(path), "study": "elsewhere", "trial": 7}
    assert study.user_attrs["stage"] == "stage2_fc"
    (trial,) = study.trials
    config = trial.user_attrs["config"]
    assert (config["filters"], config["lr"], config["batch_size"]) == ([4, 8], 0.0077, 16)


def test_worker_predecessor_without_finished_trial_falls_back_to_defaults(sqlite_url, caplog):
    storage = open_storage(sqlite_url)
    prev = optuna.create_study(study_name="stage1_layers", storage=storage)
    prev.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"config": SMALL}))
    with caplog.at_level(logging.WARNING):
        study, stage, settings, frozen = open_study(storage, StudyRequest("stage2_fc", None, {}))
    assert frozen == DEFAULTS
    assert study.user_attrs["frozen_from"]["defaults"] is True
    assert "'stage1_layers' has no finished trial" in study.user_attrs["frozen_from"]["reason"]
    assert any("documented defaults" in r.getMessage() for r in caplog.records)
    # Joining again keeps the stored base even when a predecessor has finished since.
    prev.add_trial(create_trial(value=0.9, user_attrs={"config": SMALL}))
    assert open_study(storage, StudyRequest("stage2_fc", None, {}))[3] == DEFAULTS
    storage.engine.dispose()


def test_worker_records_diverged_trial_as_pruned_and_goes_on(sqlite_url, tmp_path):
    (tmp_path / "hpo_test_diverge_stage.py").write_text(DIVERGE_STAGE)
    env = {"HPO_STAGES": "hpo_test_diverge_stage", "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    study = optuna.create_study(study_name="tiny_diverge", storage=sqlite_url,
                                direction="maximize")
    study.enqueue_trial({"lr": 50.0})
    study.enqueue_trial({"lr": 0.01})
    study.enqueue_trial({"lr": 0.02})
    _ok(_worker(sqlite_url, "tiny_diverge", "--n-trials", "3", "--pruner", "none", env=env))
    trials = _load(sqlite_url, "tiny_diverge").trials
    assert [t.params["lr"] for t in trials] == [50.0, 0.01, 0.02]
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert "diverged" in trials[0].user_attrs["end_reason"]


def _start_together(url: str, cwd, *args: str) -> list[tuple[int, str]]:
    command = [str(BIN / "hpo-worker"), "--study", "tiny", "--storage", url, *QUICK, *args]
    workers = [subprocess.Popen(command, env={**os.environ, **TINY_ENV}, cwd=cwd, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for _ in range(2)]
    return [(w.wait(timeout=240), w.stderr.read()) for w in workers]


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5])
def test_worker_budget_holds_with_two_workers_started_together(sqlite_url, tmp_path, n):
    # The tables exist already (as after `hpo create-study`): this test is about the budget and
    # the study's creation; the first start on a fresh file has a test of its own below.
    optuna.storages.RDBStorage(sqlite_url).engine.dispose()
    outputs = _start_together(sqlite_url, tmp_path, "--n-trials", str(n))
    for code, err in outputs:
        assert code == 0 and "error" not in err.lower(), \
            f"worker exited {code} when started alongside another:\n{err[-2000:]}"
    storage = optuna.storages.RDBStorage(sqlite_url)
    assert [s.study_name for s in storage.get_all_studies()] == ["tiny"]
    storage.engine.dispose()
    trials = _load(sqlite_url, "tiny").trials
    detail = [(t.number, t.state.name, t.user_attrs.get("pid"), t.user_attrs.get("end_reason"))
              for t in trials]
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == n, f"budget {n}, finished {len(finished)}: {detail}"
    # A trial created in the race after the budget filled gives way without training; one
    # that drew the point the other worker was already training is refused untrained (both
    # workers run with the same seed here).
    extra = [t for t in trials if t not in finished]
    assert all(t.state == TrialState.FAIL and ("over budget" in t.user_attrs["end_reason"]
                                               or "not trained again" in t.user_attrs["end_reason"])
               and "history" not in t.user_attrs for t in extra), detail
    assert len([t for t in extra if "over budget" in t.user_attrs["end_reason"]]) <= 1, detail


@pytest.mark.slow
def test_worker_two_workers_first_start_on_fresh_sqlite_file(sqlite_url, tmp_path):
    # Budget 0: each worker creates the tables and the study, then has nothing to do.
    outputs = _start_together(sqlite_url, tmp_path, "--n-trials", "0")
    for code, err in outputs:
        assert code == 0 and "error" not in err.lower(), \
            f"worker exited {code} when started alongside another on a fresh file:\n{err[-2000:]}"
    storage = optuna.storages.RDBStorage(sqlite_url)
    studies = storage.get_all_studies()
    storage.engine.dispose()
    assert [(s.study_name, s.user_attrs["stage"]) for s in studies] == [("tiny", "tiny")]
