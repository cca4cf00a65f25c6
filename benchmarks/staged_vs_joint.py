"""Staged search vs joint search vs the reports' grids, at an equal epoch budget, on real CIFAR-10.

Arms (each the real ``hpo-worker`` on fresh studies in one temporary SQLite database):

- ``staged``: the chain of stages (default stage1_layers -> stage3_filters -> stage4_conv ->
  stage5_regularization), TPE, K trials each; every stage freezes the best of the one before
  (``--after`` the previous study of the chain; the first starts from the documented defaults).
- ``joint``: the ``joint`` stage (every knob at once), TPE, len(chain) x K trials.
- ``grid``: the same chain replaying the reports' grid of each stage (GridSampler, points in
  seeded random order); a stage whose whole grid is smaller than its share runs the whole grid
  and hands its unused trials to the next stage, so the arm still runs len(chain) x K trials.
- ``reports_final``: the reports' final configuration (``joint --sampler grid``: one point), one
  trial; a reference, not at equal budget (it costs 1 trial).

All trials train the same number of epochs and, by default, nothing is pruned, so staged, joint
and grid train exactly len(chain) x K x epochs epochs each. The winner of each arm (its best
trial by validation accuracy, whichever stage it is in) is exported with ``hpo export`` and
re-trained with ``hpo train``, which reports its test accuracy: the only use of the test set.

Printed: one JSON line per arm and a summary line. Targets: equal epoch budgets for staged,
joint and grid; every exported winner re-trains to its exported validation accuracy (within
0.005); the whole run within --max-minutes. Which arm wins is reported, not targeted.

The defaults are CPU-sized: about 10 minutes of CPU time, 15 minutes wall on 2 busy cores.
At full size on a GPU, e.g.:

    .venv/bin/python benchmarks/staged_vs_joint.py --device cuda --train-size 45000 \\
        --val-fraction 0.1 --epochs 15 --trials-per-stage 20 --threads 0 --max-minutes 600
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import _studies
from _studies import (emit, export_and_train, grid_size_after, resolve_dataset,
                      run_worker, summarise)

RETRAIN_TOLERANCE = 0.005
DEFAULT_CHAIN = "stage1_layers,stage3_filters,stage4_conv,stage5_regularization"


def run_chain(arm: str, chain: list[str], sampler: str, k: int, ctx: dict) -> dict:
    """One study per stage of the chain, each freezing the best of the previous study."""
    split, previous, carry = [], None, 0
    for stage in chain:
        study = f"{arm}_{stage}"
        n, size = k + carry, None
        if sampler == "grid":
            size = grid_size_after(ctx["url"], stage, previous)
            n, carry = min(n, size), max(0, n - size)
        else:
            carry = 0
        run = run_worker(ctx["url"], ctx["artifacts"], study, stage,
                         {**ctx["settings"], "sampler": sampler, "n_trials": n},
                         ctx["threads"], ctx["tmp"], after=previous)
        split.append({"study": study, "stage": stage, "sampler": sampler, "n_trials": n,
                      "grid_size": size, "frozen_from": run["frozen_from"], "wall_s": run["wall_s"],
                      **summarise(ctx["url"], study)})
        previous = study
    return {"split": split, "unused_trials": carry}


def run_single(arm: str, space: str, sampler: str, n_trials: int, ctx: dict) -> dict:
    run = run_worker(ctx["url"], ctx["artifacts"], arm, space,
                     {**ctx["settings"], "sampler": sampler, "n_trials": n_trials},
                     ctx["threads"], ctx["tmp"])
    return {"split": [{"study": arm, "stage": space, "sampler": sampler, "n_trials": n_trials,
                       "grid_size": None, "frozen_from": run["frozen_from"],
                       "wall_s": run["wall_s"], **summarise(ctx["url"], arm)}],
            "unused_trials": 0}


def arm_record(arm: str, result: dict, epochs: int, ctx: dict, retrain: bool) -> dict:
    split = result["split"]
    done = [s for s in split if s["best_val_acc"] is not None]
    best = max(done, key=lambda s: s["best_val_acc"]) if done else None
    record = {
        "arm": arm,
        "trials": sum(s["n_trials"] for s in split),
        "epochs_per_trial": epochs,
        "nominal_epochs": sum(s["n_trials"] for s in split) * epochs,
        "total_epochs": sum(s["total_epochs"] for s in split),
        "unused_trials": result["unused_trials"],
        "split": [{key: s[key] for key in ("study", "stage", "sampler", "n_trials", "grid_size",
                                            "n_complete", "n_pruned", "pruned_by",
                                            "total_epochs", "best_val_acc", "best_params",
                                            "wall_s")} for s in split],
        "best_val_acc": best["best_val_acc"] if best else None,
        "best_study": best["study"] if best else None,
        "best_trial": best["best_trial"] if best else None,
        "wall_s": round(sum(s["wall_s"] for s in split), 1),
        "train_s": round(sum(s["train_s"] for s in split), 1),
    }
    if best and retrain:
        trained = export_and_train(ctx["url"], best["study"], ctx["tmp"], ctx["settings"]["device"],
                                   ctx["threads"])
        record.update({key: trained[key] for key in ("exported_val_acc", "retrain_val_acc",
                                                      "test_acc", "retrain_wall_s")})
        cfg = trained["config"]
        record["winner_config"] = {key: cfg[key] for key in (
            "conv_layers", "filters", "kernel_size", "stride", "padding", "pool", "fc_widths",
            "optimizer", "lr", "batch_size", "conv_batchnorm", "fc_batchnorm", "conv_dropout",
            "fc_dropout", "l1", "weight_decay", "scheduler", "flip", "crop_padding")}
    return record


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Output: JSON lines on stdout; progress on stderr.")
    p.add_argument("--chain", default=DEFAULT_CHAIN, help="comma-separated stages (default %(default)s)")
    p.add_argument("--trials-per-stage", type=int, default=3, help="K (default %(default)s)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial, every arm (default %(default)s)")
    p.add_argument("--pruner", default="none",
                   help="pruner for every arm (default %(default)s: exactly equal epochs)")
    p.add_argument("--arms", default="staged,joint,grid,reports_final",
                   help="which arms to run (default %(default)s)")
    p.add_argument("--no-retrain", action="store_true", help="skip export + hpo train (no test accuracy)")
    p.add_argument("--device", default="cpu", help="hpo-worker --devices / hpo train --device (default %(default)s)")
    p.add_argument("--max-minutes", type=float, default=15, help="runtime target (default %(default)s)")
    _studies.add_run_flags(p, train_size=2000)
    args = p.parse_args()
    _studies.setup_logging()
    chain = [s.strip() for s in args.chain.split(",") if s.strip()]
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    k, n_total = args.trials_per_stage, len(chain) * args.trials_per_stage

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="hpo-staged-vs-joint-"))
    ctx = {"url": f"sqlite:///{tmp / 'studies.db'}", "artifacts": tmp / "artifacts", "tmp": tmp,
           "threads": args.threads,
           "settings": {"dataset": resolve_dataset(args.dataset), "epochs": args.epochs,
                        "train_size": args.train_size, "val_fraction": args.val_fraction,
                        "seed": args.seed, "pruner": args.pruner, "device": args.device}}
    sizes = {"train_size": args.train_size, "val_images": round(50000 * args.val_fraction),
             "epochs_per_trial": args.epochs, "pruner": args.pruner, "seed": args.seed,
             "threads": args.threads}
    records = {}
    try:
        for arm in arms:
            if arm == "staged":
                result = run_chain("staged", chain, "tpe", k, ctx)
            elif arm == "grid":
                result = run_chain("grid", chain, "grid", k, ctx)
            elif arm == "joint":
                result = run_single("joint", "joint", "tpe", n_total, ctx)
            elif arm == "reports_final":
                result = run_single("reports_final", "joint", "grid", 1, ctx)
            else:
                raise SystemExit(f"unknown arm {arm!r}; valid: staged, joint, grid, reports_final")
            records[arm] = arm_record(arm, result, args.epochs, ctx, not args.no_retrain)
            emit({**records[arm], **sizes})
    finally:
        if args.keep:
            _studies.log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t0

    budgets = {a: r["nominal_epochs"] for a, r in records.items() if a != "reports_final"}
    targets = {"equal nominal epoch budget (staged, joint, grid)": len(set(budgets.values())) <= 1}
    if not args.no_retrain:
        targets[f"|retrain_val_acc - exported_val_acc| <= {RETRAIN_TOLERANCE} for every arm"] = all(
            r.get("retrain_val_acc") is not None
            and abs(r["retrain_val_acc"] - r["exported_val_acc"]) <= RETRAIN_TOLERANCE
            for r in records.values() if r["best_val_acc"] is not None)
    targets[f"wall <= {args.max_minutes:g} min"] = wall <= args.max_minutes * 60
    ranked = sorted((a for a in records if records[a]["best_val_acc"] is not None),
                    key=lambda a: -records[a]["best_val_acc"])
    emit({"summary": "staged_vs_joint", "chain": chain, "trials_per_stage": k, **sizes,
          "budget": {a: {"trials": r["trials"], "nominal_epochs": r["nominal_epochs"],
                         "total_epochs": r["total_epochs"],
                         "split": {s["study"]: s["n_trials"] for s in r["split"]}}
                     for a, r in records.items()},
          "best_val_acc": {a: r["best_val_acc"] for a, r in records.items()},
          "test_acc": {a: r.get("test_acc") for a, r in records.items()},
          "ranking_by_val": ranked,
          "wall_s": round(wall, 1), "targets": targets, "pass": all(targets.values())})
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
