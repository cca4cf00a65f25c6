"""How far one PostgreSQL server carries the workers: the real storage path from 8-64 processes,
against the server directly and through PgBouncer (transaction pooling).

Each process is a worker without training: hpo.store.storage.open_storage (RetryingStorage with
heartbeat, as hpo-worker opens it), the study loaded with the sampler and pruner that
hpo.studies.samplers.make_sampler/make_pruner build for its stored settings (seed = slot, as
run_worker seeds them with --seed 0), then hpo.runtime.wiring.WiredWorker, the same wiring
hpo-worker runs: the start-up reap, hpo.runtime.progress, the per-process heartbeat and reaper
threads and hpo.runtime.loop.WorkerLoop (stale-trial check, budget and trial tally, ask, run,
tell). The runner is a stand-in: it makes the stage's three
suggestions (stage1_layers), then for each of ``--epochs`` epochs sleeps ``--trial-seconds /
--epochs`` (the training), reports, asks the pruner, and returns an hpo.runtime.outcome Outcome. What
run_worker does besides is left out: data loading, the artifact store, and the real runner's
own per-trial writes (user attributes, checkpoint pointers, artifact uploads); see ``--attrs``.
No process imports torch (hpo.runtime.loop and hpo.runtime.outcome do not); each reports whether it did.

All processes start together behind a barrier and run for ``--seconds`` of wall time. From the
window [barrier, barrier + seconds] each measurement reports: finished (complete + pruned)
trials per second; p50/p99 latency of study.ask() and of the loop's telling step (hpo.store.tell,
timed around the calls the loop makes); server connections to the study's database (pg_stat_activity, polled every 0.2 s
from the parent over a connection to another database; peak over the whole run, mean over the
window), backends waiting on a lock, and PgBouncer's client connections and queue; CPU time of
the database server (postmaster + all its children, exited backends included), of PgBouncer, of
the worker processes and of everything else, as shares of the machine's capacity (wall time x
CPUs, from /proc); database round trips (statements + commits), the time the workers waited in
them and the rows they moved, per finished trial for the ask / report / tell / loop steps, and
per process-minute for the heartbeat and reaper threads; how long the trial-number lock (Optuna
locks the study row to number a new trial) took; and errors: worker processes that failed, trials
left FAIL or RUNNING, connection trouble in the workers' logs, PgBouncer pooler errors. On a
small machine the workers compete with the database for the CPUs: read ``cpu`` before the
latencies, and ``db_ms_per_trial`` (database CPU per finished trial) for what a dedicated server
would need.

By default the database is a private PostgreSQL server started for the run (the installed
PostgreSQL's binaries, its own data folder and free port, PostgreSQL's default settings:
max_connections 100, fsync on), so that its CPU is this benchmark's alone and the workers cannot
take the connection slots of anything else using the machine's server; ``--pg URL`` uses an
existing server instead (its CPU is then the whole server's). PgBouncer is started per
measurement (``default_pool_size = max_db_connections = --pool``).

One JSON line per measurement, then a summary line. Usage (from the repo root):

    .venv/bin/python benchmarks/scale.py [--processes 8,16,32,64] [--modes direct,pgbouncer]
        [--seconds 20] [--trial-seconds 0.5] [--pool 10]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # search_spaces (and tests.pgserver) live at the repo root
    sys.path.insert(0, str(REPO_ROOT))

from _cpu import machine_cpu, postmaster_pid, process_cpu, server_cpu  # noqa: E402
from _db import count_round_trips, scratch_database  # noqa: E402
from _pgbouncer import PgBouncer  # noqa: E402

STUDY = "scale"
STAGE = "stage1_layers"  # three suggestions: conv_layers, lr, batch_size
BARRIER_TIMEOUT = 600  # 64 processes importing Optuna on 2 cores take a while
POLL = 0.2  # seconds between connection samples
# Worker log lines that mean connection trouble (as tests/test_pgbouncer.py looks for).
TROUBLE = re.compile(r"OperationalError|InterfaceError|unreachable|server closed|"
                     r"query_wait_timeout|too many clients|cannot open storage|Traceback|ERROR|"
                     r"pooler error", re.IGNORECASE)
TROUBLE_KINDS = ("cannot open storage", "too many clients", "query_wait_timeout", "server closed",
                 "unreachable", "pooler error", "set-up failed",
                 "worker failed")


# -- the worker process -------------------------------------------------------------------------

class _Tags(threading.local):
    tag: str | None = None


_tags = _Tags()


def _label() -> str:
    """Which step made a database round trip: the tagged call in progress, else the thread."""
    if _tags.tag:
        return _tags.tag
    name = threading.current_thread().name
    return {"hpo-heartbeat": "heartbeat", "hpo-reaper": "reap"}.get(name, "loop")


def _tagged(tag: str, fn, sink: list | None = None):
    """fn, with its round trips labelled ``tag`` and its (start, end) wall times in sink."""

    def call(*args, **kwargs):
        previous, _tags.tag = _tags.tag, tag
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            if sink is not None:
                sink.append((start, time.time()))
            _tags.tag = previous

    return call


class StandInRunner:
    """The stage's suggestions, then per epoch: sleep (the training), report, pruning check.
    Endings are hpo.runtime.runner Outcomes, as the real runner returns them to the loop."""

    def __init__(self, stage, epochs: int, trial_seconds: float, attrs: bool, on_epoch, sleeps):
        self.stage, self.epochs, self.attrs = stage, epochs, attrs
        self.epoch_seconds = trial_seconds / epochs
        self.on_epoch, self.sleeps = on_epoch, sleeps

    def run(self, trial, queued=True):
        import math
        import types

        import optuna

        from hpo.runtime.outcome import Ending, Outcome
        from search_spaces import DEFAULTS

        try:
            if self.attrs:  # what the real runner records when a trial starts
                for key, value in (("device", "cuda:0"), ("host", "node"), ("pid", os.getpid()),
                                   ("threads", 1)):
                    trial.set_user_attr(key, value)
            config = self.stage.suggest(trial, dict(DEFAULTS))
            if self.attrs:
                trial.set_user_attr("config", config)
            value = (0.7 - 0.1 * abs(config["conv_layers"] - 3)
                     - 0.05 * abs(math.log10(config["lr"]) + 2) + 0.01 * (config["batch_size"] == 64))
            history = []
            for epoch in range(1, self.epochs + 1):
                start = time.time()
                time.sleep(self.epoch_seconds)
                self.sleeps.append((start, time.time()))
                accuracy = value * epoch / self.epochs
                history.append({"epoch": epoch, "val_acc": accuracy})
                _tagged("report", trial.report)(accuracy, epoch)
                if self.attrs and epoch < self.epochs:  # the checkpoint pointer, every epoch
                    _tagged("report", trial.set_user_attr)("checkpoint", {"epoch": epoch})
                self.on_epoch(trial, types.SimpleNamespace(epoch=epoch, val_acc=accuracy))
                if _tagged("report", trial.should_prune)():
                    return Outcome(Ending.PRUNED, f"pruned after epoch {epoch}")
            if self.attrs:  # history, gap, seconds, params, end reason
                for key, item in (("history", history), ("gap", 0.01), ("seconds", 1.0),
                                  ("params", 12345), ("end_reason", "completed")):
                    trial.set_user_attr(key, item)
            return Outcome(Ending.COMPLETE, "completed", [value])
        except optuna.exceptions.UpdateFinishedTrialError:
            return Outcome(Ending.REAPED, "failed by a stale-trial check (heartbeat late)")


def _time_statements(label) -> collections.Counter:
    """Seconds this process spends waiting in cursor.execute (the round trip: network, queueing
    in PgBouncer, locks, the server's work) and rows it reads or writes, by label; the
    trial-number lock (the ``SELECT ... FOR UPDATE`` of the study row that Optuna's
    create_new_trial takes) also on its own."""
    import sqlalchemy

    seconds: collections.Counter = collections.Counter()

    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["scale_t0"] = time.perf_counter()  # one statement at a time per connection

    def after(conn, cursor, statement, parameters, context, executemany):
        elapsed = time.perf_counter() - conn.info.pop("scale_t0", time.perf_counter())
        where = label()
        seconds[where] += elapsed
        seconds[f"rows:{where}"] += max(cursor.rowcount, 0)  # rows read or written
        if "FOR UPDATE" in statement and "FROM studies" in statement:
            seconds["trial_number_lock"] += elapsed
            seconds["trial_number_lock_n"] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", before)
    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "after_cursor_execute", after)
    return seconds


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory since its exec (VmHWM; getrusage's maxrss would
    include the forked parent's before the exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _snapshot(counter: collections.Counter) -> dict:
    """A copy of a counter other threads may be adding keys to."""
    for _ in range(100):
        try:
            return dict(counter)
        except RuntimeError:
            continue
    return {}


def _worker(slot: int, url: str, sampler, pruner, cfg: dict, barrier, queue, log_path: str) -> None:
    """One worker process: the storage path of hpo.runtime.worker.run_worker with a stand-in runner."""
    import logging
    import warnings

    logging.basicConfig(filename=log_path, level=logging.WARNING,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    logging.captureWarnings(True)
    result: dict = {"slot": slot, "pid": os.getpid(), "error": None}
    counts = count_round_trips(label=_label)
    db_time = _time_statements(_label)
    asks: list = []
    tells: list = []
    sleeps: list = []
    setup_error = None
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.logging.disable_default_handler()
        optuna.logging.enable_propagation()  # Optuna's warnings into this worker's log
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        import hpo.runtime.loop  # imports no torch (hpo.runtime.outcome, not hpo.runtime.runner)
        from hpo.runtime.wiring import WiredWorker
        from hpo.store.storage import open_storage
        from search_spaces import get_stage

        stop = threading.Event()
        storage = open_storage(url, heartbeat=cfg["heartbeat"], grace=cfg["grace"],
                               outage_timeout=cfg["outage_timeout"])
        study = optuna.load_study(study_name=STUDY, storage=storage, sampler=sampler,
                                  pruner=pruner)
        # The worker hpo-worker runs (its start-up reap included), around the stand-in runner.
        worker = WiredWorker(storage, study, stop, cfg["epochs"],
                             wait_interval=max(1, cfg["heartbeat"]))
        worker.reaper.reap = _tagged("reap", worker.reaper.reap)  # the loop's and thread's checks
        if worker.finished():
            raise RuntimeError("the study's budget is spent")
        study.ask = _tagged("ask", study.ask, asks)
        loop_tell = hpo.runtime.loop.tell  # the loop's telling step (hpo.store.tell)

        def tell(study, trial, values, state, *args, **kwargs):
            try:
                return _tagged("tell", loop_tell, tells)(study, trial, values, state, *args,
                                                          **kwargs)
            finally:
                tells[-1] = (*tells[-1], state.name)

        hpo.runtime.loop.tell = tell
    except BaseException as e:  # reported; the process still joins the barrier
        setup_error = f"{type(e).__name__}: {e}"
        logging.getLogger("scale").exception("worker set-up failed")
    barrier.wait(BARRIER_TIMEOUT)
    released = time.time()
    counts.clear()
    db_time.clear()
    window: dict = {}
    db_window: dict = {}

    def freeze_counts() -> None:  # at the window's end
        window.update(_snapshot(counts))
        db_window.update(_snapshot(db_time))

    timer = threading.Timer(cfg["seconds"], freeze_counts)
    timer.start()
    try:
        if setup_error:
            result["error"] = setup_error
            return
        worker.deadline = time.monotonic() + cfg["seconds"]
        try:
            result["ran"] = worker.run(lambda on_epoch: StandInRunner(
                get_stage(STAGE), cfg["epochs"], cfg["trial_seconds"], cfg["attrs"], on_epoch,
                sleeps))
        finally:
            storage.dispose()
    except BaseException as e:
        result["error"] = f"{type(e).__name__}: {e}"
        logging.getLogger("scale").exception("worker failed")
    finally:
        timer.join()
        result.update(released=released, ended=time.time(), asks=asks, tells=tells,
                      sleeps=sleeps, counts_window=dict(window), counts_total=dict(counts),
                      torch_imported="torch" in sys.modules, max_rss_mb=_peak_rss_mb(),
                      db_time_window=dict(db_window), db_time_total=dict(db_time))
        queue.put(result)
        queue.close()
        queue.join_thread()
        sys.exit(1 if result["error"] else 0)


# -- the parent: database, PgBouncer, monitoring ------------------------------------------------

@contextlib.contextmanager
def private_server(max_connections: int):
    """A throwaway PostgreSQL server with PostgreSQL's default settings (fsync on) but for
    max_connections, on a free port; stopped and removed afterwards."""
    from tests.pgserver import ThrowawayPostgres

    class Server(ThrowawayPostgres):
        def start(self) -> None:  # tests' server runs with fsync off: not here
            options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                       f"-c max_connections={max_connections}")
            self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                      str(self.dir / "log"), "-w", "start")

    server = Server()
    try:
        yield server.url("postgres"), postmaster_pid(server.data)
    finally:
        server.close()


@contextlib.contextmanager
def existing_server(url: str):
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            data = conn.execute(sqlalchemy.text("SHOW data_directory")).scalar()
    finally:
        engine.dispose()
    yield url, postmaster_pid(data)  # None (no CPU figures) unless the server is local and ours


class Monitor(threading.Thread):
    """Samples, every POLL seconds: the server's client backends on one database (over a
    connection to another database), those active and those waiting on a lock; PgBouncer's
    client connections to it and how many of them wait for a server connection."""

    QUERY = ("SELECT count(*) FILTER (WHERE backend_type = 'client backend'), "
             "count(*) FILTER (WHERE state = 'active'), "
             "count(*) FILTER (WHERE wait_event_type = 'Lock') "
             "FROM pg_stat_activity WHERE datname = %s")

    def __init__(self, admin_url: str, database: str, bouncer: PgBouncer | None):
        super().__init__(daemon=True)
        import psycopg2
        import sqlalchemy

        url = sqlalchemy.engine.make_url(admin_url)
        self.conn = psycopg2.connect(host=url.host, port=url.port, user=url.username,
                                     password=url.password, dbname=url.database)
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.backend_pid = cur.fetchone()[0]  # left out of the server's CPU
        self.bouncer_conn = None
        if bouncer is not None:
            self.bouncer_conn = psycopg2.connect(host="127.0.0.1", port=bouncer.port,
                                                 user=bouncer.user, dbname="pgbouncer")
            self.bouncer_conn.autocommit = True
        self.database = database
        self.samples: list[tuple[float, int, int, int, int | None, int | None]] = []
        self.halt = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self.halt.wait(POLL):
                with self.conn.cursor() as cur:
                    cur.execute(self.QUERY, (self.database,))
                    conns, active, locked = cur.fetchone()
                clients = waiting = None
                if self.bouncer_conn is not None:
                    with self.bouncer_conn.cursor() as cur:
                        cur.execute("SHOW POOLS")
                        names = [c.name for c in cur.description]
                        pools = [dict(zip(names, row)) for row in cur.fetchall()]
                    mine = [p for p in pools if p["database"] == self.database]
                    clients = sum(p["cl_active"] + p["cl_waiting"] for p in mine)
                    waiting = sum(p["cl_waiting"] for p in mine)
                self.samples.append((time.time(), conns, active, locked, clients, waiting))
        except Exception as e:  # reported with the measurement
            self.error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=10)
        self.conn.close()
        if self.bouncer_conn is not None:
            self.bouncer_conn.close()


def _cpu_snapshot(postmaster: int | None, exclude: tuple[int, ...], bouncer: PgBouncer | None,
                  workers: list[int]) -> dict:
    busy, capacity = machine_cpu()
    return {"busy": busy, "capacity": capacity,
            "db": server_cpu(postmaster, exclude) if postmaster else None,
            "bouncer": process_cpu(bouncer.pid) if bouncer is not None else None,
            "workers": sum(process_cpu(pid) or 0.0 for pid in workers),
            "parent": process_cpu(os.getpid())}


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _create_study(url: str, args) -> list:
    """The study with the sampler/pruner settings; per worker, the sampler and pruner that
    hpo.studies.study builds for it (sampler seed = slot). Imports hpo.studies.study (and so torch) here, in the
    parent only."""
    from hpo.store.storage import open_storage
    from hpo.studies.samplers import make_pruner, make_sampler
    from hpo.studies.settings import SETTING_FLAGS
    from hpo.studies.study import StudyRequest, open_study

    flags = dict.fromkeys(SETTING_FLAGS)
    flags.update(n_trials=10 ** 9, sampler=args.sampler, pruner=args.pruner, epochs=args.epochs)
    storage = open_storage(url, heartbeat=args.heartbeat, grace=args.grace)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            _, stage, settings, frozen = open_study(storage, StudyRequest(STUDY, STAGE, flags))
    finally:
        storage.dispose()
    return [(make_sampler(settings, stage, frozen, slot), make_pruner(settings))
            for slot in range(max(args.processes))]


def measure(mode: str, processes: int, args, admin_url: str, postmaster: int | None) -> dict:
    import optuna
    from optuna.trial import TrialState

    ctx = mp.get_context("spawn")
    logs = Path(tempfile.mkdtemp(prefix="hpo-scale-"))
    cfg = {"heartbeat": args.heartbeat, "grace": args.grace, "epochs": args.epochs,
           "trial_seconds": args.trial_seconds, "seconds": args.seconds, "attrs": args.attrs,
           "outage_timeout": args.outage_timeout}
    row: dict = {"benchmark": "scale", "mode": mode, "processes": processes}
    with scratch_database(admin_url, "scale") as url:
        database = url.rsplit("/", 1)[1]
        samplers = _create_study(url, args)
        bouncer = None
        if mode == "pgbouncer":
            bouncer = PgBouncer(admin_url, pool=args.pool, max_clients=args.max_clients).start()
        try:
            worker_url = bouncer.url(database) if bouncer else url
            barrier, queue = ctx.Barrier(processes + 1), ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(
                slot, worker_url, *samplers[slot], cfg, barrier, queue, str(logs / f"w{slot}.log")))
                for slot in range(processes)]
            started = time.time()
            for p in procs:
                p.start()
            monitor = Monitor(admin_url, database, bouncer)
            monitor.start()
            pids = [p.pid for p in procs]
            try:
                barrier.wait(BARRIER_TIMEOUT)
            except threading.BrokenBarrierError:
                for p in procs:
                    p.kill()
                monitor.stop()
                tails = [log.read_text(errors="replace")[-800:] for log in logs.glob("w*.log")]
                raise SystemExit(f"{mode}/{processes}: the workers never all reached the start "
                                 f"barrier (exit codes {[p.exitcode for p in procs]}); a log "
                                 f"ends: {tails[:1]}") from None
            t0 = time.time()
            before = _cpu_snapshot(postmaster, (monitor.backend_pid,), bouncer, pids)
            time.sleep(max(0.0, t0 + args.seconds - time.time()))
            after = _cpu_snapshot(postmaster, (monitor.backend_pid,), bouncer, pids)
            t1 = time.time()
            results = []
            for _ in procs:
                try:
                    results.append(queue.get(timeout=args.outage_timeout + 120))
                except Exception:
                    break
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
                    p.join(10)
            monitor.stop()
            storage = optuna.storages.RDBStorage(url)
            try:
                trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(
                    deepcopy=False)
            finally:
                storage.engine.dispose()
            pooler_errors = [line for line in bouncer.log().splitlines()
                             if "pooler error" in line] if bouncer else []
        finally:
            if bouncer is not None:
                bouncer.close()
    window = t1 - t0
    row.update(_throughput(results, t0, t1, processes, args))
    row.update(_connections(monitor, t0, t1, bouncer is not None))
    row.update(_cpu_shares(before, after, window, row["trials_finished"]))
    row.update(_round_trips(results, row["trials_finished"], window))
    trouble = []  # log records (not traceback lines) that name connection trouble
    for log in sorted(logs.glob("w*.log")):
        trouble += [line for line in log.read_text(errors="replace").splitlines()
                    if line[:1].isdigit() and TROUBLE.search(line)]
    kinds = collections.Counter(
        next((k for k in TROUBLE_KINDS if k in line.lower()), "other") for line in trouble)
    states = collections.Counter(t.state for t in trials)
    row.update({
        "errors": {
            "processes_failed": sum(p.exitcode != 0 for p in procs),
            "results_missing": processes - len(results),
            "process_errors": sorted({r["error"] for r in results if r["error"]})[:3],
            "trials_failed": states[TrialState.FAIL],
            "trials_left_running": states[TrialState.RUNNING],
            "log_trouble_lines": len(trouble),
            "log_trouble_kinds": dict(kinds),
            "log_trouble_first": [line[:300] for line in trouble[:2]],
            "pooler_errors": len(pooler_errors),
            "monitor": monitor.error,
        },
        "trials_in_database": {s.name.lower(): n for s, n in states.items()},
        "torch_imported_by_workers": any(r.get("torch_imported") for r in results),
        "worker_max_rss_mb_mean": round(statistics.mean(r["max_rss_mb"] for r in results))
        if results else None,
        "startup_s": round(t0 - started, 1),
        "window_s": round(window, 2),
    })
    if args.keep:
        row["logs"] = str(logs)
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return row


def _throughput(results: list[dict], t0: float, t1: float, processes: int, args) -> dict:
    finished = [(s, e) for r in results for s, e, state in r["tells"]
                if state in ("COMPLETE", "PRUNED") and t0 <= e <= t1]
    pruned = sum(1 for r in results for _, e, state in r["tells"]
                 if state == "PRUNED" and t0 <= e <= t1)
    asks = [e - s for r in results for s, e in r["asks"] if t0 <= s <= t1]
    tells = [e - s for r in results for s, e, _ in r["tells"] if t0 <= s <= t1]
    slept = sum(max(0.0, min(e, t1) - max(s, t0)) for r in results for s, e in r["sleeps"])
    window = t1 - t0
    # A trial's wall time: from its ask's start to its tell's end (pairs in order per process).
    walls = []
    for r in results:
        walls += [te - as_ for (as_, _), (_, te, _) in zip(r["asks"], r["tells"])
                  if t0 <= te <= t1]
    return {
        "trials_finished": len(finished), "trials_pruned": pruned,
        "trials_per_second": round(len(finished) / window, 2),
        "trial_wall_s_mean": round(statistics.mean(walls), 3) if walls else None,
        "ask_ms": {"p50": _ms(_percentile(asks, 0.5)), "p99": _ms(_percentile(asks, 0.99)),
                   "mean": _ms(statistics.mean(asks)) if asks else None,
                   "max": _ms(max(asks)) if asks else None, "n": len(asks)},
        "tell_ms": {"p50": _ms(_percentile(tells, 0.5)), "p99": _ms(_percentile(tells, 0.99)),
                    "mean": _ms(statistics.mean(tells)) if tells else None,
                    "max": _ms(max(tells)) if tells else None, "n": len(tells)},
        # share of the workers' wall time spent "training" (sleeping) rather than in the storage
        # path: 1.0 would be a database that costs nothing
        "training_share": round(slept / (processes * window), 3),
    }


def _connections(monitor: Monitor, t0: float, t1: float, pooled: bool) -> dict:
    inside = [s for s in monitor.samples if t0 <= s[0] <= t1]

    def peak(i, samples=monitor.samples):
        values = [s[i] for s in samples if s[i] is not None]
        return max(values) if values else None

    def mean(i):
        values = [s[i] for s in inside if s[i] is not None]
        return round(statistics.mean(values), 1) if values else None

    out = {"server_connections": {"peak": peak(1), "mean": mean(1), "samples": len(inside)},
           "active_backends_mean": mean(2),
           "lock_waiting_backends": {"peak": peak(3, inside), "mean": mean(3)}}
    if pooled:
        out["pgbouncer_clients"] = {"peak": peak(4), "mean": mean(4)}
        out["pgbouncer_waiting_clients"] = {"peak": peak(5, inside), "mean": mean(5)}
    return out


def _cpu_shares(before: dict, after: dict, window: float, finished: int) -> dict:
    capacity = after["capacity"] - before["capacity"]
    busy = after["busy"] - before["busy"]

    def used(key):
        if before[key] is None or after[key] is None:
            return None
        return after[key] - before[key]

    db, bouncer, workers, parent = used("db"), used("bouncer"), used("workers"), used("parent")
    share = lambda v: None if v is None else round(v / capacity, 3)  # noqa: E731
    other = busy - sum(v or 0.0 for v in (db, bouncer, workers, parent))
    return {"cpu": {
        "cpus": round(capacity / window, 2),
        "machine_busy_share": share(busy),
        "db_share": share(db), "pgbouncer_share": share(bouncer), "workers_share": share(workers),
        "parent_share": share(parent),  # this process: the connection monitor
        "other_share": share(other),  # anything else on the machine (and the kernel's own)
        "db_share_of_busy": round(db / busy, 3) if db is not None and busy else None,
        "db_ms_per_trial": round(db * 1000 / finished, 2) if db is not None and finished else None,
        "pgbouncer_ms_per_trial": (round(bouncer * 1000 / finished, 2)
                                   if bouncer is not None and finished else None),
        "workers_ms_per_trial": round(workers * 1000 / finished, 2) if finished else None,
    }}


def _round_trips(results: list[dict], finished: int, window: float) -> dict:
    """Round trips (statements + commits) made inside the window, per finished trial for the
    per-trial steps and per process-minute for the heartbeat and reaper threads."""
    by_label: collections.Counter = collections.Counter()
    for r in results:
        for key, n in r["counts_window"].items():
            by_label[key.split(":")[0]] += n
    total = sum(by_label.values())
    per_trial = {k: round(by_label[k] / finished, 1) if finished else None
                 for k in ("ask", "report", "tell", "loop")}
    per_minute = {k: round(by_label[k] / (len(results) * window / 60), 1) if results else None
                  for k in ("heartbeat", "reap")}
    waits: collections.Counter = collections.Counter()
    for r in results:
        waits.update(r["db_time_window"])
    lock_n = waits.pop("trial_number_lock_n", 0)
    lock_s = waits.pop("trial_number_lock", 0.0)
    rows = {k: round(waits[f"rows:{k}"] / finished) if finished else None
            for k in ("ask", "report", "tell", "loop")}
    return {"round_trips": {"per_trial_all": round(total / finished, 1) if finished else None,
                            "per_trial": per_trial, "per_process_minute": per_minute,
                            "total": total},
            # wall time the workers spent waiting in statements, per finished trial
            "db_wait_ms_per_trial": {k: round(waits[k] * 1000 / finished, 1) if finished else None
                                     for k in ("ask", "report", "tell", "loop")},
            # rows the statements returned or changed, per finished trial: Optuna's cached
            # storage re-reads every trial still running at each trial-list read
            "rows_per_trial": rows,
            "trial_number_lock_ms": {"mean": round(lock_s * 1000 / lock_n, 1) if lock_n else None,
                                     "n": lock_n}}


def _summary_entry(row: dict) -> dict:
    return {
        "trials_per_second": row["trials_per_second"],
        "ask_ms_p50_p99": [row["ask_ms"]["p50"], row["ask_ms"]["p99"]],
        "tell_ms_p50_p99": [row["tell_ms"]["p50"], row["tell_ms"]["p99"]],
        "server_connections_peak_mean": [row["server_connections"]["peak"],
                                         row["server_connections"]["mean"]],
        "lock_waiting_mean": row["lock_waiting_backends"]["mean"],
        "db_share": row["cpu"]["db_share"],
        "pgbouncer_share": row["cpu"]["pgbouncer_share"],
        "workers_share": row["cpu"]["workers_share"],
        "machine_busy_share": row["cpu"]["machine_busy_share"],
        "db_ms_per_trial": row["cpu"]["db_ms_per_trial"],
        "round_trips_per_trial": row["round_trips"]["per_trial_all"],
        "trial_number_lock_ms_mean": row["trial_number_lock_ms"]["mean"],
        "training_share": row["training_share"],
        "errors": {k: row["errors"][k] for k in (
            "processes_failed", "trials_failed", "trials_left_running", "log_trouble_lines",
            "pooler_errors") if row["errors"][k]} or 0,
    }


def main() -> None:
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--processes", type=ints, default=[8, 16, 32, 64],
                        help="worker process counts (default 8,16,32,64)")
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["direct", "pgbouncer"],
                        help="direct, pgbouncer or both, comma-separated (default both)")
    parser.add_argument("--seconds", type=float, default=20,
                        help="wall time each measurement runs after the barrier (default 20)")
    parser.add_argument("--trial-seconds", type=float, default=0.5,
                        help="stand-in training time of a trial, split over its epochs "
                             "(default 0.5: many workers with short trials)")
    parser.add_argument("--epochs", type=int, default=3, help="reports per trial (default 3)")
    parser.add_argument("--pool", type=int, default=10,
                        help="PgBouncer default_pool_size = max_db_connections (default 10)")
    parser.add_argument("--max-clients", type=int, default=1000,
                        help="PgBouncer max_client_conn (default 1000, as in docs/clusters.md)")
    parser.add_argument("--heartbeat", type=int, default=10,
                        help="workers' --heartbeat (default 10, hpo-worker's)")
    parser.add_argument("--grace", type=int, default=30, help="workers' --grace (default 30)")
    parser.add_argument("--outage-timeout", type=float, default=60,
                        help="workers' --outage-timeout (default 60; hpo-worker's is 600)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                        help="the study's sampler (default tpe, the study default)")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="the study's pruner (default median, the study default)")
    parser.add_argument("--attrs", action="store_true",
                        help="also write the user attributes the real runner writes per trial "
                             "(device, host, pid, threads, config, a checkpoint pointer per epoch, "
                             "history, gap, seconds, params, end reason); artifacts are not "
                             "uploaded either way")
    parser.add_argument("--pg", help="an existing PostgreSQL server's URL (scratch databases are "
                                     "created and dropped there) instead of a private server")
    parser.add_argument("--max-connections", type=int, default=100,
                        help="the private server's max_connections (default 100, PostgreSQL's)")
    parser.add_argument("--keep", action="store_true", help="keep the workers' logs and say where")
    args = parser.parse_args()
    if set(args.modes) - {"direct", "pgbouncer"} or not args.modes:
        parser.error(f"--modes: expected direct and/or pgbouncer, got {args.modes}")
    if min(args.processes) < 1 or args.seconds <= 0 or args.trial_seconds < 0 or args.epochs < 1:
        parser.error("--processes, --seconds and --epochs must be positive")
    if "pgbouncer" in args.modes and not shutil.which(
            "pgbouncer", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
        parser.error("pgbouncer is not installed (apt-get install pgbouncer)")

    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hpo").setLevel(logging.ERROR)  # "builds on no stage; using defaults"
    warnings.filterwarnings("ignore")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created ..."
    load_before = os.getloadavg()
    started = time.time()
    rows = []
    server = existing_server(args.pg) if args.pg else private_server(args.max_connections)
    with server as (admin_url, postmaster):
        for i, processes in enumerate(args.processes):
            for mode in (args.modes if i % 2 == 0 else args.modes[::-1]):
                row = measure(mode, processes, args, admin_url, postmaster)
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {
        "benchmark": "scale", "summary": True,
        "server": args.pg and "existing (--pg)" or
        f"private PostgreSQL, max_connections {args.max_connections}, fsync on",
        "cpus": os.cpu_count(), "seconds": args.seconds, "trial_seconds": args.trial_seconds,
        "epochs": args.epochs, "pool": args.pool, "heartbeat": args.heartbeat,
        "sampler": args.sampler, "pruner": args.pruner, "attrs": args.attrs,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "total_s": round(time.time() - started),
        "torch_imported_by_workers": any(r["torch_imported_by_workers"] for r in rows),
        "by": {f"{r['mode']}/{r['processes']}": _summary_entry(r) for r in rows},
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
