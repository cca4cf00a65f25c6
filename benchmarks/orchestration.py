"""What the worker's orchestration costs on PostgreSQL, around the training it orchestrates.

Part ``a`` (throughput): trials/second of a trivial objective (stage1_layers' three suggestions,
three reports with a pruning check each, return) through

- ``ours``: the real ``hpo.runtime.worker.run_worker`` (open_storage's RetryingStorage with heartbeat,
  open_study, make_sampler/make_pruner, the start-up reap, the per-process heartbeat and reaper
  threads, and hpo.runtime.loop.WorkerLoop: stale-trial check, stored budget + trial tally, ask, run,
  tell, progress). run_worker builds its TrialRunner itself, so this benchmark substitutes
  ``hpo.runtime.runner.TrialRunner`` by a subclass with the same constructor whose ``run`` is the trivial
  trial (reporting through the same per-epoch progress hook), and ``hpo.training.data.load`` by a stub.
  The real runner's own per-trial bookkeeping (user attributes, learning curve, checkpoints) is
  part b's to measure;
- ``plain``: ``optuna.load_study(storage=URL)`` (plain RDBStorage, default TPESampler and
  MedianPruner) and ``study.optimize`` without callbacks,

with 1, 2, 4 and 8 worker processes, each optimizing for a fixed wall time after a common start
barrier; ours and plain alternate per process count, each in a fresh database. Throughput is the
number of finished (complete + pruned) trials over [first trial start, last trial end] from the
database. Each measurement also counts database round trips (statements, commits, pool
pre-pings) and worker CPU per trial, which are far less noisy than trials/s on a busy machine.
``--variants`` adds ablations of ours (ours-noreads, ours-nobeat, ours-lean) to attribute its cost.
Target: ours/plain >= 0.9.

Part ``b`` (overhead share): the real run_worker on cifar10-sample (stage1_layers, small train
subset) in this process, with timers around its pieces (storage calls, sampler, pruner, the
loop's budget/tally reads and stale-trial check, model build, plotting, artifact uploads,
checkpoints, progress). Per trial: wall = datetime_complete - datetime_start, training = the
trial's user_attrs['seconds'] (the sum of its epochs' seconds), share = 1 - training / wall.
Target: < 2% pooled over the trials of 3-10 s (shorter, pruned trials are reported apart).

One JSON line per measurement, then summary lines. Usage (from the repo root):

    .venv/bin/python benchmarks/orchestration.py [--part a|b|both] [--seconds 8] [--repeats 2] [--trials 4]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
import types
import warnings
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # search_spaces lives at the repo root
    sys.path.insert(0, str(REPO_ROOT))

from _db import DEFAULT_PG, count_round_trips, scratch_database  # noqa: E402

STUDY = "bench"
TARGET_SECONDS = (3.0, 10.0)  # part b's target is about trials this long
BARRIER_TIMEOUT = 300


def _quiet() -> None:
    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)


# -- part a: throughput of trivial trials -------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _stage1(get_stage):
    return get_stage("stage1_layers")


def trivial_trial(trial, on_epoch=None) -> float:
    """stage1_layers' suggestions, three reports with a pruning check each, a value."""
    import optuna
    from search_spaces import DEFAULTS, get_stage

    config = _stage1(get_stage).suggest(trial, dict(DEFAULTS))
    value = (0.7 - 0.1 * abs(config["conv_layers"] - 3) - 0.05 * abs(math.log10(config["lr"]) + 2)
             + 0.01 * (config["batch_size"] == 64))
    for step in (1, 2, 3):
        accuracy = value * step / 3
        trial.report(accuracy, step)
        if on_epoch is not None:
            on_epoch(trial, types.SimpleNamespace(epoch=step, val_acc=accuracy))
        if trial.should_prune():
            raise optuna.TrialPruned()
    return value


def _worker_args(url: str, artifacts: str, extra: list[str]):
    from hpo.runtime.worker import build_parser

    return build_parser().parse_args(
        ["--study", STUDY, "--space", "stage1_layers", "--storage", url, "--artifacts", artifacts,
         "--devices", "cpu", "--quiet", *extra])


# Ablations of ours, to attribute its cost: each removes one source of database round trips.
ABLATIONS = {
    "ours": (),
    # no per-trial reads of the stored budget (study user attrs) and the trial tally (trial list)
    # that hold the study-wide budget and feed the progress line
    "ours-noreads": ("noreads",),
    # no heartbeat writes: neither the one recorded when a trial is claimed nor the thread's
    "ours-nobeat": ("nobeat",),
    "ours-lean": ("noreads", "nobeat"),
}


def _ablate(variant: str) -> None:
    """Patch this (child) process's hpo modules for the variant's ablations."""
    import hpo.studies.budget
    import hpo.runtime.loop
    import hpo.store.retrying_storage
    from optuna.trial import TrialState

    if "noreads" in ABLATIONS[variant]:
        hpo.studies.budget.stored_budget = lambda storage, study_name: 10 ** 9
        hpo.runtime.loop.count_trials = lambda storage, study_id: hpo.studies.budget.Tally(
            dict.fromkeys(TrialState, 0), None)
    if "nobeat" in ABLATIONS[variant]:
        hpo.store.retrying_storage.RetryingStorage.record_heartbeat = lambda self, trial_id: None


def _ours_child(variant: str, url: str, seconds: float, heartbeat: int, artifacts: str, barrier,
                queue) -> None:
    import optuna

    import hpo.training.data
    import hpo.runtime.runner
    from hpo.runtime.runner import Ending, Outcome
    from hpo.runtime.worker import run_worker, setup_logging

    counts = count_round_trips()

    class TrivialRunner(hpo.runtime.runner.TrialRunner):
        """The real runner's constructor and progress hook; a trivial trial for training."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # run_worker builds the runner right before the loop (and the loop's --timeout
            # deadline): start together
            barrier.wait(BARRIER_TIMEOUT)
            counts.clear()
            counts["cpu_us"] = -int(time.process_time() * 1e6)

        def run(self, trial, queued=True):
            # Endings as values, as the real runner returns them to the loop
            try:
                return Outcome(Ending.COMPLETE, "completed", [trivial_trial(trial, self.on_epoch)])
            except optuna.TrialPruned as e:
                return Outcome(Ending.PRUNED, str(e))

    hpo.runtime.runner.TrialRunner = TrivialRunner  # run_worker imports it from hpo.runtime.runner when called
    hpo.training.data.load = lambda *args, **kwargs: types.SimpleNamespace(image_size=32)  # CIFAR-sized
    _ablate(variant)
    setup_logging(quiet=True)
    _quiet()
    args = _worker_args(url, artifacts, ["--n-trials", str(10 ** 9), "--timeout", str(seconds),
                                         "--heartbeat", str(heartbeat)])
    try:
        code = run_worker(args, "cpu")
    finally:
        counts["cpu_us"] += int(time.process_time() * 1e6)
        queue.put(dict(counts))
    sys.exit(code)


def _plain_child(url: str, seconds: float, barrier, queue) -> None:
    import optuna

    _quiet()
    counts = count_round_trips()
    study = optuna.load_study(study_name=STUDY, storage=url)
    barrier.wait(BARRIER_TIMEOUT)
    counts.clear()
    counts["cpu_us"] = -int(time.process_time() * 1e6)
    try:
        study.optimize(trivial_trial, timeout=seconds)
    finally:
        counts["cpu_us"] += int(time.process_time() * 1e6)
        queue.put(dict(counts))


def _create_study(variant: str, url: str, artifacts: str, heartbeat: int) -> None:
    import optuna

    if variant == "plain":
        optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
        return
    from hpo.store.storage import open_storage
    from hpo.studies.settings import flags_from
    from hpo.studies.study import StudyRequest, open_study

    # The budget is stored in the study: the workers' --n-trials must agree with it
    args = _worker_args(url, artifacts, ["--n-trials", str(10 ** 9)])
    storage = open_storage(url, heartbeat=heartbeat, grace=args.grace)
    try:
        open_study(storage, StudyRequest(STUDY, args.space, flags_from(args)))
    finally:
        storage.dispose()


def measure_throughput(variant: str, workers: int, seconds: float, heartbeat: int,
                       pg: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    ctx = mp.get_context("spawn")
    with scratch_database(pg, "orch") as url, tempfile.TemporaryDirectory() as artifacts:
        _create_study(variant, url, artifacts, heartbeat)
        barrier, queue = ctx.Barrier(workers), ctx.Queue()
        target, args = ((_plain_child, (url, seconds, barrier, queue)) if variant == "plain" else
                        (_ours_child, (variant, url, seconds, heartbeat, artifacts, barrier, queue)))
        procs = [ctx.Process(target=target, args=args) for _ in range(workers)]
        for p in procs:
            p.start()
        counts: dict[str, int] = defaultdict(int)
        for _ in procs:
            with contextlib.suppress(Exception):
                for key, value in queue.get(timeout=seconds + BARRIER_TIMEOUT).items():
                    counts[key] += value
        for p in procs:
            p.join(BARRIER_TIMEOUT)
        storage = optuna.storages.RDBStorage(url)
        try:
            trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)
        finally:
            storage.engine.dispose()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    window = (max(t.datetime_complete for t in finished)
              - min(t.datetime_start for t in finished)).total_seconds() if finished else 0.0
    return {"part": "a", "variant": variant, "workers": workers, "finished": len(finished),
            "pruned": sum(t.state == TrialState.PRUNED for t in trials),
            "failed": sum(t.state == TrialState.FAIL for t in trials),
            "left_running": sum(t.state == TrialState.RUNNING for t in trials),
            "exit_codes": sorted({p.exitcode for p in procs}, key=str),
            "seconds": round(window, 2),
            "trials_per_second": round(len(finished) / window, 2) if window else 0.0,
            # Database round trips (statements + commits + pool pre-pings, all threads) per trial,
            # and the worker processes' own CPU time per trial: both less noisy than trials/s.
            "round_trips_per_trial": round(sum(v for k, v in counts.items() if k != "cpu_us")
                                           / len(finished), 1) if finished else None,
            "worker_cpu_ms_per_trial": round(counts["cpu_us"] / 1000 / len(finished), 1)
            if finished else None,
            "round_trips": {k: v for k, v in counts.items() if k != "cpu_us"}}


def part_a(args) -> dict:
    rows = []
    for repeat in range(args.repeats):
        for workers in args.workers:
            order = args.variants if repeat % 2 == 0 else args.variants[::-1]
            for variant in order:
                row = measure_throughput(variant, workers, args.seconds, args.heartbeat, args.pg)
                row["repeat"] = repeat
                rows.append(row)
                print(json.dumps(row), flush=True)
    per_workers = {}
    for workers in args.workers:
        entry = {}
        for v in args.variants:
            mine = [r for r in rows if r["workers"] == workers and r["variant"] == v]
            for key, name in (("trials_per_second", "tps"),
                              ("round_trips_per_trial", "round_trips_per_trial"),
                              ("worker_cpu_ms_per_trial", "worker_cpu_ms_per_trial")):
                entry[f"{v}_{name}_median"] = round(statistics.median(
                    r[key] or 0 for r in mine), 2)
        plain = entry.get("plain_tps_median")
        for v in args.variants:
            if v != "plain" and plain:
                entry[f"ratio_{v}_plain"] = round(entry[f"{v}_tps_median"] / plain, 3)
        per_workers[str(workers)] = entry
    ratios = [v["ratio_ours_plain"] for v in per_workers.values() if "ratio_ours_plain" in v]
    summary = {"part": "a", "summary": True, "seconds_per_measurement": args.seconds,
               "repeats": args.repeats, "heartbeat": args.heartbeat, "by_workers": per_workers,
               "min_ratio": min(ratios) if ratios else None, "target": ">= 0.9",
               "target_met": min(ratios) >= 0.9 if ratios else None}
    print(json.dumps(summary), flush=True)
    return summary


# -- part b: the non-training share of a real trial ---------------------------------------------

class Timers:
    """Exclusive wall time of nested timed calls, as (thread, category, start, end, seconds).

    A storage call is labelled with the nearest timed caller that is not a storage call
    ("storage.get_all_trials <- sampler..."), else with the storage call it is nested in (the
    heartbeat recorded when a trial is claimed: "storage.record_heartbeat <-
    storage.create_new_trial"), else with "optuna".
    """

    def __init__(self):
        self.events: list[tuple[str, str, float, float, float]] = []
        self.local = threading.local()
        self.lock = threading.Lock()

    def wrap(self, category: str, fn):
        timers = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            stack = getattr(timers.local, "stack", None)
            if stack is None:
                stack = timers.local.stack = []
            label = category
            if category.startswith("storage."):
                callers = [c for c, _ in stack if not c.startswith("storage.")]
                caller = callers[-1] if callers else stack[-1][0] if stack else "optuna"
                label = f"{category} <- {caller}"
            stack.append([category, 0.0])  # time spent in timed children
            start_wall, start = time.time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total = time.perf_counter() - start
                children = stack.pop()[1]
                if stack:
                    stack[-1][1] += total
                with timers.lock:
                    timers.events.append((threading.current_thread().name, label,
                                          start_wall, start_wall + total, total - children))

        return timed


# RetryingStorage's public methods (the one layer every storage call of a worker goes through).
STORAGE_METHODS = [
    "create_new_study", "get_study_id_from_name", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "get_all_studies", "set_study_user_attr", "set_study_system_attr",
    "create_new_trial", "set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr", "get_trial",
    "get_all_trials", "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id", "record_heartbeat",
]


def _wrap_methods(timers: Timers, cls, names: dict[str, str]) -> None:
    for name, category in names.items():
        setattr(cls, name, timers.wrap(category, getattr(cls, name)))


def instrument(timers: Timers) -> None:
    """Wrap the pieces of hpo's worker path (in this process) with timers.

    run_worker imports its collaborators from their modules when it is called, so patching the
    module attributes before the call is enough."""
    import hpo.store.artifacts
    import hpo.studies.budget
    import hpo.training.checkpoints
    import hpo.runtime.loop
    import hpo.views.plots
    import hpo.runtime.progress
    import hpo.runtime.reaper
    import hpo.runtime.runner
    import hpo.store.storage
    import hpo.studies.samplers
    import hpo.training.train

    w = timers.wrap
    original_open = hpo.store.storage.open_storage

    def open_storage(*args, **kwargs):
        storage = original_open(*args, **kwargs)
        for name in STORAGE_METHODS:
            if hasattr(storage, name):
                setattr(storage, name, w("storage." + name, getattr(storage, name)))
        return storage

    hpo.store.storage.open_storage = open_storage
    original_sampler, original_pruner = hpo.studies.samplers.make_sampler, hpo.studies.samplers.make_pruner

    def make_sampler(*args, **kwargs):
        sampler = original_sampler(*args, **kwargs)
        for name in ("infer_relative_search_space", "sample_relative", "sample_independent",
                     "before_trial", "after_trial"):
            setattr(sampler, name, w("sampler." + name, getattr(sampler, name)))
        return sampler

    def make_pruner(*args, **kwargs):
        pruner = original_pruner(*args, **kwargs)
        pruner.prune = w("pruner.prune", pruner.prune)
        return pruner

    hpo.studies.samplers.make_sampler, hpo.studies.samplers.make_pruner = make_sampler, make_pruner
    original_fit = hpo.runtime.runner.fit

    def fit(config, data, on_epoch=None, *args, **kwargs):
        def epoch_hook(metrics, checkpoint):
            return w("runner.on_epoch", on_epoch)(
                metrics, w("fit.checkpoint_snapshot", checkpoint))

        return original_fit(config, data, epoch_hook if on_epoch else None, *args, **kwargs)

    hpo.runtime.runner.fit = w("fit (training + rest)", fit)
    hpo.runtime.runner.config_from_trial = w("runner.config_from_trial", hpo.runtime.runner.config_from_trial)
    hpo.training.train.build_model = w("fit.build_model", hpo.training.train.build_model)
    hpo.views.plots.plot_learning_curve = w("artifacts.plot_png", hpo.views.plots.plot_learning_curve)
    hpo.store.artifacts.upload_artifact = w("artifacts.upload", hpo.store.artifacts.upload_artifact)
    _wrap_methods(timers, hpo.runtime.runner.TrialRunner, {
        "run": "runner", "_record": "runner.record", "_resume": "runner.resume"})
    _wrap_methods(timers, hpo.store.artifacts.ArtifactPublisher, {
        "curve": "artifacts.curve", "config": "artifacts.config", "model_if_best": "artifacts.best_model"})
    _wrap_methods(timers, hpo.training.checkpoints.CheckpointStore, {
        "save": "checkpoint.save", "load": "checkpoint.load", "remove": "checkpoint.remove"})
    # Not run_one: it spans a whole trial and the gaps on both sides of it (see _breakdown)
    _wrap_methods(timers, hpo.runtime.loop.WorkerLoop, {"_tell": "loop.tell"})
    hpo.runtime.loop.count_trials = w("loop.count_trials", hpo.runtime.loop.count_trials)
    hpo.runtime.loop.gives_way = w("loop.gives_way", hpo.runtime.loop.gives_way)
    hpo.studies.budget.stored_budget = w("loop.stored_budget", hpo.studies.budget.stored_budget)
    # Labelled storage.*: the reaper's own query bypasses the storage's public methods
    _wrap_methods(timers, hpo.runtime.reaper.Reaper, {
        "reap": "reaper.reap", "_running_heartbeats": "storage.running_heartbeats"})
    _wrap_methods(timers, hpo.runtime.progress.Progress, {
        "epoch": "progress.epoch", "trial_done": "progress.trial_done",
        "_count_finished": "progress._count_finished"})


def _breakdown(events, start: float, end: float) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for thread, category, s, e, exclusive in events:
        if thread == "MainThread" and e > start and s < end:
            out[category] += exclusive
    return out


def part_b(args) -> dict:
    import cProfile
    import pstats

    import optuna

    from hpo.runtime.worker import run_worker, setup_logging

    timers = Timers()
    instrument(timers)
    setup_logging(quiet=True)
    _quiet()
    profiler = cProfile.Profile() if args.profile else None
    with scratch_database(args.pg, "orchb") as url, tempfile.TemporaryDirectory() as artifacts:
        worker_args = _worker_args(url, artifacts, [
            "--n-trials", str(args.trials), "--epochs", str(args.epochs),
            "--train-size", str(args.train_size), "--seed", "0"])
        worker_args.study, worker_args.space = "stage1_layers", None  # a stage's own study
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        code = run_worker(worker_args, "cpu")
        if profiler:
            profiler.disable()
        total = time.perf_counter() - started
        storage = optuna.storages.RDBStorage(url)
        try:
            trials = optuna.load_study(study_name="stage1_layers",
                                       storage=storage).get_trials(deepcopy=False)
        finally:
            storage.engine.dispose()

    rows, within, between = [], defaultdict(float), defaultdict(float)
    trials = sorted((t for t in trials if t.datetime_complete), key=lambda t: t.datetime_start)
    for i, t in enumerate(trials):
        ds, dc = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
        wall = dc - ds
        history = t.user_attrs.get("history", [])
        # "seconds" also counts an epoch that diverged (it has no history row)
        training = t.user_attrs.get("seconds", sum(h["seconds"] for h in history))
        parts = _breakdown(timers.events, ds, dc)
        fit_rest = parts.pop("fit (training + rest)", 0.0) - training
        parts["fit.rest (loop, .item() syncs, not in epoch seconds)"] = fit_rest
        for k, v in parts.items():
            within[k] += v
        gap = None
        if i + 1 < len(trials):
            nxt = trials[i + 1].datetime_start.timestamp()
            gap = nxt - dc
            for k, v in _breakdown(timers.events, dc, nxt).items():
                between[k] += v
        top = sorted(parts.items(), key=lambda kv: -kv[1])[:4]
        row = {"part": "b", "trial": t.number, "state": t.state.name, "epochs": len(history),
               "conv_layers": t.params.get("conv_layers"), "batch_size": t.params.get("batch_size"),
               "wall_s": round(wall, 3), "training_s": round(training, 3),
               "non_training_s": round(wall - training, 3),
               "share": round(1 - training / wall, 4) if wall else None,
               "gap_to_next_trial_s": None if gap is None else round(gap, 3),
               "top_non_training_ms": {k: round(v * 1000, 1) for k, v in top}}
        rows.append(row)
        print(json.dumps(row), flush=True)

    shares = [r["share"] for r in rows if r["share"] is not None]
    walls = sum(r["wall_s"] for r in rows)
    trainings = sum(r["training_s"] for r in rows)
    gaps = sum(r["gap_to_next_trial_s"] or 0.0 for r in rows)
    n = max(1, len(rows))
    accounted = sum(within.values())
    later = [r["share"] for r in rows[1:] if r["share"] is not None]
    # The target is about trials of 3-10 s; a trial pruned after its first epoch is shorter.
    in_range = [r for r in rows if TARGET_SECONDS[0] <= r["wall_s"] <= TARGET_SECONDS[1]]
    in_range_wall = sum(r["wall_s"] for r in in_range)
    in_range_share = (round(1 - sum(r["training_s"] for r in in_range) / in_range_wall, 4)
                      if in_range_wall else None)
    summary = {
        "part": "b", "summary": True, "exit_code": code, "trials": len(rows),
        "states": {s: sum(r["state"] == s for r in rows) for s in sorted({r["state"] for r in rows})},
        "worker_total_s": round(total, 1),
        "share_mean": round(statistics.mean(shares), 4) if shares else None,
        "share_median": round(statistics.median(shares), 4) if shares else None,
        "share_max": round(max(shares), 4) if shares else None,
        "share_pooled": round(1 - trainings / walls, 4) if walls else None,
        # Including what the worker does between one trial's end and the next one's start.
        "share_pooled_with_gaps": round(1 - trainings / (walls + gaps), 4) if walls else None,
        # The first trial of a process still pays one-time costs that run_worker's warm-up
        # (imports only) does not: matplotlib's first figure in the first learning-curve plot.
        "share_mean_excluding_first": round(statistics.mean(later), 4) if later else None,
        "share_median_excluding_first": round(statistics.median(later), 4) if later else None,
        "share_max_excluding_first": round(max(later), 4) if later else None,
        "trials_of_3_to_10_s": len(in_range),
        "share_pooled_3_to_10_s": in_range_share,
        "share_max_3_to_10_s": max((r["share"] for r in in_range), default=None),
        "target": "< 0.02 pooled over trials of 3-10 s",
        "target_met": in_range_share is not None and in_range_share < 0.02,
        "within_trial_ms_per_trial": {k: round(v * 1000 / n, 1) for k, v in
                                      sorted(within.items(), key=lambda kv: -kv[1]) if v > 0.0005},
        "within_trial_unaccounted_ms_per_trial": round(
            ((walls - trainings) - accounted) * 1000 / n, 1),
        "between_trials_ms_per_gap": {k: round(v * 1000 / max(1, n - 1), 1) for k, v in
                                      sorted(between.items(), key=lambda kv: -kv[1]) if v > 0.0005},
        "mean_gap_ms": round(gaps * 1000 / max(1, n - 1), 1),
    }
    print(json.dumps(summary), flush=True)
    if profiler:
        stats = pstats.Stats(profiler).sort_stats("cumulative")
        names = [(f"{Path(f).name}:{line}({fn})", round(st[3], 3))
                 for (f, line, fn), st in stats.stats.items()]
        names.sort(key=lambda kv: -kv[1])
        print(json.dumps({"part": "b", "profile_top_cumulative_s": names[:args.profile]}),
              flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--pg", default=DEFAULT_PG,
                        help="PostgreSQL server URL; scratch databases are created and dropped on "
                             "it (default: $HPO_TEST_DATABASE_URL or postgres@127.0.0.1:5432)")
    parser.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4, 8], help="a: process counts (default 1,2,4,8)")
    parser.add_argument("--seconds", type=float, default=8,
                        help="a: wall time each process optimizes (default 8)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="a: rounds of (ours, plain) per process count (default 2)")
    parser.add_argument("--variants", type=lambda s: s.split(","), default=["ours", "plain"],
                        help="a: comma-separated, from plain and " + ", ".join(ABLATIONS)
                             + " (default ours,plain)")
    parser.add_argument("--heartbeat", type=int, default=10,
                        help="a: ours' --heartbeat (default 10, hpo-worker's default)")
    parser.add_argument("--trials", type=int, default=4, help="b: trials (default 4)")
    parser.add_argument("--epochs", type=int, default=2, help="b: epochs per trial (default 2)")
    parser.add_argument("--train-size", type=int, default=2000,
                        help="b: training images (default 2000)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="b: also cProfile the worker and print the N top cumulative entries")
    args = parser.parse_args()
    unknown = set(args.variants) - {"plain", *ABLATIONS}
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; valid: plain, {', '.join(ABLATIONS)}")
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hpo").setLevel(logging.ERROR)  # "builds on no stage; using defaults"
    _quiet()
    if args.part in ("a", "both"):
        part_a(args)
    if args.part in ("b", "both"):
        part_b(args)


if __name__ == "__main__":
    main()
