"""Milliseconds per ask + tell with TPE on PostgreSQL as the study's history grows.

Variants, each on its own study in one scratch database, all with the same history:

- ``ours``: ``hpo.store.storage.open_storage`` (heartbeat on, as workers open it, so ``ask`` also
  records the heartbeat of the trial it claims) and the sampler of
  ``hpo.studies.samplers.make_sampler`` for a tpe Settings (TPESampler(constant_liar=True, multivariate=True));
- ``plain``: ``optuna.storages.RDBStorage(url)`` and ``TPESampler()``;
- ``ours-univariate``: ours' storage, TPESampler(constant_liar=True), to attribute the cost of
  multivariate TPE.

All variants share one study in a scratch database, so they see the same history. The search
space is stage-like: int, log floats, a float and categoricals (6 parameters). History is
prefilled with random finished trials, written in one bulk transaction through Optuna's own ORM
models (``study.add_trials`` takes ~50-100 ms a trial on a busy server), up to each size (default
100, 500, 1000, 2000); at each size the variants take turns in rounds of a few ask + tell (after
one unmeasured warm-up each), so machine noise hits all of them. ``sampler_ms`` is the time
inside the sampler's methods (its reads of the trials included). One JSON line per size and
variant, then a summary line.

    .venv/bin/python benchmarks/sampler_cost.py [--sizes 100,500,1000,2000] [--window 40]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # search_spaces lives at the repo root
    sys.path.insert(0, str(REPO_ROOT))

from _db import DEFAULT_PG, count_round_trips, scratch_database  # noqa: E402

VARIANTS = ("ours", "plain", "ours-univariate")
STUDY = "bench"


def distributions():
    from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                      IntDistribution)

    return {
        "conv_layers": IntDistribution(0, 4),
        "lr": FloatDistribution(1e-4, 1e-1, log=True),
        "batch_size": CategoricalDistribution([16, 32, 64, 128]),
        "dropout": FloatDistribution(0.0, 0.5),
        "optimizer": CategoricalDistribution(["sgd", "adam", "adamw", "rmsprop"]),
        "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
    }


def value_of(params: dict, rng: random.Random) -> float:
    return (0.7 - 0.05 * abs(params["conv_layers"] - 3) - 0.05 * abs(math.log10(params["lr"]) + 2.5)
            - 0.2 * abs(params["dropout"] - 0.2) + 0.02 * (params["optimizer"] == "adam")
            + 0.01 * (params["batch_size"] == 64) + rng.gauss(0, 0.01))


def random_trials(n: int, seed: int):
    """n finished trials with random parameters, the same for every variant."""
    import optuna

    rng, dists = random.Random(seed), distributions()
    trials = []
    for _ in range(n):
        params = {}
        for name, d in dists.items():
            if isinstance(d, optuna.distributions.CategoricalDistribution):
                params[name] = rng.choice(d.choices)
            elif isinstance(d, optuna.distributions.IntDistribution):
                params[name] = rng.randint(d.low, d.high)
            elif d.log:
                params[name] = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                params[name] = rng.uniform(d.low, d.high)
        trials.append(optuna.trial.create_trial(params=params, distributions=dists,
                                                value=value_of(params, rng)))
    return trials


def bulk_add_trials(url: str, study_name: str, trials) -> None:
    """Insert finished trials in one transaction, as rows of Optuna's RDB schema."""
    import sqlalchemy
    import sqlalchemy.orm
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with sqlalchemy.orm.Session(engine) as session:
            study_id = session.query(models.StudyModel).filter_by(
                study_name=study_name).one().study_id
            number = session.query(models.TrialModel).filter_by(study_id=study_id).count()
            for i, t in enumerate(trials):
                row = models.TrialModel(number=number + i, study_id=study_id, state=t.state)
                row.datetime_start, row.datetime_complete = t.datetime_start, t.datetime_complete
                session.add(row)
                for name, value in t.params.items():
                    dist = t.distributions[name]
                    session.add(models.TrialParamModel(
                        trial=row, param_name=name, param_value=dist.to_internal_repr(value),
                        distribution_json=distribution_to_json(dist)))
                stored, kind = models.TrialValueModel.value_to_stored_repr(t.value)
                session.add(models.TrialValueModel(trial=row, objective=0, value=stored,
                                                   value_type=kind))
            session.commit()
    finally:
        engine.dispose()


def open_variant(variant: str, url: str):
    """(study, sampler) as ours or plain Optuna would open them."""
    import optuna

    if variant == "plain":
        storage = optuna.storages.RDBStorage(url)
        sampler = optuna.samplers.TPESampler()
    else:
        from hpo.store.storage import open_storage
        from hpo.studies.samplers import make_sampler
        from hpo.studies.settings import Settings
        from search_spaces import DEFAULTS, get_stage

        storage = open_storage(url, heartbeat=10, grace=30)
        if variant == "ours":
            stage = get_stage("stage1_layers")
            sampler = make_sampler(Settings(stage=stage.name, sampler="tpe"), stage,
                                   dict(DEFAULTS), None)
        else:
            sampler = optuna.samplers.TPESampler(constant_liar=True)
    study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                direction="maximize", load_if_exists=True)
    return study, _time_sampler(sampler)


def _time_sampler(sampler) -> list[float]:
    """Accumulate the seconds spent in the sampler's methods into the returned one-item list."""
    spent = [0.0]
    for name in ("infer_relative_search_space", "sample_relative", "sample_independent",
                 "before_trial", "after_trial"):
        method = getattr(sampler, name)

        def timed(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - start

        setattr(sampler, name, timed)
    return spent


def _close(storage) -> None:
    """Release a variant's connections before the scratch database is dropped."""
    storage.remove_session()
    if hasattr(storage, "dispose"):  # hpo's RetryingStorage (ours)
        storage.dispose()
    else:  # Optuna's trial cache over a plain RDBStorage
        with contextlib.suppress(Exception):
            storage._backend.engine.dispose()


def ask_tell(study, rng: random.Random) -> None:
    trial = study.ask()
    params = {  # the suggest calls a stage makes; the same as distributions()
        "conv_layers": trial.suggest_int("conv_layers", 0, 4),
        "lr": trial.suggest_float("lr", 1e-4, 1e-1, log=True),
        "batch_size": trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
        "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        "optimizer": trial.suggest_categorical("optimizer", ["sgd", "adam", "adamw", "rmsprop"]),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    }
    study.tell(trial, value_of(params, rng))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--pg", default=DEFAULT_PG,
                        help="PostgreSQL server URL; a scratch database is created and dropped on "
                             "it (default: $HPO_TEST_DATABASE_URL or postgres@127.0.0.1:5432)")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[100, 500, 1000, 2000], help="history sizes (default 100,500,1000,2000)")
    parser.add_argument("--window", type=int, default=40,
                        help="measured ask+tell per variant and size (default 40)")
    parser.add_argument("--rounds", type=int, default=8,
                        help="the window is split into this many alternating rounds (default 8)")
    parser.add_argument("--variants", type=lambda s: s.split(","),
                        default=["ours", "plain", "ours-univariate"],
                        help=f"comma-separated from {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--budget", type=float, default=540,
                        help="seconds; sizes not started by then are skipped (default 540)")
    args = parser.parse_args()
    if set(args.variants) - set(VARIANTS):
        parser.error(f"unknown variants; valid: {', '.join(VARIANTS)}")

    import logging

    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.basicConfig(level=logging.WARNING)
    counts = count_round_trips()
    started = time.perf_counter()
    history = random_trials(max(args.sizes), seed=0)
    rows = []
    with scratch_database(args.pg, "sampler") as url:
        opened = {v: open_variant(v, url) for v in args.variants}
        filled = 0
        for size in sorted(args.sizes):
            if time.perf_counter() - started > args.budget:
                print(json.dumps({"size": size, "skipped": "time budget spent"}), flush=True)
                continue
            t0 = time.perf_counter()
            bulk_add_trials(url, STUDY, history[filled:size])
            filled = size
            prefill_s = time.perf_counter() - t0
            samples = {v: [] for v in args.variants}
            sampler_s = {v: 0.0 for v in args.variants}
            trips = {v: 0 for v in args.variants}
            rng = random.Random(size)
            for v, (study, _) in opened.items():  # warm-up: the cached storage reads the history
                ask_tell(study, rng)
            per_round = max(1, args.window // args.rounds)
            for r in range(args.rounds):
                order = args.variants if r % 2 == 0 else args.variants[::-1]
                for v in order:
                    study, spent = opened[v]
                    before = spent[0]
                    counts.clear()
                    for _ in range(per_round):
                        t = time.perf_counter()
                        ask_tell(study, rng)
                        samples[v].append(time.perf_counter() - t)
                    sampler_s[v] += spent[0] - before
                    trips[v] += sum(counts.values())
            for v in args.variants:
                ms = [s * 1000 for s in samples[v]]
                row = {"size": size, "variant": v, "n": len(ms),
                       "median_ms": round(statistics.median(ms), 1),
                       "mean_ms": round(statistics.mean(ms), 1),
                       "min_ms": round(min(ms), 1), "max_ms": round(max(ms), 1),
                       "sampler_ms_mean": round(sampler_s[v] * 1000 / len(ms), 1),
                       "rest_ms_mean": round(statistics.mean(ms) - sampler_s[v] * 1000 / len(ms), 1),
                       "round_trips_per_ask_tell": round(trips[v] / len(ms), 1),
                       "history_trials": len(opened[v][0].get_trials(deepcopy=False)),
                       "prefill_s": round(prefill_s, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        for study, _ in opened.values():
            _close(study._storage)
    summary = {"summary": True, "seconds": round(time.perf_counter() - started, 1),
               "median_ms": {str(size): {r["variant"]: r["median_ms"] for r in rows
                                         if r["size"] == size} for size in args.sizes},
               "ratio_ours_plain": {str(size): round(
                   next(r["median_ms"] for r in rows if r["size"] == size and r["variant"] == "ours")
                   / next(r["median_ms"] for r in rows if r["size"] == size and r["variant"] == "plain"), 2)
                   for size in args.sizes if {"ours", "plain"} <= {r["variant"] for r in rows
                                                                  if r["size"] == size}}}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
