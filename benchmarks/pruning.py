"""What the median pruner saves on real CIFAR-10: the same stage, sampler and seed, run once with
``--pruner median`` and once with ``--pruner none`` (``--pruners median,hyperband`` adds
Hyperband, compared with the same unpruned run).

Each run is the real ``hpo-worker`` on a fresh study in a temporary SQLite database. Printed: one
JSON line per run (total epochs trained = sum over trials of len(history), trials pruned and why,
best validation accuracy, wall time) and a summary line with the targets, for each pruner:

- it trains >= 40% fewer epochs than no pruning;
- its best validation accuracy is within 1 point (0.01) of no pruning's.

Both runs start with the same sampler seed, so their first trials are identical; once TPE leaves
its random start-up phase it conditions on finished trials, pruned ones included, and the two
runs diverge. The summary reports the first trial where their parameters differ.

A trial whose loss becomes NaN ends as pruned ("diverged") in every run alike; the epoch in which
it diverged is not in its history, so it is not counted.

The defaults are CPU-sized (a training subset, a smaller validation split, few epochs, one torch
thread): about 8 minutes on 2 quiet cores, 14 on busy ones. On a GPU, e.g.:

    .venv/bin/python benchmarks/pruning.py --device cuda --train-size 45000 --val-fraction 0.1 \\
        --epochs 15 --n-trials 30 --threads 0
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import _studies
from _studies import emit, resolve_dataset, run_worker, summarise

TARGET_EPOCH_SAVINGS = 0.40
TARGET_ACC_GAP = 0.01


def first_difference(a: list[dict], b: list[dict]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Output: JSON lines on stdout; progress on stderr.")
    p.add_argument("--space", default="stage1_layers", help="stage to search (default %(default)s)")
    p.add_argument("--sampler", default="tpe", help="default %(default)s")
    p.add_argument("--n-trials", type=int, default=16, help="trials per run (default %(default)s)")
    p.add_argument("--epochs", type=int, default=6, help="epochs per trial (default %(default)s)")
    p.add_argument("--pruners", default="median",
                   help="pruners to compare with --pruner none, comma-separated: median, "
                        "hyperband (default %(default)s)")
    p.add_argument("--device", default="cpu", help="hpo-worker --devices (default %(default)s)")
    _studies.add_run_flags(p, train_size=1000)
    args = p.parse_args()
    _studies.setup_logging()

    tmp = Path(tempfile.mkdtemp(prefix="hpo-pruning-"))
    url = f"sqlite:///{tmp / 'studies.db'}"
    settings = {"dataset": resolve_dataset(args.dataset), "epochs": args.epochs,
                "train_size": args.train_size, "val_fraction": args.val_fraction,
                "seed": args.seed, "n_trials": args.n_trials, "sampler": args.sampler,
                "device": args.device}
    pruners = [x.strip() for x in args.pruners.split(",") if x.strip() and x.strip() != "none"]
    runs = {}
    try:
        for pruner in pruners + ["none"]:
            study = f"{args.space}_{pruner}"
            run = run_worker(url, tmp / "artifacts", study, args.space,
                             {**settings, "pruner": pruner}, args.threads, tmp)
            runs[pruner] = {"run": f"pruner={pruner}", "study": study, "space": args.space,
                            "sampler": args.sampler, "seed": args.seed,
                            "epochs_per_trial_max": args.epochs, "train_size": args.train_size,
                            "val_images": round(50000 * args.val_fraction),
                            "threads": args.threads, **summarise(url, study),
                            "wall_s": run["wall_s"]}
            emit({k: v for k, v in runs[pruner].items() if k != "params"})
    finally:
        if args.keep:
            _studies.log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    none = runs["none"]
    targets, compared = {}, {}
    for pruner in pruners:
        run = runs[pruner]
        savings = 1 - run["total_epochs"] / none["total_epochs"]
        gap = (none["best_val_acc"] or 0.0) - (run["best_val_acc"] or 0.0)
        targets[f"{pruner}: epoch_savings >= {TARGET_EPOCH_SAVINGS}"] = savings >= TARGET_EPOCH_SAVINGS
        targets[f"{pruner}: best_val_acc(none) - best_val_acc({pruner}) <= {TARGET_ACC_GAP}"] = (
            gap <= TARGET_ACC_GAP)
        compared[pruner] = {
            "total_epochs": run["total_epochs"], "epoch_savings": round(savings, 3),
            "n_pruned_by_pruner": run["pruned_by"].get("pruner", 0),
            "best_val_acc": run["best_val_acc"], "acc_gap": round(gap, 4),
            "wall_savings": round(1 - run["wall_s"] / none["wall_s"], 3),
            "first_differing_trial": first_difference(run["params"], none["params"])}
    emit({"summary": "pruning", "space": args.space, "sampler": args.sampler, "seed": args.seed,
          "n_trials": args.n_trials, "epochs": args.epochs, "train_size": args.train_size,
          "val_images": round(50000 * args.val_fraction),
          "none": {"total_epochs": none["total_epochs"], "best_val_acc": none["best_val_acc"],
                   "wall_s": none["wall_s"]},
          **compared, "targets": targets, "pass": all(targets.values())})
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
