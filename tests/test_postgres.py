"""Many workers on one PostgreSQL study, and a database that restarts mid-study."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from tests.workers import start_worker, trials, wait_for

pytestmark = pytest.mark.slow
QUICK = ("--epochs", "1", "--train-size", "300", "--seed", "0")


def test_four_workers_share_one_study_within_budget(pg_url, tmp_path):
    artifacts = str(tmp_path / "artifacts")
    logs = [tmp_path / f"w{i}.log" for i in range(4)]
    workers = [start_worker(pg_url, "shared", "--n-trials", "10", *QUICK, artifacts=artifacts,
                            log_path=log) for log in logs]
    codes = [w.wait(timeout=400) for w in workers]
    output = "\n".join(log.read_text() for log in logs)
    assert codes == [0, 0, 0, 0], output
    for bad in ("Traceback", "deadlock", "could not serialize", "DuplicatedStudyError"):
        assert bad not in output
    ts = trials(pg_url, "shared")
    numbers = [t.number for t in ts]
    assert len(numbers) == len(set(numbers)) == max(numbers) + 1  # unique and gap-free
    finished = [t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 10  # exactly the budget, across four processes
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    # A trial created in a race after the budget filled gives way without training, and one
    # that drew a point another worker was training (same seed) is refused untrained.
    for t in ts:
        if t.state == TrialState.FAIL:
            reason = t.user_attrs["end_reason"]
            assert reason.startswith("over budget") or "not trained again" in reason, t.user_attrs
            assert "history" not in t.user_attrs
    pids = {t.user_attrs["pid"] for t in finished}
    assert len(pids) >= 2, "the trials were not shared between workers"


def test_worker_rides_out_database_restart(throwaway_pg, tmp_path):
    url = throwaway_pg.url()
    log = tmp_path / "w.log"
    # trials of a few seconds, so the restart lands mid-study even on a fast machine
    worker = start_worker(url, "outage", "--n-trials", "4", "--epochs", "10", "--train-size", "1500",
                          "--seed", "0", artifacts=str(tmp_path / "a"), log_path=log)
    first = wait_for(lambda: [t for t in trials(url, "outage") if t.state == TrialState.COMPLETE],
                     180, "a first complete trial")[0]
    throwaway_pg.restart_after(6)  # the worker is mid-trial: reports and heartbeats fail
    assert worker.wait(timeout=400) == 0, log.read_text()
    text = log.read_text()
    assert "unreachable" in text and "reachable again" in text
    print("\nwhat the worker logged during the outage:\n" + "\n".join(
        line for line in text.splitlines() if "reachable" in line or "WARNING" in line))
    ts = trials(url, "outage")
    kept = [t for t in ts if t.number == first.number][0]
    assert kept.state == TrialState.COMPLETE and kept.value == first.value
    assert len([t for t in ts if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 4
    assert not [t for t in ts if t.state == TrialState.RUNNING]
