"""``hpo create-study``: create one stage study (its settings and frozen base) before any worker
starts, or change an existing study's budget with ``--update``."""

from __future__ import annotations

import argparse

from hpo.errors import HpoError


def add_parser(sub, storage_flag) -> None:
    from hpo.studies.settings import add_flags

    c = sub.add_parser("create-study", help="create a stage study without running trials")
    storage_flag(c)
    c.add_argument("--study", required=True)
    c.add_argument("--space", help="stage to search when the study name is not a stage name")
    c.add_argument("--after", help="study whose best trial to freeze from")
    c.add_argument("--from", dest="from_file", help="freeze from an exported JSON instead")
    c.add_argument("--freeze-best-so-far", action="store_true",
                   help="freeze the predecessor's best now, even while it still runs")
    add_flags(c, help={"precision": "auto | fp32 | bf16 for every trial (default auto, decided "
                                    "here for this machine: pass it explicitly when creating "
                                    "from a machine without the workers' GPUs)"})
    c.add_argument("--skip-if-exists", action="store_true", help="succeed if it already exists")
    c.add_argument("--update", action="store_true",
                   help="change an existing study's budget (--n-trials); running workers follow")
    c.set_defaults(func=cmd_create_study)


def cmd_create_study(args: argparse.Namespace) -> int:
    from hpo.store.storage import open_storage
    from hpo.store.urls import resolve_url
    from hpo.studies.budget import update_budget
    from hpo.studies.settings import flag, flags_from
    from hpo.studies.study import StudyRequest, open_study, preflight

    flags = flags_from(args)
    request = StudyRequest(args.study, args.space, flags, args.after, args.from_file,
                           args.freeze_best_so_far)
    if args.update:
        others = [flag(k) for k, v in flags.items() if v is not None and k != "n_trials"]
        others += [name for name, value in (("--after", args.after), ("--from", args.from_file),
                                            ("--space", args.space)) if value is not None]
        if args.n_trials is None or others:
            raise HpoError("--update changes only the budget: pass --study and --n-trials alone"
                           + (f" (got {', '.join(others)})" if others else ""))
    else:
        preflight(resolve_url(args.storage), request)
    storage = open_storage(args.storage, outage_timeout=args.outage_timeout,
                           create=not args.update)
    exists = args.study in {s.study_name for s in storage.get_all_studies()}
    if args.update:
        if not exists:
            raise HpoError(f"--update: no study {args.study!r} in this storage")
        old, new = update_budget(storage, args.study, args.n_trials)
        print(f"study {args.study!r}: budget {old} -> {new} trials (running workers follow)")
        return 0
    if exists:
        if args.skip_if_exists:
            print(f"study {args.study!r} already exists; skipped")
            return 0
        raise HpoError(f"study {args.study!r} already exists; pass --skip-if-exists to accept that")
    study, stage, settings, _ = open_study(storage, request)
    print(f"created study {args.study!r} (stage {stage.name}, budget {settings.n_trials} trials, "
          f"{settings.epochs} epochs, {settings.sampler} sampler, {settings.precision}, "
          f"frozen from {study.user_attrs.get('frozen_from')})")
    return 0
