"""Nothing lost under faults: real workers, real kills, a real PostgreSQL stopped and started."""

from __future__ import annotations

import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from hpo.runtime.reaper import Reaper
from hpo.runtime.retries import DEATHS
from hpo.views.status import status_table
from hpo.store.storage import open_storage
from tests.faults import Plan, format_ledger, run
from tests.workers import start_worker, trials, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(
    "ignore:Heartbeat of storage", "ignore::optuna.exceptions.ExperimentalWarning")]
LONG = ("--epochs", "60", "--train-size", "1500", "--seed", "0", "--grace", "3")


def test_a_chain_under_seeded_kills_stops_and_database_outages_loses_nothing(tmp_path):
    plan = Plan()
    result = run(plan, seed=1, workdir=tmp_path)
    print("\n" + format_ledger(result))
    assert result["finished"]
    # The faults land at points of the chain's progress, so every one lands on any machine.
    assert len(result["faults"]) == plan.faults, "the chain finished before the faults landed"
    assert not result["problems"], format_ledger(result)


def _running_pids(url: str, study: str) -> dict[int, int]:
    return {t.user_attrs.get("pid"): t.number for t in trials(url, study)
            if t.state == TrialState.RUNNING and t.user_attrs.get("pid")}


def test_database_down_longer_than_grace_fails_no_trial_of_a_live_worker(throwaway_pg, tmp_path):
    url, grace = throwaway_pg.url(), 3
    workers = [start_worker(url, "outage", "--n-trials", "2", *LONG,
                            artifacts=str(tmp_path / "a"), log_path=tmp_path / f"w{i}.log")
               for i in range(2)]
    try:
        wait_for(lambda: len(_running_pids(url, "outage")) == 2, 240,
                 "both workers to train a trial")
        throwaway_pg.restart_after(grace + 4)
        # A checker that arrives after the restart (a worker started now) judges at once.
        storage = open_storage(url, heartbeat=1, grace=grace)
        study = optuna.load_study(study_name="outage", storage=storage)
        reaper = Reaper(storage)
        until = time.monotonic() + 2 * grace + 4
        while time.monotonic() < until:
            reaper.reap(study, force=True)
            states = [t.state for t in trials(url, "outage")]
            assert states == [TrialState.RUNNING] * 2, states
            time.sleep(0.25)
        storage.dispose()
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
    for i, worker in enumerate(workers):
        assert worker.wait(timeout=120) == 0, (tmp_path / f"w{i}.log").read_text()
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    assert "heartbeat is late" not in logs and "Traceback" not in logs


def test_a_trial_whose_worker_is_killed_four_times_stays_failed_and_is_shown(pg_url, tmp_path):
    storage = open_storage(pg_url, heartbeat=1, grace=3, max_retries=3)
    reaper = None
    for kill in range(4):
        worker = start_worker(pg_url, "doomed", "--n-trials", "1", *LONG,
                              artifacts=str(tmp_path / "a"), log_path=tmp_path / f"w{kill}.log")
        wait_for(lambda: worker.pid in _running_pids(pg_url, "doomed"), 240,
                 f"worker {kill} to train the trial")
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        study = optuna.load_study(study_name="doomed", storage=storage)
        reaper = reaper or Reaper(storage)

        def reaped():
            reaper.reap(study, force=True)
            return not [t for t in trials(pg_url, "doomed") if t.state == TrialState.RUNNING]

        wait_for(reaped, 60, f"the trial of kill {kill + 1} to be reaped", interval=0.5)
    ts = trials(pg_url, "doomed")
    assert [t.state for t in ts] == [TrialState.FAIL] * 4  # the last one not queued again
    assert ts[-1].system_attrs[DEATHS] == [0, 1, 2]
    shown = status_table(storage)
    assert "doomed: trial 3 left failed: its worker died 4 times (--max-retries 3)" in shown, shown
    storage.dispose()
