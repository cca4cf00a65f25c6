"""Workers through PgBouncer (transaction pooling) with fewer server connections than workers:
the budget is finished, crash recovery still works, the server never sees more connections than
the pool, and a storage URL that points nowhere is one masked line."""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import threading
import time

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from tests.cluster import PgBouncer, free_port, pgbouncer  # noqa: F401  (fixture)
from tests.conftest import run_cli
from tests.workers import start_worker, trials, wait_for

pytestmark = pytest.mark.slow
WORKERS = 16
TRIALS = 32
# A worker's log must show none of these: a lost or refused connection, PgBouncer's queue
# timeout, a failed storage open, a traceback.
CONNECTION_TROUBLE = re.compile(r"OperationalError|InterfaceError|unreachable|server closed|"
                                r"query_wait_timeout|cannot open storage|Traceback|ERROR|"
                                r"pooler error", re.IGNORECASE)


class ConnectionMonitor(threading.Thread):
    """Samples, every 0.1 s, the server's client backends on one database (over a direct
    connection to another database, so the monitor itself is not counted) and PgBouncer's
    client connections to it."""

    def __init__(self, server: sqlalchemy.engine.Engine, bouncer: PgBouncer, database: str):
        super().__init__(daemon=True)
        self.server, self.bouncer, self.database = server, bouncer, database
        self.halt = threading.Event()
        self.server_peak = self.client_peak = 0
        self.samples: list[tuple[int, int]] = []
        self.error: Exception | None = None

    def run(self) -> None:
        query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db "
                                "AND backend_type = 'client backend'")
        try:
            with self.server.connect() as conn:
                while not self.halt.wait(0.1):
                    servers = conn.execute(query, {"db": self.database}).scalar()
                    pools = self.bouncer.show("POOLS")
                    clients = sum(p["cl_active"] + p["cl_waiting"] for p in pools
                                  if p["database"] == self.database)
                    self.samples.append((servers, clients))
                    self.server_peak = max(self.server_peak, servers)
                    self.client_peak = max(self.client_peak, clients)
        except Exception as e:  # reported by the test, not lost in a thread
            self.error = e

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        if self.error:
            raise self.error


def _trouble(log) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines()
            if CONNECTION_TROUBLE.search(line)]


def _pooler_errors(bouncer: PgBouncer) -> str:
    errors = [line for line in bouncer.log().splitlines() if "pooler error" in line]
    return f"\nPgBouncer's log: {len(errors)} pooler errors: {errors[:3]}" if errors else ""


def _running_trial_of(storage: str, workers: list[subprocess.Popen], logs: dict,
                      bouncer: PgBouncer):
    """The most recently started RUNNING trial of one of our workers, if any; fails at once
    when a worker has died instead (with its log lines and PgBouncer's errors)."""
    dead = [w for w in workers if w.poll() not in (None, 0)]
    if dead:
        raise AssertionError("\n".join(f"worker {w.pid} exited {w.returncode}: "
                                        f"{_trouble(logs[w.pid])[:3]}" for w in dead)
                             + _pooler_errors(bouncer))
    try:
        ts = trials(storage, "pooled")
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        # queued past PgBouncer's query_wait_timeout: the workers' logs say why
        return None
    running = [t for t in ts if t.state == TrialState.RUNNING and t.user_attrs.get("pid") in logs]
    return max(running, key=lambda t: t.datetime_start, default=None)


def _story(ts: list[optuna.trial.FrozenTrial], logs: dict, numbers: list[int]) -> str:
    """What happened to these trials: their states and end reasons, and every worker log line
    that names them."""
    named = re.compile(r"\btrials? (%s)\b" % "|".join(map(str, numbers)))
    lines = [f"{t.number}: {t.state.name} {t.user_attrs.get('end_reason', '')} "
             f"{ {k: v for k, v in t.system_attrs.items() if 'retr' in k or 'failed' in k} }"
             for t in ts if t.number in numbers]
    for pid, log in logs.items():
        lines += [f"[{pid}] {line}" for line in log.read_text(errors="replace").splitlines()
                  if named.search(line)]
    return "\n".join(lines)


def test_sixteen_workers_through_a_pool_of_ten(pgbouncer, pg_server, pg_url, tmp_path):
    database = sqlalchemy.engine.make_url(pg_url).database
    url = pgbouncer.url(database)
    monitor = ConnectionMonitor(pg_server, pgbouncer, database)
    monitor.start()
    started = time.monotonic()
    # All at once, as an array job or --jobs-per-device 16 starts them (more workers than
    # server connections opening the storage together); one CPU thread each.
    workers = [start_worker(url, "pooled", "--n-trials", str(TRIALS), "--epochs", "1",
                            artifacts=str(tmp_path / "artifacts"), log_path=tmp_path / f"w{i}.log",
                            OMP_NUM_THREADS="1")
               for i in range(WORKERS)]
    logs = {w.pid: tmp_path / f"w{i}.log" for i, w in enumerate(workers)}
    try:
        # Crash one worker mid-trial once trials are flowing.
        doomed = wait_for(lambda: _running_trial_of(url, workers, logs, pgbouncer), 240,
                          "a running trial", interval=0.5)
        victim = next(w for w in workers if w.pid == doomed.user_attrs["pid"])
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_at = datetime.datetime.now()  # Optuna's trial times are naive local times
        state = [t.state for t in trials(url, "pooled") if t.number == doomed.number]
        assert state == [TrialState.RUNNING], f"trial {doomed.number} ended before the kill"

        codes = {w.pid: w.wait(timeout=300) for w in workers if w is not victim}
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        monitor.stop()
    took = time.monotonic() - started

    for pid, code in codes.items():
        trouble = _trouble(logs[pid])
        assert code == 0 and not trouble, (f"worker {pid} exited {code}:\n" + "\n".join(
            trouble or logs[pid].read_text(errors="replace").splitlines()[-15:])
            + _pooler_errors(pgbouncer))
    # Workers started alike draw different points (hpo.studies.seeding): none is refused as a twin.
    refused = [line for log in logs.values() for line in log.read_text(errors="replace")
               .splitlines() if "not trained" in line]
    assert not refused, refused[:3]
    ts = trials(url, "pooled")
    states = [t.state for t in ts]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == TRIALS, states
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    # The killed worker's trial was failed after the grace period and run again by another.
    assert [t.state for t in ts if t.number == doomed.number] == [TrialState.FAIL]
    retry = [t for t in ts if t.system_attrs.get("failed_trial") == doomed.number]
    assert len(retry) == 1 and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED), \
        _story(ts, logs, [doomed.number] + [t.number for t in retry])
    assert retry[0].params == doomed.params and retry[0].user_attrs["pid"] != victim.pid
    rerun_after = (retry[0].datetime_start - killed_at).total_seconds()

    # PgBouncer held the server to its pool however many workers were connected to it: the
    # monitor counts only client backends of this database and is itself connected elsewhere;
    # the test's own reads go through PgBouncer and so are inside the pool too.
    assert monitor.samples, "the monitor took no sample"
    assert monitor.server_peak <= pgbouncer.pool, monitor.server_peak
    busy = [c for _, c in monitor.samples if c]
    print(f"\npgbouncer: {WORKERS} workers (1 SIGKILLed) finished {TRIALS} trials in {took:.0f}s; "
          f"server connections peak {monitor.server_peak} (pool {pgbouncer.pool}), "
          f"= {monitor.server_peak / WORKERS:.2f} per worker; client connections to PgBouncer "
          f"peak {monitor.client_peak} = {monitor.client_peak / WORKERS:.2f} per worker "
          f"(mean {sum(busy) / max(1, len(busy)) / WORKERS:.2f} while any); SIGKILLed trial "
          f"{doomed.number} re-run as trial {retry[0].number} {rerun_after:.0f}s after the kill")


def test_storage_url_that_points_nowhere_is_one_masked_line():
    url = f"postgresql+psycopg2://u:secret@127.0.0.1:{free_port()}/db"  # nothing listens there
    result = run_cli("hpo", "status", "--storage", url, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert len(output.strip().splitlines()) == 1, output
    assert "secret" not in output and "***" in output, output
    assert "Traceback" not in output


def test_missing_database_behind_pgbouncer_is_one_masked_line(pgbouncer):
    url = pgbouncer.url("no_such_database").replace("postgres@", "postgres:secret@")
    result = run_cli("hpo", "status", "--storage", url, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert len(output.strip().splitlines()) == 1, output
    assert "secret" not in output and "no_such_database" in output, output
    assert "Traceback" not in output
