"""``hpo create-chain``: store a chain's record (its stages and shared settings) once, before any
worker starts, the way ``hpo create-study`` does for one study. Workers then start with just
``hpo-worker --chain RANGE --chain-name NAME`` and read the rest from the record. Running it again
with the same settings is harmless; other settings for an existing name are refused."""

from __future__ import annotations

import argparse

from hpo.errors import HpoError


def add_parser(sub, storage_flag) -> None:
    from hpo.flags import at_least, between, one_of
    from hpo.studies.objectives import KNOWN as OBJECTIVES
    from hpo.training.precision import PRECISIONS
    from hpo.studies.study import MATMUL_PRECISIONS, PRUNERS, SAMPLERS

    c = sub.add_parser("create-chain", help="create a chain's record without running trials")
    storage_flag(c)
    c.add_argument("--chain", default="all", metavar="FIRST..LAST",
                   help="all (stage1_layers..stage8_schedule, the default) or a range such as "
                        "stage3_filters..stage8_schedule")
    c.add_argument("--chain-name", default="chain",
                   help="the chain's name; its stages are the studies NAME.<stage> (default chain)")
    # The settings a chain's workers share (hpo.studies.chain.SHARED), with hpo-worker's spelling.
    c.add_argument("--n-trials", type=at_least(0),
                   help="trial budget of every stage (default: the chain's per-stage budgets)")
    c.add_argument("--sampler", type=one_of(*SAMPLERS), help="tpe | random | grid | gp | cmaes")
    c.add_argument("--pruner", type=one_of(*PRUNERS), help="median | hyperband | none")
    c.add_argument("--objectives", type=one_of(*OBJECTIVES),
                   help="accuracy | accuracy,time | accuracy,params")
    c.add_argument("--dataset", help="cifar10-sample | cifar10 | cifar100 | imagefolder:PATH")
    c.add_argument("--epochs", type=at_least(1), help="epochs per trial (default 10)")
    c.add_argument("--train-size", type=at_least(1), help="train on a subset of this many images")
    c.add_argument("--val-fraction", type=between(0, 1, float, open_ends=True),
                   help="share of the training set held out for validation (default 0.1)")
    c.add_argument("--seed", type=at_least(0), help="training and sampler seed")
    c.add_argument("--precision", type=one_of(*PRECISIONS),
                   help="auto | fp32 | bf16, decided here for this machine (default auto: bf16 "
                        "where the device computes it natively)")
    c.add_argument("--bf16", action="store_true", help="the same as --precision bf16")
    c.add_argument("--matmul-precision", type=one_of(*MATMUL_PRECISIONS),
                   help="float32 matmul and convolution precision: highest | high | medium")
    c.add_argument("--deterministic", action="store_true",
                   help="cuDNN's deterministic algorithms (exact re-trains on a GPU; slower)")
    c.add_argument("--space", help=argparse.SUPPRESS)  # refused with a reason, see below
    c.set_defaults(func=cmd_create_chain)


def cmd_create_chain(args: argparse.Namespace) -> int:
    from hpo.studies.chain import check_name, open_chain, parse_chain, stage_budget
    from hpo.store.storage import open_storage, resolve_url
    from hpo.studies.study import preflight, settings_flags

    if args.space is not None:
        raise HpoError("--space names one study's stage; a chain's stages come from --chain "
                       "(to run one stage, use hpo create-study --study NAME)")
    check_name(args.chain_name)
    stages = parse_chain(args.chain)
    flags = settings_flags(args)
    # The first stage's checks (dataset, split) before the database is opened or created.
    preflight(resolve_url(args.storage), stages[0].name, stages[0].name, flags, None, None)
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
