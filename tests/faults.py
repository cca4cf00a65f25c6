"""Fault injection for a chain of real hpo-worker processes on a throwaway PostgreSQL, and the
ledger that says what survived (tests/test_faults.py, benchmarks/faults.py).

Several ``hpo-worker --chain`` processes run the tiny chain of tests/fault_chain while, on a
schedule drawn from a seed, one worker is SIGKILLed or SIGTERMed (and started again, as a
cluster's requeue would), or the database is stopped hard for a while and started again. Then,
per stage: the budget counted exactly, nothing running or waiting, every failed trial retried,
refused, or left failed by real deaths past the retry limit, nothing trained twice, the warm
start completed at the value it inherited, the best never below the predecessor's, no trial of
a live worker failed, and every worker's exit clean.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from tests.conftest import BIN, REPO
from tests.fault_chain import CHAIN, MODULES
from tests.pgserver import ThrowawayPostgres

CHAIN_NAME = "f"
REFUSED = ("not trained", "over budget", "impossible")  # end reasons of trials never trained


@dataclasses.dataclass
class Plan:
    workers: int = 3
    n_trials: int = 5  # per stage
    epochs: int = 3  # checkpoints after epochs 1 and 2: a retry resumes
    train_size: int = 2000
    heartbeat: int = 1
    grace: int = 3
    max_retries: int = 3
    faults: int = 6  # kills, stops and database outages, in a seeded order
    # Faults land at seeded points of the chain's progress (trials trained), not of the clock:
    # a clock schedule lets a fast machine finish the chain before the faults land. The last
    # ``tail`` trials of the budget stay free of new faults so every fault lands while it runs.
    tail: int = 6
    settle: tuple[float, float] = (0.0, 1.0)  # seconds after its point, seeded: mid-trial
    db_down: tuple[float, float] = (1.0, 7.0)  # seconds the database stays stopped
    deadline: float = 600.0  # for the whole run


@dataclasses.dataclass
class Slot:
    """One worker's place: the process now running in it and every exit so far."""

    index: int
    log: Path
    process: subprocess.Popen | None = None
    exits: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (code, why)


def _command(plan: Plan, url: str, artifacts: Path) -> list[str]:
    return [str(BIN / "hpo-worker"), "--chain", CHAIN, "--chain-name", CHAIN_NAME,
            "--storage", url, "--artifacts", str(artifacts), "--devices", "cpu",
            "--heartbeat", str(plan.heartbeat), "--grace", str(plan.grace),
            "--max-retries", str(plan.max_retries), "--n-trials", str(plan.n_trials),
            "--epochs", str(plan.epochs), "--dataset", "cifar10-sample",
            "--train-size", str(plan.train_size), "--seed", "0"]


def _env() -> dict[str, str]:
    # One thread each: workers share a few cores, and results depend on the thread count.
    return {**os.environ, "HPO_STAGES": MODULES, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start(slot: Slot, command: list[str]) -> None:
    with open(slot.log, "a") as out:
        out.write(f"==== start {time.strftime('%H:%M:%S')}\n")
        out.flush()
        slot.process = subprocess.Popen(command, env=_env(), stdout=out,
                                        stderr=subprocess.STDOUT, cwd=REPO)


def _connected(slot: Slot) -> bool:
    """The worker's current run has opened the database (it rides out outages from then on)."""
    text = slot.log.read_text()
    return "chain 'f': stage" in text[text.rfind("==== start"):]


def _wait(condition, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


def _trials(url: str, *states: TrialState) -> list[optuna.trial.FrozenTrial]:
    """The trials in these states over every study of the chain; none while the database is down."""
    storage = optuna.storages.RDBStorage(url)
    try:
        return [t for s in storage.get_all_studies()
                for t in storage.get_all_trials(storage.get_study_id_from_name(s.study_name),
                                                deepcopy=False, states=states)]
    except Exception:
        return []  # the database is stopped or still starting
    finally:
        storage.engine.dispose()


def _running_pids(url: str) -> set[int]:
    """The pids of the workers now running a trial (by the trials' user attributes)."""
    return {t.user_attrs.get("pid") for t in _trials(url, TrialState.RUNNING)}


def _due(url: str, point: int) -> bool:
    """The chain has trained ``point`` trials to the end and one is training now (one query)."""
    trials = _trials(url, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return running > 0 and len(trials) - running >= point


def fault_points(plan: Plan, seed: int) -> list[int]:
    """The seeded trained-trial counts at which the faults land, in order."""
    stages = len(MODULES.split(","))
    room = max(plan.faults, stages * plan.n_trials - plan.tail)
    rng = random.Random(seed * 7919)
    return sorted(rng.choice(range(room)) for _ in range(plan.faults))


def run(plan: Plan, seed: int, workdir: Path, say=print) -> dict[str, Any]:
    """Run the chain under the seeded faults; the ledger (see ``ledger``) plus the faults."""
    workdir.mkdir(parents=True, exist_ok=True)
    pg = ThrowawayPostgres()
    try:
        url = pg.url()
        command = _command(plan, url, workdir / "artifacts")
        slots = [Slot(i, workdir / f"worker{i}.log") for i in range(plan.workers)]
        for slot in slots:
            _start(slot, command)
        faults = _inject(plan, seed, pg, slots, command, url, say)
        ended = _wait(lambda: all(s.process.poll() is not None for s in slots), plan.deadline)
        for slot in slots:
            if slot.process.poll() is None:
                slot.process.kill()
                slot.exits.append((slot.process.wait(), "still running at the deadline"))
            else:
                slot.exits.append((slot.process.returncode, "finished"))
        result = ledger(url, plan, slots)
        result.update(seed=seed, faults=faults, finished=ended)
        return result
    finally:
        pg.close()


def _inject(plan: Plan, seed: int, pg: ThrowawayPostgres, slots: list[Slot],
            command: list[str], url: str, say) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds = [("kill", "term", "db")[i % 3] for i in range(plan.faults)]
    rng.shuffle(kinds)
    done: list[dict[str, Any]] = []
    start = time.monotonic()
    finished = lambda: all(s.process.poll() is not None for s in slots)  # noqa: E731
    for kind, point in zip(kinds, fault_points(plan, seed)):
        # The fault lands once the chain has trained ``point`` trials and one is training now.
        _wait(lambda: _due(url, point) or finished(), plan.deadline)
        time.sleep(rng.uniform(*plan.settle))
        live = [s for s in slots if s.process.poll() is None]
        if not live:
            break  # the chain finished before the schedule did
        if kind == "db":
            # A worker still opening the database would fail at once (it waits only once
            # connected): an outage waits for every live worker to be connected.
            _wait(lambda: all(_connected(s) or s.process.poll() is not None for s in live), 120)
        at = round(time.monotonic() - start, 1)
        if kind == "db":
            down = round(rng.uniform(*plan.db_down), 1)
            pg.stop()
            time.sleep(down)
            pg.start()
            done.append({"at": at, "kind": "db stop", "seconds": down, "trained": point})
        else:
            busy = _running_pids(url)  # a worker in the middle of a trial, where there is one
            slot = rng.choice([s for s in live if s.process.pid in busy] or live)
            signum = signal.SIGKILL if kind == "kill" else signal.SIGTERM
            slot.process.send_signal(signum)
            try:
                code = slot.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                slot.process.kill()
                code = slot.process.wait()
                kind = "term ignored"
            slot.exits.append((code, f"{signal.Signals(signum).name}"))
            _start(slot, command)
            done.append({"at": at, "kind": signal.Signals(signum).name, "worker": slot.index,
                         "trained": point})
        say(f"fault {len(done)} at {at:.1f}s, {point} trained: {done[-1]}")
    return done


def ledger(url: str, plan: Plan, slots: list[Slot]) -> dict[str, Any]:
    """Per stage what the chain's studies hold, and every violation of what must hold."""
    from hpo.store import study_records
    from hpo.runtime.retries import DEATHS, REAPED_ALIVE, left_failed

    storage = optuna.storages.RDBStorage(url)
    stages, problems, previous = [], [], None
    try:
        names = study_records.read(storage, CHAIN_NAME)["chain"]["stages"]
        for name in names:
            study_name = f"{CHAIN_NAME}.{name}"
            study_id = storage.get_study_id_from_name(study_name)
            trials = storage.get_all_trials(study_id)
            budget = study_records.read(storage, study_name)["settings"]["n_trials"]
            by = {state: [t for t in trials if t.state == state] for state in TrialState}
            trained = by[TrialState.COMPLETE] + by[TrialState.PRUNED]
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            limited = left_failed(storage.get_study_system_attrs(study_id))
            lost = [t.number for t in by[TrialState.FAIL]
                    if t.number not in retried and t.number not in limited
                    and not any(r in (t.user_attrs.get("end_reason") or "") for r in REFUSED)]
            configs = [repr(sorted(t.user_attrs["config"].items())) for t in trained]
            complete = [t for t in by[TrialState.COMPLETE] if t.values]
            best = max((t.values[0] for t in complete), default=None)
            warm = [t for t in complete if "warm_start" in t.user_attrs]
            row = {
                "stage": name, "budget": budget, "complete": len(by[TrialState.COMPLETE]),
                "pruned": len(by[TrialState.PRUNED]), "failed": len(by[TrialState.FAIL]),
                "running": len(by[TrialState.RUNNING]), "waiting": len(by[TrialState.WAITING]),
                "deaths": len({n for t in trials for n in t.system_attrs.get(DEATHS, [])}),
                "stopped_or_reaped": len(retried),
                "resumed": sum("resumed_from_epoch" in t.user_attrs for t in trained),
                "left_failed": {n: r["deaths"] for n, r in limited.items()},
                "reaped_alive": sorted({n for t in trials
                                        for n in t.system_attrs.get(REAPED_ALIVE, [])}),
                "best": best, "inherited": previous,
                "warm": warm[0].values[0] if warm else None,
                "warm_resumed": warm[0].user_attrs.get("resumed_from_epoch") if warm else None,
                "warm_retried": len(warm[0].system_attrs.get("retry_history", [])) if warm else 0,
            }
            stages.append(row)
            where = f"{name}:"
            if len(trained) != budget:
                problems.append(f"{where} {len(trained)} trained, budget {budget}")
            if row["running"] or row["waiting"]:
                problems.append(f"{where} {row['running']} running, {row['waiting']} waiting")
            if lost:
                problems.append(f"{where} failed without a retry: {lost}")
            for number, deaths in row["left_failed"].items():
                if deaths <= plan.max_retries:
                    problems.append(f"{where} trial {number} left failed after {deaths} deaths")
            if len(set(configs)) != len(configs):
                problems.append(f"{where} a configuration trained twice")
            if row["reaped_alive"]:
                problems.append(f"{where} trials of live workers reaped: {row['reaped_alive']}")
            if previous is not None:
                if row["warm"] is None:
                    problems.append(f"{where} no completed warm start")
                elif row["warm"] != previous:
                    problems.append(f"{where} warm start ended at {row['warm']}, inherited "
                                    f"{previous}")
                if best is None or best < previous:
                    problems.append(f"{where} best {best} below the predecessor's {previous}")
            previous = best
    finally:
        storage.engine.dispose()
    deaths = sum(row["deaths"] for row in stages)
    kills = sum(why == "SIGKILL" for slot in slots for _, why in slot.exits)
    if deaths > kills:  # only a killed worker's trial may be found dead
        problems.append(f"{deaths} trials found dead, {kills} workers killed")
    for slot in slots:
        text = slot.log.read_text()
        if "while its worker was alive" in text or "while this worker ran it" in text:
            problems.append(f"worker {slot.index}: a trial of it was failed while it lived")
        if "Traceback" in text:
            problems.append(f"worker {slot.index}: a traceback in its log")
        runs = text.split("==== start")[1:]
        for (code, why), run_log in zip(slot.exits, runs):
            # A SIGTERM that lands as the worker exits (its chain done) ends it by the signal.
            done = "chain 'f' finished" in run_log
            if code != 0 and why != "SIGKILL" and not (code == -signal.SIGTERM and done):
                problems.append(f"worker {slot.index}: exit {code} ({why})")
    return {"stages": stages, "problems": problems,
            "exits": {s.index: [code for code, _ in s.exits] for s in slots}}


def format_ledger(result: dict[str, Any]) -> str:
    head = (f"{'stage':<17}{'budget':>7}{'done':>6}{'pruned':>7}{'failed':>7}{'run':>5}"
            f"{'wait':>5}{'deaths':>7}{'retried':>8}{'resumed':>8}  {'best':<8}{'inherited':<10}"
            f"{'warm':<8}{'w-retries':>9}{'w-resumed':>10}  left-failed  live-reaped")
    lines = [f"seed {result['seed']}: {len(result['faults'])} faults: "
             + ", ".join(f"{f['kind']}" + (f" {f['seconds']}s" if "seconds" in f else "")
                         for f in result["faults"]), head]

    def num(v):
        return "-" if v is None else f"{v:.4f}"

    for r in result["stages"]:
        lines.append(f"{r['stage']:<17}{r['budget']:>7}{r['complete']:>6}{r['pruned']:>7}"
                     f"{r['failed']:>7}{r['running']:>5}{r['waiting']:>5}{r['deaths']:>7}"
                     f"{r['stopped_or_reaped']:>8}{r['resumed']:>8}  {num(r['best']):<8}"
                     f"{num(r['inherited']):<10}{num(r['warm']):<8}{r['warm_retried']:>9}"
                     f"{r['warm_resumed'] or '-'!s:>10}  "
                     f"{r['left_failed'] or '-'!s:<13}{r['reaped_alive'] or '-'}")
    lines.append(f"exits: {result['exits']}")
    lines.append("problems: " + ("; ".join(result["problems"]) or "none"))
    return "\n".join(lines)
