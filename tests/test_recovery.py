"""Crash recovery, stop signals and orphaned trials, with real processes on real PostgreSQL."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from optuna.trial import TrialState

from tests.workers import checkpointed_trial, start_worker, trials, wait_for

pytestmark = pytest.mark.slow
EPOCHS = 12
LONG = ("--epochs", str(EPOCHS), "--train-size", "1500", "--seed", "0")


def doomed_end(storage, number):
    return [t for t in trials(storage, "crash") if t.number == number][0].datetime_complete


def _by_state(storage, study, state):
    return [t for t in trials(storage, study) if t.state == state]


def _victims_checkpointed_trial(storage, victim_pid):
    """The victim's running trial, once it has a checkpoint of epoch 2 or later and the survivor
    is busy with a trial of its own; else None."""
    running = _by_state(storage, "crash", TrialState.RUNNING)
    mine = [t for t in running if t.user_attrs.get("pid") == victim_pid
            and (t.user_attrs.get("checkpoint") or {}).get("epoch", 0) >= 2]
    others = [t for t in running if t.user_attrs.get("pid") not in (None, victim_pid)]
    return mine[0] if mine and others else None


def test_sigkilled_worker_trial_is_requeued_and_resumed_from_checkpoint(pg_url, tmp_path):
    artifacts = str(tmp_path / "artifacts")
    # Both workers start together, so each holds a trial before either can use up the budget
    # (tiny trials take a second or two on a fast machine).
    victim = start_worker(pg_url, "crash", "--n-trials", "3", *LONG, artifacts=artifacts,
                          log_path=tmp_path / "victim.log")
    survivor = start_worker(pg_url, "crash", "--n-trials", "3", *LONG, artifacts=artifacts,
                            log_path=tmp_path / "survivor.log")
    wait_for(lambda: _victims_checkpointed_trial(pg_url, victim.pid), 180,
             "the victim to checkpoint a trial while the survivor runs its own")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed_at = time.monotonic()
    doomed = [t for t in _by_state(pg_url, "crash", TrialState.RUNNING)
              if t.user_attrs.get("pid") == victim.pid]
    assert len(doomed) == 1, "the victim's trial finished before the kill; lengthen LONG"
    doomed = doomed[0]
    checkpoint_epoch = doomed.user_attrs["checkpoint"]["epoch"]

    # Found and re-queued within the grace period (6 s) plus one reaper interval, while the
    # survivor is still busy with its own trial.
    def requeued():
        ts = trials(pg_url, "crash")
        return any(t.system_attrs.get("failed_trial") == doomed.number for t in ts)

    wait_for(requeued, 20, "the dead worker's trial to be re-queued")
    requeued_after = time.monotonic() - killed_at
    assert requeued_after < 20
    assert [t.state for t in trials(pg_url, "crash") if t.number == doomed.number] == [TrialState.FAIL]

    assert survivor.wait(timeout=300) == 0, (tmp_path / "survivor.log").read_text()
    retry = [t for t in trials(pg_url, "crash") if t.system_attrs.get("failed_trial") == doomed.number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert retry[0].params == doomed.params
    assert retry[0].user_attrs["resumed_from_epoch"] == checkpoint_epoch
    assert len(retry[0].user_attrs["history"]) == EPOCHS
    print(f"\nrecovery: re-queued {requeued_after:.1f}s after SIGKILL (grace 6 s); re-run started "
          f"{(retry[0].datetime_start - doomed_end(pg_url, doomed.number)).total_seconds():.1f}s "
          f"after the kill was detected; skipped {checkpoint_epoch} of {EPOCHS} epochs")
    assert not _by_state(pg_url, "crash", TrialState.RUNNING)


def test_orphan_without_heartbeat_is_failed_and_requeued(pg_url, tmp_path):
    # A trial whose process died before its first heartbeat: plain Optuna never fails it.
    storage = optuna.storages.RDBStorage(pg_url)
    study = optuna.create_study(study_name="orphans", storage=storage, direction="maximize")
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.1, log=True)})
    storage.engine.dispose()
    # The worker's own trial must outlast the grace period (6 s) by far, even on a fast machine.
    worker = start_worker(pg_url, "orphans", "--n-trials", "2", "--epochs", "60",
                          "--train-size", "1500", "--seed", "0",
                          artifacts=str(tmp_path / "a"), log_path=tmp_path / "w.log")
    started = time.monotonic()
    wait_for(lambda: any(t.system_attrs.get("failed_trial") == orphan.number
                         for t in trials(pg_url, "orphans")), 40, "the orphan to be re-queued")
    # the worker's own first trial is still running: recovery did not wait for it
    assert any(t.state == TrialState.RUNNING for t in trials(pg_url, "orphans"))
    assert time.monotonic() - started < 40
    assert worker.wait(timeout=300) == 0, (tmp_path / "w.log").read_text()
    states = {t.number: t.state for t in trials(pg_url, "orphans")}
    assert states[orphan.number] == TrialState.FAIL
    assert TrialState.RUNNING not in states.values()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_fails_and_requeues_current_trial_then_exits_zero(pg_url, tmp_path, signum):
    artifacts = str(tmp_path / "artifacts")
    worker = start_worker(pg_url, "stop", "--n-trials", "1", *LONG, artifacts=artifacts,
                          log_path=tmp_path / "w.log")
    running = wait_for(lambda: checkpointed_trial(pg_url, "stop", 1), 180, "a checkpointed trial")
    worker.send_signal(signum)
    assert worker.wait(timeout=60) == 0, (tmp_path / "w.log").read_text()
    ts = trials(pg_url, "stop")
    assert not [t for t in ts if t.state == TrialState.RUNNING]
    assert [t.state for t in ts if t.number == running.number] == [TrialState.FAIL]
    waiting = [t for t in ts if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["failed_trial"] == running.number
    assert waiting[0].user_attrs["checkpoint"]["epoch"] >= 1

    # The next worker picks the interrupted trial up where its checkpoint left it.
    again = start_worker(pg_url, "stop", "--n-trials", "1", *LONG, artifacts=artifacts,
                         log_path=tmp_path / "again.log")
    assert again.wait(timeout=300) == 0, (tmp_path / "again.log").read_text()
    done = [t for t in trials(pg_url, "stop") if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["resumed_from_epoch"] >= 1
