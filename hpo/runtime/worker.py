"""``hpo-worker --study NAME``: pull trials of one study from the shared storage until its budget
is spent. With several devices or jobs per device it supervises one child process per slot."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
import time
import warnings

import optuna

from hpo.errors import HpoError

log = logging.getLogger("hpo.runtime.worker")
GPU_CHECKPOINT_SECONDS = 30.0  # a GPU epoch can take a second, its checkpoint gigabytes


def build_parser() -> argparse.ArgumentParser:
    from hpo.flags import OneLineParser, at_least, between, one_of
    from hpo.studies.objectives import KNOWN as OBJECTIVES
    from hpo.training.precision import PRECISIONS
    from hpo.studies.study import MATMUL_PRECISIONS, PRUNERS, SAMPLERS

    p = OneLineParser(
        prog="hpo-worker", description=(
            "Run trials from a shared study database: of one stage study (--study NAME) or of "
            "the stages one after another (--chain). Start the same command on as many "
            "processes and machines as you like. Exit status 0 when done or stopped, 1 for a "
            "failure at run time, 2 for a usage error."))
    p.add_argument("--study", help="study name (a stage name, or any with --space)")
    p.add_argument("--chain", nargs="?", const="all", metavar="FIRST..LAST",
                   help="run the stages one after another, hands-free: all (the default: "
                        "stage1_layers..stage8_schedule) or a range such as "
                        "stage3_filters..stage8_schedule")
    p.add_argument("--protocol", metavar="FILE",
                   help="replay tuning by hand: the sweeps of a JSON file (or a shipped one: "
                        "reports) as coordinate descent, each run to its full epochs")
    p.add_argument("--chain-name",
                   help="the chain's (or protocol's) name; its stages are the studies "
                        "NAME.<stage> (default chain; a protocol: the file's name)")
    p.add_argument("--lr-window", type=at_least(1, float), metavar="FACTOR",
                   help="with --chain: each stage that changes the network also searches lr "
                        "within FACTOR of the inherited one (log scale; e.g. 4; default off)")
    p.add_argument("--space", help="stage to search when the study name is not a stage name")
    p.add_argument("--storage", help="database URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")
    p.add_argument("--artifacts", help="artifact folder (default: $HPO_ARTIFACTS, else beside the db)")
    p.add_argument("--n-trials", type=at_least(0),
                   help="study-wide trial budget shared by all workers (with --chain: per stage; "
                        "default: the chain's per-stage budgets)")
    p.add_argument("--timeout", type=at_least(0, float), help="stop starting trials after this many seconds")
    p.add_argument("--sampler", type=one_of(*SAMPLERS), help="tpe | random | grid | gp | cmaes (default tpe)")
    p.add_argument("--pruner", type=one_of(*PRUNERS), help="median | hyperband | none (default median)")
    p.add_argument("--objectives", type=one_of(*OBJECTIVES), help="accuracy | accuracy,time | accuracy,params")
    p.add_argument("--dataset", help="cifar10-sample | cifar10 | cifar100 | imagefolder:PATH")
    p.add_argument("--epochs", type=at_least(1),
                   help="epochs per trial (default: the stage's; with --chain: 10, every stage)")
    p.add_argument("--train-size", type=at_least(1), help="train on a subset of this many images")
    p.add_argument("--val-fraction", type=between(0, 1, float, open_ends=True),
                   help="share of the training set held out for validation (default 0.1)")
    p.add_argument("--seed", type=at_least(0), help="training seed; the sampler draws each trial from it and the trial's number")
    p.add_argument("--after", help="study whose best trial to freeze from (default: the stage "
                                   "this one builds on)")
    p.add_argument("--from", dest="from_file", help="freeze from an exported JSON instead")
    p.add_argument("--freeze-best-so-far", action="store_true",
                   help="freeze the predecessor's best now, even while it still has trials "
                        "running or queued (default: wait for it to finish)")
    p.add_argument("--devices", default="auto", help="auto | cpu | cuda:0,cuda:1,... (default auto)")
    p.add_argument("--jobs-per-device", type=at_least(1), default=1, help="worker processes per device")
    p.add_argument("--precision", type=one_of(*PRECISIONS),
                   help="auto | fp32 | bf16: a study setting, decided once when the study or chain "
                        "is created (auto: bf16 where the device computes it natively, else "
                        "fp32); every worker and hpo train use it (default auto)")
    p.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    p.add_argument("--matmul-precision", type=one_of(*MATMUL_PRECISIONS),
                   help="float32 matmul and convolution precision: highest | high (TF32) | "
                        "medium (a study setting; default highest)")
    p.add_argument("--deterministic", action="store_true",
                   help="cuDNN's deterministic algorithms, so a re-train on a GPU is exact (a "
                        "study setting; slower convolutions; default off)")
    p.add_argument("--heartbeat", type=at_least(1), default=10, help="heartbeat interval in seconds")
    p.add_argument("--grace", type=at_least(1), default=30,
                   help="seconds without heartbeat before a trial is failed and re-queued")
    p.add_argument("--max-retries", type=at_least(0), default=3,
                   help="a trial whose worker died (was found without a heartbeat) more than "
                        "this many times is left failed; stop signals do not count (default 3)")
    p.add_argument("--outage-timeout", type=at_least(0, float), default=600,
                   help="how long to wait for an unreachable database before giving up")
    p.add_argument("--checkpoint-every", type=at_least(0), default=1, help="epochs between checkpoints (0: never)")
    p.add_argument("--checkpoint-seconds", type=at_least(0, float),
                   help="and at least this many seconds between a trial's checkpoints "
                        f"(default: {GPU_CHECKPOINT_SECONDS:g} on a GPU, 0 on the CPU)")
    p.add_argument("--quiet", action="store_true", help="warnings only")
    p.add_argument("--debug", action="store_true", help="tracebacks for errors")
    return p


def setup_logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _warm_up() -> None:
    """Pay a one-time import cost now, not inside the first trial's wall time: torch.optim loads
    torch._dynamo on first use (about 3 s)."""
    import torch._dynamo  # noqa: F401

    # Everything loaded so far lives as long as the process: exempt it from the garbage
    # collector's full passes, which otherwise walk torch's millions of objects between trials.
    gc.collect()
    gc.freeze()


def stop_on_signals() -> threading.Event:
    """Set on SIGTERM/SIGINT. Installed first thing, so a signal during start-up (imports, data
    loading) ends the worker cleanly (exit 0, no trial started) instead of killing it."""
    stop = threading.Event()

    def on_signal(signum, frame):
        if not stop.is_set():
            log.warning("%s received: failing the current trial (if any) so it is re-run, then "
                        "exiting", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


FALLBACK_POINTS = 20_000  # a finite space up to this size gets untried points after a refusal


class _Session:
    """What one worker process keeps across the studies it runs (a chain runs several): the
    storage, the device, the data (loaded once) and the stop signal."""

    def __init__(self, args: argparse.Namespace, device, url: str, storage,
                 stop: threading.Event):
        self.args, self.device, self.url, self.storage, self.stop = args, device, url, storage, stop
        self.deadline = None if args.timeout is None else time.monotonic() + args.timeout
        self._data, self._store, self._ready = {}, None, False

    def data(self, settings):
        from hpo.training import data as data_module
        from hpo.store.storage import open_artifact_store
        from hpo.training.train import configure_backend

        # Before the data reaches the device: cuBLAS reads its deterministic workspace setting
        # when CUDA work first needs it.
        configure_backend(self.device, settings.matmul_precision, settings.deterministic)
        key = (settings.dataset, settings.val_fraction, settings.split_seed, settings.train_size)
        if key not in self._data:
            self._data[key] = data_module.load(settings.dataset, self.device,
                                               settings.val_fraction, settings.split_seed,
                                               settings.train_size)
        if not self._ready:
            _warm_up()
            self._store = open_artifact_store(self.args.artifacts, self.url)
            self._ready = True
        return self._data[key], self._store

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def run_study(self, study_name: str, space: str | None, flags: dict, after: str | None,
                  from_file: str | None, freeze_best_so_far: bool = False,
                  default_n_trials: int | None = None, chain_base: bool = False,
                  base: tuple[dict, dict] | None = None) -> None:
        """Join (or create) one study and run its trials until its budget is spent (nothing
        running elsewhere either), the deadline passes or a stop signal."""
        from hpo.store.artifacts import ArtifactPublisher
        from hpo.studies.budget import stored_budget, tally
        from hpo.training.checkpoints import CheckpointStore
        from hpo.studies.counts import count_trials
        from hpo.runtime.heartbeat import Heartbeat
        from hpo.runtime.loop import WorkerLoop
        from hpo.studies.objectives import parse_objectives
        from hpo.runtime.progress import Progress
        from hpo.runtime.reaper import Reaper, ReaperThread
        from hpo.runtime.runner import TrialRunner, TrialSpec
        from hpo.studies.seeding import TrialSeeded
        from hpo.studies.space import possible_points
        from hpo.studies.study import make_pruner, make_sampler, open_study
        from hpo.studies.untried import UntriedPoints

        args, storage, stop = self.args, self.storage, self.stop
        study, stage, settings, frozen = open_study(storage, study_name, space, flags, after,
                                                    from_file, freeze_best_so_far,
                                                    default_n_trials, chain_base,
                                                    device=self.device, base=base)
        # Every worker gets the study's seed: samplers draw per trial from it (hpo.studies.seeding).
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=make_sampler(settings, stage, frozen, settings.seed),
                                  pruner=make_pruner(settings))
        reaper = Reaper(storage)
        reaper.reap(study, force=True)  # pick up what dead workers left behind
        budget = lambda: stored_budget(storage, study_name)  # noqa: E731 (--update may raise it)
        counts = tally(study)
        if counts.left(budget()) <= 0 and counts.counts[optuna.trial.TrialState.RUNNING] == 0:
            if args.chain is None and args.protocol is None:
                print(f"study {study_name!r}: budget of {budget()} trials already used; "
                      "nothing to do")
            else:
                log.info("%s: finished (budget of %d trials used)", study_name, budget())
            return

        data, store = self.data(settings)
        if stop.is_set():
            log.warning("stopped during start-up; no trial started")
            return
        objectives = parse_objectives(settings.objectives)
        seconds = args.checkpoint_seconds
        if seconds is None:
            seconds = GPU_CHECKPOINT_SECONDS if self.device.type == "cuda" else 0.0
        spec = TrialSpec(stage, frozen, settings.epochs, settings.seed, objectives,
                         prunable=objectives.single and settings.pruner != "none",
                         bf16=settings.precision == "bf16",
                         checkpoint_every=args.checkpoint_every, checkpoint_seconds=seconds)
        progress = Progress(study, budget(), settings.epochs)
        study_id = storage.get_study_id_from_name(study_name)
        publisher = ArtifactPublisher(store, best_value=lambda: count_trials(storage, study_id).best)
        runner = TrialRunner(spec, data, CheckpointStore(store), publisher, stop,
                             on_epoch=progress.epoch)
        heartbeat = Heartbeat(storage)
        runner.lost = heartbeat.lost  # a trial failed under a live worker stops at once
        if settings.sampler == "grid":
            fallback = study.sampler  # the grid's next unvisited point, and its value lists
        else:
            points = None if settings.exhaustive else possible_points(
                stage, frozen, FALLBACK_POINTS, data.image_size)
            fallback = TrialSeeded(lambda seed: UntriedPoints(points, seed), settings.seed) \
                if points else None
        loop = WorkerLoop(study, storage, runner, budget, reaper, heartbeat, stop,
                          # Polling while others finish the budget is two small queries:
                          # often enough that a chain's workers move on together.
                          wait_interval=min(args.heartbeat, 2), deadline=self.deadline,
                          on_trial_done=lambda t, counts: progress.trial_done(
                              t, counts.finished, counts.best),
                          fallback_sampler=fallback)
        log.info("worker on %s joins study %r (stage %s, %s sampler, %s pruner, budget %d trials%s, "
                 "%d epochs, dataset %s, %s%s)", self.device, study_name, stage.name,
                 settings.sampler, settings.pruner, budget(),
                 " (every point of the space once)" if settings.exhaustive else "",
                 settings.epochs, settings.dataset, settings.precision,
                 ", deterministic" if settings.deterministic else "")
        _warn_if_emulated(settings.precision, self.device)
        reaper_thread = ReaperThread(reaper, lambda: (study,))
        heartbeat.start()
        reaper_thread.start()
        try:
            loop.run()
        finally:
            reaper_thread.halt.set()
            # A check under way finishes: a trial it failed is queued again before we exit.
            reaper_thread.join(timeout=60)
            heartbeat.stop()
            progress.close()


def _warn_if_emulated(precision: str, device) -> None:
    """A bf16 study joined from a device without bf16 units runs, but slower than float32."""
    from hpo.training.precision import native_bf16

    if precision == "bf16":
        native, why = native_bf16(device)
        if not native:
            log.warning("this study trains in bf16 but %s: its trials run emulated, slower than "
                        "fp32 would", why)


def run_worker(args: argparse.Namespace, device_name: str,
               stop: threading.Event | None = None) -> int:
    """One worker process: join the study (or each stage of the chain in turn), then run trials
    until the budget or a signal."""
    stop = stop or stop_on_signals()
    from hpo.store.storage import check_artifact_folder, open_storage, resolve_url
    from hpo.studies.study import preflight, settings_flags
    from hpo.training.train import resolve_device

    device = resolve_device(device_name)
    url = resolve_url(args.storage)
    chain = protocol = None
    if args.protocol is not None:
        from hpo.studies.chain import check_name
        from hpo.studies.protocol import load

        protocol = load(args.protocol)
        args.chain_name = args.chain_name or check_name(protocol.name)
    if args.chain is not None:
        from hpo.studies.chain import parse_chain

        chain = parse_chain(args.chain)
    first = "stage1_layers" if protocol else None  # a stage name only to pass the check
    preflight(url, first or (args.study if chain is None else chain[0].name),
              first or (args.space if chain is None else chain[0].name),
              settings_flags(args), args.after, args.from_file)
    check_artifact_folder(args.artifacts, url)
    storage = open_storage(url, heartbeat=args.heartbeat, grace=args.grace,
                           outage_timeout=args.outage_timeout, max_retries=args.max_retries)
    session = _Session(args, device, url, storage, stop)
    try:
        if args.protocol is not None:
            from hpo.studies.protocol import run_protocol

            run_protocol(session, protocol, args.chain_name, args.from_file)
        elif chain is None:
            session.run_study(args.study, args.space, settings_flags(args), args.after,
                              args.from_file, args.freeze_best_so_far)
        else:
            run_chain(session, chain)
        return 0
    finally:
        storage.dispose()  # release connections now, not at interpreter exit


def run_chain(session: _Session, stages) -> None:
    """Each stage of the chain in turn; a stage starts once its predecessor is finished."""
    from hpo.studies import chain as chains
    from hpo.studies.study import settings_flags

    args, storage = session.args, session.storage
    record = chains.open_chain(storage, args.chain_name, stages,
                               {**settings_flags(args), "lr_window": args.lr_window},
                               session.device)
    log.info("chain %r trains in %s (decided when the chain was created)", args.chain_name,
             chains.stage_flags(record)["precision"])
    existing = {s.study_name for s in storage.get_all_studies()}
    previous = None
    if args.after is None and stages[0].builds_on is not None:
        # A partial chain builds on the same chain's earlier stage where that exists.
        inherited = f"{args.chain_name}.{stages[0].builds_on}"
        previous = inherited if inherited in existing else None
    from hpo.views.chain_view import write_chain_note

    for i, stage in enumerate(stages):
        name = chains.study_name(args.chain_name, stage)
        log.info("chain %r: stage %d of %d, %s", args.chain_name, i + 1, len(stages), name)
        write_chain_note(storage, args.chain_name)
        after = previous if i else (args.after or previous)
        from_file = None if i else args.from_file
        space, base = stage.name, None
        if record.get("lr_window"):  # hpo.studies.lr_window: lr re-tuned where the network changes
            from hpo.studies.lr_window import chain_stage

            space, base = chain_stage(storage, name, stage, after, from_file, record["lr_window"])
        session.run_study(name, space, chains.stage_flags(record), after=after,
                          from_file=from_file, base=base,
                          default_n_trials=chains.stage_budget(stage, record), chain_base=True)
        if session.stop.is_set() or session.out_of_time():
            log.info("chain %r: stopped in %s; start the same command again to go on",
                     args.chain_name, name)
            return
        previous = name
    write_chain_note(storage, args.chain_name)
    log.info("chain %r finished: %s", args.chain_name, " -> ".join(s.name for s in stages))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if [args.study, args.chain, args.protocol].count(None) != 2:
        parser.error("give --study NAME (one stage), --chain [FIRST..LAST] (stages in turn) or "
                     "--protocol FILE (sweeps by hand)")
    if args.protocol is not None:
        from hpo.studies.protocol import check_flags

        check_flags(args, parser)
    elif args.chain_name is None:
        args.chain_name = "chain"
    from hpo.studies.chain import check_name

    try:
        if args.chain_name is not None:  # a protocol's default: its file's name (checked later)
            check_name(args.chain_name)
    except HpoError as e:
        parser.error(str(e))
    if args.bf16 and args.precision not in (None, "bf16"):
        parser.error(f"--bf16 contradicts --precision {args.precision}; give one of them")
    if args.lr_window is not None and args.chain is None:
        parser.error("--lr-window is a chain setting: give it with --chain")
    if args.chain is not None and args.space is not None:
        parser.error("--space names one study's stage; a chain's stages come from --chain")
    if args.chain is not None and args.freeze_best_so_far:
        parser.error("--freeze-best-so-far is for one stage started by hand; a chain waits for "
                     "each stage to finish")
    setup_logging(args.quiet)
    try:
        from hpo.runtime.launcher import plan_slots, supervise

        slots = plan_slots(args.devices, args.jobs_per_device)
        if len(slots) == 1 and not slots[0].visible_devices:
            return run_worker(args, slots[0].device, stop_on_signals())
        return supervise(slots, sys.argv[1:] if argv is None else argv)
    except HpoError as e:
        if args.debug:
            raise
        print(f"hpo-worker: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
