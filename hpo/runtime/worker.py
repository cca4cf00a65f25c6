"""``hpo-worker --study NAME``: pull trials of one study from the shared storage until its budget
is spent. With several devices or jobs per device it supervises one child process per slot."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import warnings

import optuna

from hpo.errors import HpoError

from hpo.runtime.session import GPU_CHECKPOINT_SECONDS, RunOptions, Session
from hpo.studies.study import StudyRequest

log = logging.getLogger("hpo.runtime.worker")


def build_parser() -> argparse.ArgumentParser:
    from hpo.flags import OneLineParser, at_least
    from hpo.studies.settings import add_flags

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
    p.add_argument("--timeout", type=at_least(0, float), help="stop starting trials after this many seconds")
    p.add_argument("--after", help="study whose best trial to freeze from (default: the stage "
                                   "this one builds on)")
    p.add_argument("--from", dest="from_file", help="freeze from an exported JSON instead")
    p.add_argument("--freeze-best-so-far", action="store_true",
                   help="freeze the predecessor's best now, even while it still has trials "
                        "running or queued (default: wait for it to finish)")
    p.add_argument("--devices", default="auto", help="auto | cpu | cuda:0,cuda:1,... (default auto)")
    p.add_argument("--jobs-per-device", type=at_least(1), default=1, help="worker processes per device")
    add_flags(p)  # the study settings (hpo.studies.settings): dataset, epochs, budget, ...
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


def run_worker(args: argparse.Namespace, device_name: str,
               stop: threading.Event | None = None) -> int:
    """One worker process: join the study (or each stage of the chain in turn), then run trials
    until the budget or a signal."""
    stop = stop or stop_on_signals()
    from hpo.store.storage import check_artifact_folder, open_storage
    from hpo.store.urls import resolve_url
    from hpo.studies.settings import flags_from
    from hpo.studies.study import preflight
    from hpo.training.train import resolve_device

    device = resolve_device(device_name)
    url = resolve_url(args.storage)
    flags = flags_from(args)
    chain = protocol = None
    if args.protocol is not None:
        from hpo.studies.chain import check_name
        from hpo.studies.protocol_file import load

        protocol = load(args.protocol)
        args.chain_name = args.chain_name or check_name(protocol.name)
    if args.chain is not None:
        from hpo.studies.chain import parse_chain

        chain = parse_chain(args.chain)
    if protocol:  # a stage name only to pass the check
        first = StudyRequest("stage1_layers", "stage1_layers", flags, from_file=args.from_file)
    elif chain:
        first = StudyRequest(chain[0].name, chain[0].name, flags, args.after, args.from_file)
    else:
        first = StudyRequest(args.study, args.space, flags, args.after, args.from_file,
                             args.freeze_best_so_far)
    preflight(url, first)
    check_artifact_folder(args.artifacts, url)
    storage = open_storage(url, heartbeat=args.heartbeat, grace=args.grace,
                           outage_timeout=args.outage_timeout, max_retries=args.max_retries)
    session = Session(RunOptions.from_args(args), device, url, storage, stop)
    try:
        if protocol is not None:
            from hpo.studies.protocol import run_protocol

            run_protocol(session, protocol, args.chain_name, flags, args.from_file)
        elif chain is None:
            session.run_study(first)
        else:
            run_chain(session, chain, args.chain_name, flags, args.after, args.from_file)
        return 0
    finally:
        storage.dispose()  # release connections now, not at interpreter exit


def run_chain(session: Session, stages, chain_name: str, flags: dict,
              after: str | None = None, from_file: str | None = None) -> None:
    """Each stage of the chain in turn; a stage starts once its predecessor is finished."""
    from hpo.studies import chain as chains
    from hpo.views.chain_view import write_chain_note

    storage = session.storage
    record = chains.open_chain(storage, chain_name, stages,
                               {**flags, "lr_window": session.options.lr_window}, session.device)
    log.info("chain %r trains in %s (decided when the chain was created)", chain_name,
             chains.stage_flags(record)["precision"])
    existing = {s.study_name for s in storage.get_all_studies()}
    previous = None
    if after is None and stages[0].builds_on is not None:
        # A partial chain builds on the same chain's earlier stage where that exists.
        inherited = f"{chain_name}.{stages[0].builds_on}"
        previous = inherited if inherited in existing else None
    for i, stage in enumerate(stages):
        name = chains.study_name(chain_name, stage)
        log.info("chain %r: stage %d of %d, %s", chain_name, i + 1, len(stages), name)
        write_chain_note(storage, chain_name)
        stage_after = previous if i else (after or previous)
        stage_from = None if i else from_file
        space, base = stage.name, None
        if record.get("lr_window"):  # hpo.studies.lr_window: lr re-tuned where the network changes
            from hpo.studies.lr_window import chain_stage

            space, base = chain_stage(storage, name, stage, stage_after, stage_from,
                                      record["lr_window"])
        session.run_study(StudyRequest(
            name, space, chains.stage_flags(record), after=stage_after, from_file=stage_from,
            base=base, default_n_trials=chains.stage_budget(stage, record), chain_base=True))
        if session.stop.is_set() or session.out_of_time():
            log.info("chain %r: stopped in %s; start the same command again to go on",
                     chain_name, name)
            return
        previous = name
    write_chain_note(storage, chain_name)
    log.info("chain %r finished: %s", chain_name, " -> ".join(s.name for s in stages))


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
