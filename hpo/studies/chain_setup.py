"""``hpo create-chain``: store a chain's record (its stages and shared settings) once, before any
worker starts, the way ``hpo create-study`` does for one study. Workers then start with just
``hpo-worker --chain RANGE --chain-name NAME`` and read the rest from the record. Running it again
with the same settings is harmless; other settings for an existing name are refused."""

from __future__ import annotations

import argparse

from hpo.errors import HpoError


def add_parser(sub, storage_flag) -> None:
    from hpo.studies.settings import add_flags

    c = sub.add_parser("create-chain", help="create a chain's record without running trials")
    storage_flag(c)
    c.add_argument("--chain", default="all", metavar="FIRST..LAST",
                   help="all (stage1_layers..stage8_schedule, the default) or a range such as "
                        "stage3_filters..stage8_schedule")
    c.add_argument("--chain-name", default="chain",
                   help="the chain's name; its stages are the studies NAME.<stage> (default chain)")
    # The settings a chain's workers share (hpo.studies.chain.SHARED), with hpo-worker's spelling.
    add_flags(c, help={"n_trials": "trial budget of every stage (default: the chain's per-stage "
                                   "budgets)",
                       "epochs": "epochs per trial (default 10)",
                       "precision": "auto | fp32 | bf16, decided here for this machine (default "
                                    "auto: bf16 where the device computes it natively)"})
    c.add_argument("--space", help=argparse.SUPPRESS)  # refused with a reason, see below
    c.set_defaults(func=cmd_create_chain)


def cmd_create_chain(args: argparse.Namespace) -> int:
    from hpo.studies.chain import check_name, open_chain, parse_chain, stage_budget
    from hpo.store.storage import open_storage
    from hpo.store.urls import resolve_url
    from hpo.studies.settings import flags_from
    from hpo.studies.study import StudyRequest, preflight

    if args.space is not None:
        raise HpoError("--space names one study's stage; a chain's stages come from --chain "
                       "(to run one stage, use hpo create-study --study NAME)")
    check_name(args.chain_name)
    stages = parse_chain(args.chain)
    flags = flags_from(args)
    # The first stage's checks (dataset, split) before the database is opened or created.
    preflight(resolve_url(args.storage), StudyRequest(stages[0].name, stages[0].name, flags))
    storage = open_storage(args.storage, outage_timeout=args.outage_timeout)
    try:
        existed = args.chain_name in {s.study_name for s in storage.get_all_studies()}
        record = open_chain(storage, args.chain_name, stages, flags)
    finally:
        storage.dispose()
    budgets = ", ".join(f"{s.name} {stage_budget(s, record)}" for s in stages)
    verb = "exists with these settings; kept" if existed else "created"
    print(f"chain {args.chain_name!r} {verb}: {stages[0].name}..{stages[-1].name} "
          f"({len(stages)} stages; trials per stage: {budgets}; {record['epochs']} epochs, "
          f"{record['sampler']} sampler, {record['pruner']} pruner)")
    return 0
