"""Helpers for tests that drive real hpo-worker processes against a real database."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import optuna

from tests.conftest import BIN, REPO


def worker_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HPO_STAGES": "tests.tiny_stages",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def start_worker(storage: str, study: str, *args: str, artifacts: str, log_path=None,
                 **env: str) -> subprocess.Popen:
    command = [str(BIN / "hpo-worker"), "--study", study, "--space", "tiny", "--storage", storage,
               "--artifacts", artifacts, "--devices", "cpu", "--heartbeat", "1", "--grace", "6",
               *args]
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(command, env=worker_env(**env), stdout=out, stderr=subprocess.STDOUT,
                            cwd=REPO)


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def trials(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    storage_obj = optuna.storages.RDBStorage(storage)
    try:
        names = {s.study_name for s in storage_obj.get_all_studies()}
        if study not in names:
            return []
        return optuna.load_study(study_name=study, storage=storage_obj).get_trials(deepcopy=False)
    finally:
        storage_obj.engine.dispose()


def checkpointed_trial(storage: str, study: str, min_epoch: int):
    """The first RUNNING trial whose checkpoint has reached min_epoch, if any."""
    for t in trials(storage, study):
        pointer = t.user_attrs.get("checkpoint")
        if t.state == optuna.trial.TrialState.RUNNING and pointer and pointer["epoch"] >= min_epoch:
            return t
    return None


def populate_stage1_study(url: str, study: str) -> None:
    """A stage1_layers study (1 epoch, 200 images, budget 5): its warm start queued as trial 0,
    then two complete trials, for tests that check a refused command leaves what is stored
    exactly as it was."""
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import create_trial

    from hpo.store.storage import open_storage
    from hpo.studies.study import StudyRequest, open_study

    storage = open_storage(url)
    created, _, _, frozen = open_study(storage, StudyRequest(study, "stage1_layers", {"epochs": 1, "train_size": 200, "n_trials": 5}))
    batch = CategoricalDistribution([16, 32, 64, 128])
    for i, value in enumerate((0.2, 0.3)):
        created.add_trial(create_trial(value=value, params={"batch_size": 32},
                                       distributions={"batch_size": batch},
                                       user_attrs={"config": {**frozen, "seed": i}}))
    storage.dispose()
