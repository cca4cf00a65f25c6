"""``hpo``: train, stages, status, export, dashboard, report. Errors are one line: exit 2 for a
usage error, 1 for a failure at run time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hpo.errors import HpoError


def cmd_train(args: argparse.Namespace) -> int:
    from hpo.training import data
    from hpo.training.checkpoints import save_model
    from hpo.training.config import config_from_document, load_json
    from hpo.views.export import select_document
    from hpo.training.train import (configure_backend, evaluate, fit, resolve_device,
                                     set_cpu_threads)

    if args.output:
        check_output_file(args.output)
    if args.dataset is not None:
        data.check_dataset_name(args.dataset)
    doc = select_document(load_json(args.config), args.config)
    config = config_from_document(doc, args.config)
    if args.epochs is not None:
        config = config.replace(epochs=args.epochs)
    dataset = args.dataset or doc.get("dataset", "cifar10-sample")
    train_size = args.train_size if args.train_size is not None else doc.get("train_size")
    device = resolve_device(args.device)
    threads = args.threads
    if threads is None and str(doc.get("device") or "cpu") == "cpu":
        threads = doc.get("threads")
    if threads is not None and device.type == "cpu":
        if threads < 1:
            raise HpoError(f"--threads {threads} is invalid; it must be 1 or more")
        # the same thread count as the trial: CPU float reductions, hence results, depend on it
        set_cpu_threads(threads)
        print(f"{threads} CPU thread(s){'' if args.threads is not None else ', as the trial ran'}")
    # Precision is part of the result: the trial's unless overridden (hpo.training.precision).
    precision, why = train_precision(args, doc, device)
    deterministic = args.deterministic or bool(doc.get("deterministic", False))
    configure_backend(device, args.matmul_precision or doc.get("matmul_precision") or "highest",
                      deterministic)
    print(f"precision {precision} ({why})" + (", deterministic" if deterministic else ""))
    bf16 = precision == "bf16"
    images = data.load(dataset, device, doc.get("val_fraction", 0.1), doc.get("split_seed", 0),
                       train_size)

    def show(m, _checkpoint):
        print(f"epoch {m.epoch}/{config.epochs}  train_loss {m.train_loss:.4f}  "
              f"train_acc {m.train_acc:.4f}  val_loss {m.val_loss:.4f}  val_acc {m.val_acc:.4f}  "
              f"{m.seconds:.1f}s", flush=True)

    result = fit(config, images, on_epoch=None if args.quiet else show, bf16=bf16)
    if result.status == "diverged":
        print(f"diverged: {result.reason}")
        return 2
    _, test_acc = evaluate(result.model, images, images.test, bf16)
    images_seen = sum(len(images.train) for _ in result.history)
    print(f"validation accuracy {result.final_val_acc:.4f} (last epoch: these weights; "
          f"best epoch {result.best_val_acc:.4f})")
    print(f"test accuracy {test_acc:.4f}")
    print(f"parameters {result.params:,}; {result.seconds:.1f}s training, "
          f"{images_seen / result.seconds:,.0f} images/s on {device}")
    if doc.get("value") is not None and "history" in doc:
        print(f"exported validation accuracy {doc['value']:.4f}")
    if args.output:
        save_model(args.output, result.model, config.to_dict(), classes=images.classes,
                   history=result.history_dicts())
        print(f"checkpoint written to {args.output}")
    return 0


def train_precision(args: argparse.Namespace, doc: dict, device) -> tuple[str, str]:
    """(fp32 or bf16, why) for hpo train: --precision/--bf16, else the exported trial's, else
    auto for this device."""
    from hpo.training.precision import flag_value, from_record, resolve

    asked = flag_value(args)
    if asked is None and ("precision" in doc or "bf16" in doc):
        return from_record(doc), "as the trial ran"
    return resolve(asked, device)


def check_output_file(output: str) -> None:
    """An output file must be writable where asked, checked before any work is done."""
    path = Path(output)
    if path.is_dir():
        raise HpoError(f"-o {output!r} is invalid: it is a folder; allowed: a file path")
    if not path.parent.is_dir():
        raise HpoError(f"-o {output!r} is invalid: folder {str(path.parent)!r} does not exist; "
                       "allowed: a file in an existing folder")


def cmd_stages(args: argparse.Namespace) -> int:
    from hpo.studies.stage_budgets import table
    from search_spaces import all_stages

    print(table(list(all_stages().values())))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hpo.views.status import status_table
    from hpo.store.storage import open_storage

    print(status_table(open_storage(args.storage, outage_timeout=args.outage_timeout,
                                    create=False), args.study))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hpo.views.export import export
    from hpo.store.storage import open_storage

    if args.output:
        check_output_file(args.output)
    doc = export(open_storage(args.storage, outage_timeout=args.outage_timeout, create=False),
                 args.study,
                 args.top, args.trial)
    text = json.dumps(doc, indent=2)
    if args.output:
        Path(args.output).write_text(text + "\n")
        print(f"exported {args.study} to {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpo.views.dashboard import serve

    serve(args.storage, args.artifacts, args.host, args.port)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpo.views.report import write_report
    from hpo.store.storage import open_storage

    if Path(args.output).exists() and not Path(args.output).is_dir():
        raise HpoError(f"-o {args.output!r} is invalid: it is a file; allowed: a folder "
                       "(created if missing)")
    storage = open_storage(args.storage, outage_timeout=args.outage_timeout, create=False)
    names = args.study or sorted(s.study_name for s in storage.get_all_studies())
    known = {s.study_name for s in storage.get_all_studies()}
    for name in names:
        if name not in known:
            raise HpoError(f"unknown study {name!r}; studies here: {', '.join(sorted(known)) or 'none'}")
    for path in write_report(storage, names, args.output):
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hpo.flags import OneLineParser, at_least, between
    from hpo.studies import chain_setup, study_setup
    from hpo.studies.settings import add_flags

    p = OneLineParser(prog="hpo", description=(
        "Look at, export and re-train what hpo-worker searched: list the stages and their "
        "budgets, show each study's progress, export the best trial, train a configuration, "
        "open the dashboard, write a report. Errors are one line; exit status 2 for a usage "
        "error, 1 for a failure at run time. Each command has --help."))
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", required=True)

    def storage_flag(q):
        q.add_argument("--storage", help="database URL (default: $HPO_STORAGE, else sqlite:///hpo.db)")
        q.add_argument("--outage-timeout", type=at_least(0, float), default=60,
                       help="seconds to wait for a database that goes away mid-command (default 60)")

    t = sub.add_parser("train", help="train one configuration (a config or an export JSON)")
    t.add_argument("config", help="a config JSON, or what hpo export wrote")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_flags(t, ("dataset", "epochs", "train_size", "precision", "matmul_precision",
                  "deterministic"), help={
        "dataset": "default: the export's dataset, else cifar10-sample",
        "epochs": "override the config's epochs",
        "precision": "auto | fp32 | bf16 (default: as the exported trial ran, else auto: bf16 "
                     "where the device computes it natively)",
        "matmul_precision": "highest | high | medium (default: as the exported trial ran)",
        "deterministic": "cuDNN's deterministic algorithms (default: as the exported trial ran)"})
    t.add_argument("--threads", type=at_least(1),
                   help="CPU threads (default: the export's, so results match the trial)")
    t.add_argument("-o", "--output", help="write the trained model's checkpoint here")
    t.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    t.set_defaults(func=cmd_train)

    study_setup.add_parser(sub, storage_flag)  # create-study
    chain_setup.add_parser(sub, storage_flag)  # create-chain

    s = sub.add_parser("stages", help="the stages: what each builds on and searches, and its budget "
                                          "under --chain and as a single --study run")
    s.set_defaults(func=cmd_stages)

    st = sub.add_parser("status", help="trials by state, best value and running trials per study")
    storage_flag(st)
    st.add_argument("--study", help="only this study")
    st.set_defaults(func=cmd_status)

    e = sub.add_parser("export", help="export the best (or a chosen) trial as JSON")
    storage_flag(e)
    e.add_argument("--study", required=True)
    e.add_argument("-o", "--output", help="file to write (default: standard output)")
    e.add_argument("--top", type=at_least(1), default=1, help="export the K best trials")
    e.add_argument("--trial", type=at_least(0), help="export this trial number (e.g. a Pareto point)")
    e.set_defaults(func=cmd_export)

    d = sub.add_parser("dashboard", help="optuna-dashboard on the same storage, with artifacts")
    storage_flag(d)
    d.add_argument("--artifacts", help="artifact folder (default: $HPO_ARTIFACTS, else beside the db)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=between(1, 65535), default=8080)
    d.set_defaults(func=cmd_dashboard)

    r = sub.add_parser("report", help="PNG plots and one offline HTML page per storage")
    storage_flag(r)
    r.add_argument("--study", action="append", help="study to include (repeatable; default all)")
    r.add_argument("-o", "--output", default="report", help="output folder (default: report)")
    r.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return args.func(args)
    except HpoError as e:
        if args.debug:
            raise
        print(f"hpo: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
