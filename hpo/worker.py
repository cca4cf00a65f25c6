"""``hpo-worker --study NAME``: pull trials of one study from the shared storage until its budget
is spent. With several devices or jobs per device it supervises one child process per slot."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import warnings

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from hpo.errors import HpoError

log = logging.getLogger("hpo.worker")

# Trials that use up the study-wide budget. RUNNING ones count so that workers stop as soon as
# the budget is in flight; FAIL ones do not, because a failed trial is queued again.
BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpo-worker", description="Run trials of a stage study from a shared storage.")
    p.add_argument("--study", required=True, help="study name (a stage name, or any with --space)")
    p.add_argument("--space", help="stage to search when the study name is not a stage name")
    p.add_argument("--storage", help="database URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")
    p.add_argument("--artifacts", help="artifact folder (default: $HPO_ARTIFACTS, else beside the db)")
    p.add_argument("--n-trials", type=int, help="study-wide trial budget shared by all workers")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--sampler", help="tpe | random | grid | gp | cmaes (default tpe)")
    p.add_argument("--pruner", help="median | hyperband | none (default median)")
    p.add_argument("--objectives", help="accuracy | accuracy,time | accuracy,params")
    p.add_argument("--dataset", help="cifar10-sample | cifar10 | cifar100 | imagefolder:PATH")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the stage's)")
    p.add_argument("--train-size", type=int, help="train on a subset of this many images")
    p.add_argument("--val-fraction", type=float,
                   help="share of the training set held out for validation (default 0.1)")
    p.add_argument("--seed", type=int, help="training seed; also seeds the sampler (+ slot index)")
    p.add_argument("--after", help="study whose best trial to freeze from (default: the stage "
                                   "this one builds on)")
    p.add_argument("--from", dest="from_file", help="freeze from an exported JSON instead")
    p.add_argument("--devices", default="auto", help="auto | cpu | cuda:0,cuda:1,... (default auto)")
    p.add_argument("--jobs-per-device", type=int, default=1, help="worker processes per device")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on CUDA")
    p.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval in seconds")
    p.add_argument("--grace", type=int, default=30,
                   help="seconds without heartbeat before a trial is failed and re-queued")
    p.add_argument("--outage-timeout", type=float, default=600,
                   help="how long to wait for an unreachable database before giving up")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (0: never)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.add_argument("--debug", action="store_true", help="tracebacks for errors")
    return p


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


class StaleTrialReaper(threading.Thread):
    """Fails (and so re-queues) trials of dead workers every interval, whatever this worker's own
    trials are doing; plain Optuna only checks when a worker starts its next trial."""

    def __init__(self, study: optuna.Study, interval: float):
        from hpo.storage import REAPER_THREAD_NAME

        super().__init__(name=REAPER_THREAD_NAME, daemon=True)
        self.study, self.interval, self.halt = study, interval, threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.interval):
            try:
                optuna.storages.fail_stale_trials(self.study)
            except Exception as e:  # never let bookkeeping kill the worker
                log.warning("stale-trial check failed: %s", e)


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    return tally(study)[0]


def tally(study: optuna.Study) -> tuple[dict[TrialState, int], float | None]:
    """Trials by state and the study-wide best accuracy, from one read of the trial list."""
    counts, best = dict.fromkeys(TrialState, 0), None
    for t in study.get_trials(deepcopy=False):
        counts[t.state] += 1
        if t.state == TrialState.COMPLETE and t.values:
            best = t.values[0] if best is None else max(best, t.values[0])
    return counts, best


def budget_left(counts: dict[TrialState, int], n_trials: int) -> int:
    """Trials still to start: the budget minus those used, but never fewer than those waiting."""
    used = sum(counts[state] for state in BUDGET_STATES)
    return max(n_trials - used, counts[TrialState.WAITING])


class _QuietOverBudget(logging.Filter):
    """Drop Optuna's failure warnings for trials that gave way to the budget: bookkeeping, not
    errors (the progress line says "over budget")."""

    def __init__(self, numbers: set[int]):
        super().__init__()
        self.numbers = numbers

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith(f"Trial {n} failed") for n in self.numbers)


def _warm_up() -> None:
    """Pay one-time import costs now, not inside the first trial's wall time: torch.optim loads
    torch._dynamo on first use (about 3 s), the learning-curve plot loads matplotlib."""
    import torch._dynamo  # noqa: F401
    from matplotlib.backends import backend_agg  # noqa: F401


def _reaped(study: optuna.Study, trial_id: int | None) -> bool:
    return trial_id is not None and study._storage.get_trial(trial_id).state == TrialState.FAIL


def run_worker(args: argparse.Namespace, device_name: str) -> int:
    """One worker process: join the study, then run trials until the budget or a signal."""
    from hpo import data as data_module
    from hpo.objective import Objective, TrialFailed, WorkerStopping
    from hpo.progress import Progress
    from hpo.storage import open_artifact_store, open_storage, resolve_url
    from hpo.study import grid_size, make_pruner, make_sampler, open_study, settings_flags
    from hpo.train import resolve_device

    device = resolve_device(device_name)
    url = resolve_url(args.storage)
    storage = open_storage(url, heartbeat=args.heartbeat, grace=args.grace,
                           outage_timeout=args.outage_timeout)
    flags = settings_flags(args)
    study, stage, settings, frozen = open_study(storage, args.study, args.space, flags,
                                                args.after, args.from_file)
    n_trials = settings.n_trials
    if args.n_trials is None and settings.sampler == "grid":
        n_trials = grid_size(stage, frozen)
    slot = int(os.environ.get("HPO_WORKER_SLOT", "0"))
    sampler_seed = None if args.seed is None else args.seed + slot
    study = optuna.load_study(study_name=args.study, storage=storage,
                              sampler=make_sampler(settings, stage, frozen, sampler_seed),
                              pruner=make_pruner(settings))
    optuna.storages.fail_stale_trials(study)  # pick up what dead workers left behind
    if budget_left(count_states(study), n_trials) <= 0:
        print(f"study {args.study!r}: budget of {n_trials} trials already used; nothing to do")
        return 0

    data = data_module.load(settings.dataset, device, settings.val_fraction, settings.split_seed,
                            settings.train_size)
    _warm_up()
    store = open_artifact_store(args.artifacts, url)
    stop = threading.Event()
    progress = Progress(study, n_trials, settings.epochs)

    def on_signal(signum, frame):
        if not stop.is_set():
            log.warning("%s received: failing the current trial so it is re-run, then exiting",
                        signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    objective = Objective(stage, frozen, settings.epochs, settings.seed, data, store,
                          settings.objectives, stop, args.bf16, args.checkpoint_every,
                          on_epoch=progress.epoch, n_trials=n_trials)
    logging.getLogger("optuna.study._optimize").addFilter(_QuietOverBudget(objective.over_budget))

    def keep_going(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        counts, best = tally(study)  # one read serves the budget and the progress line
        progress.trial_done(trial, counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], best)
        waiting_logged = False
        while not stop.is_set() and budget_left(counts, n_trials) <= 0:
            # The budget is spent or in flight elsewhere. Stay while other trials run: if their
            # worker died, the reaper queues them again and this worker runs the retry.
            if counts[TrialState.RUNNING] == 0:
                break
            if not waiting_logged:
                log.info("budget in use: waiting for %d running trial(s) to finish or be "
                         "recovered", counts[TrialState.RUNNING])
                waiting_logged = True
            stop.wait(max(1, args.heartbeat))
            counts = count_states(study)
        if stop.is_set() or budget_left(counts, n_trials) <= 0:
            study.stop()

    log.info("worker on %s joins study %r (stage %s, %s sampler, %s pruner, budget %d trials, "
             "%d epochs, dataset %s)", device, args.study, stage.name, settings.sampler,
             settings.pruner, n_trials, settings.epochs, settings.dataset)
    reaper = StaleTrialReaper(study, max(1, args.heartbeat))
    reaper.start()
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    try:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                study.optimize(objective, timeout=timeout, callbacks=[keep_going],
                               catch=(TrialFailed,), gc_after_trial=False)
                break
            except WorkerStopping as e:
                failed = study._storage.get_trial(objective.current_trial_id)
                RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, failed)
                log.warning("%s; queued again as a waiting trial", e)
                break
            except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
                # Our trial was failed under us: a stale-trial check elsewhere judged this worker
                # dead (heartbeats late under heavy load). Its retry re-runs it; we go on.
                if not _reaped(study, objective.current_trial_id):
                    raise
                log.warning("trial %d was failed by a stale-trial check (heartbeat late); it "
                            "is queued again; continuing", study._storage.get_trial(
                                objective.current_trial_id).number)
                if stop.is_set() or budget_left(count_states(study), n_trials) <= 0:
                    break
    finally:
        reaper.halt.set()
        progress.close()
        storage.engine.dispose()  # release connections now, not at interpreter exit
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    try:
        from hpo.launcher import plan_slots, supervise

        slots = plan_slots(args.devices, args.jobs_per_device)
        if len(slots) == 1 and not slots[0].visible_devices:
            return run_worker(args, slots[0].device)
        return supervise(slots, sys.argv[1:] if argv is None else argv)
    except HpoError as e:
        if args.debug:
            raise
        print(f"hpo-worker: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
