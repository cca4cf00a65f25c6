"""Search quality on real CIFAR-10: tuning by hand (the reports' grids, stage after stage) vs
``hpo-worker --chain`` with its defaults vs a joint TPE search, all counted in epochs trained.

Arms, each the real ``hpo-worker`` in its own SQLite database, per seed:

- ``hand``: the reports' process as they ran it: ``hpo-worker --protocol reports``, the sweeps
  of ``hpo/studies/protocols/reports.json`` (``../shared/HAND_PROTOCOL.md``) as coordinate descent, each
  sweep from the best so far, every run to its full epochs, no pruning, no run trained twice
  (about 98 runs), from the reports' start (no batch norm, schedule or flips).
- ``chain``: ``hpo-worker --chain`` with its defaults (TPE, the median pruner, the chain's
  per-stage budgets, warm starts, exhaustive small stages, its base with batch norm, cosine and
  flips).
- ``joint``: TPE over the ``joint`` space (every knob at once) with the chain's pruner, stopped
  once it has trained as many epochs as the chain did on the same seed.

Per arm and seed: best validation accuracy, epochs trained, wall time (summed over resumed
runs), epochs trained until the arm first reached the hand arm's final best (in the order trials
finished), its best at the chain's final epoch count, and the winner's test accuracy from ``hpo
train`` of its export (the only use of the test set), whose re-trained validation accuracy must
equal the recorded one within 0.5 point. One JSON object per (arm, seed) goes to ``--jsonl``
(default ``benchmarks/results/search_quality.jsonl``), rewritten from ``--dir`` after every arm.

Targets (median of the seeds): the chain's best at least the hand arm's, reached within at most
one third of the hand arm's epochs; the chain at least joint at equal epochs; the chain's
per-stage best never decreases; every winner re-trains to its recorded validation accuracy
within 0.005.

``--variant LABEL=FLAGS`` adds an arm ``chain-LABEL``: the chain with other hpo-worker flags
(``--lr-window 4``, another pruner, base or per-stage budget), compared with the default chain
at equal epochs through each arm's best-after-every-50-epochs curve.

The issue's size: ``--train-size 1000 --epochs 10`` (2,000 validation images); ``--dir`` lets a
run stop (SIGTERM to its process group: the workers re-queue their runs) and go on. On a GPU,
e.g.
``--train-size 45000 --val-fraction 0.1 --epochs 15 --jobs 4 --threads 0 --device cuda``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import _studies
from _studies import REPO_ROOT, _command, emit, resolve_dataset, subprocess_env

RETRAIN_TOLERANCE = 0.005
EVERY = 50  # epochs between the points of each arm's best-so-far curve


def run_arm(arm: str, db: Path, args, seed: int, extra: list[str], log_dir: Path,
            stop_at: int | None = None) -> float:
    """Run (or resume) one arm; its wall time summed over every run that trained it."""
    wall_file = log_dir / f"{arm}-{seed}.wall"
    spent = float(wall_file.read_text()) if wall_file.exists() else 0.0
    wall = _run_arm(arm, db, args, seed, extra, log_dir, stop_at)
    wall_file.write_text(f"{spent + wall:.1f}")
    return spent + wall


def _run_arm(arm: str, db: Path, args, seed: int, extra: list[str], log_dir: Path,
             stop_at: int | None) -> float:
    cmd = _command("hpo-worker", "hpo.runtime.worker") + [
        "--storage", f"sqlite:///{db}", "--artifacts", str(db.parent / f"{arm}-artifacts"),
        "--dataset", args.dataset, "--train-size", str(args.train_size),
        "--val-fraction", str(args.val_fraction), "--epochs", str(args.epochs),
        "--seed", str(seed), "--devices", args.device, "--jobs-per-device", str(args.jobs),
        "--checkpoint-every", "0", "--quiet",
        # before extra, so that a variant's own --precision wins
        *(["--precision", args.precision] if args.precision else []), *extra]
    stop_at = stop_at if stop_at is not None else args.stop_at_epochs
    if stop_at is not None and db.exists() and epochs_trained(db) >= stop_at:
        _studies.log.info("seed %d, arm %s: already at --stop-at-epochs", seed, arm)
        return 0.0
    _studies.log.info("seed %d, arm %s: %s", seed, arm, " ".join(cmd[1:]))
    t0 = time.perf_counter()
    with open(log_dir / f"{arm}-{seed}.log", "a") as out:
        worker = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  env=subprocess_env(args.threads))
        rc = wait_or_stop(worker, db, stop_at)
    if rc != 0:
        tail = (log_dir / f"{arm}-{seed}.log").read_text().splitlines()[-15:]
        raise SystemExit(f"{arm} (seed {seed}) exited {rc}:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def wait_or_stop(worker: subprocess.Popen, db: Path, stop_at: int | None) -> int:
    """Wait for the arm's workers; with ``stop_at``, stop them (SIGTERM, as a user would) once
    the arm has trained that many epochs, so arms are compared at equal compute. A trial
    interrupted by the stop is queued for retry: a later run with a higher limit resumes it."""
    while True:
        try:
            return worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            if stop_at is not None and db.exists() and epochs_trained(db) >= stop_at:
                _studies.log.info("%s: at least %d epochs trained, stopping its workers", db.name,
                                  stop_at)
                worker.send_signal(signal.SIGTERM)
                return worker.wait()


def epochs_trained(db: Path) -> int:
    return sum(len(t.user_attrs.get("history", [])) for ts in trials_of(db).values()
               for t in ts if t.datetime_complete)


def trials_of(db: Path) -> dict[str, list]:
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
                .get_trials(deepcopy=False) for s in storage.get_all_studies()}
    finally:
        storage.engine.dispose()


def precision_of(db: Path, study: str | None) -> str | None:
    """The precision a study stored when it was created (fp32 or bf16)."""
    import optuna

    from hpo.store import study_records

    if study is None:
        return None
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        return (study_records.read_one(storage, study, "settings") or {}).get("precision")
    finally:
        storage.engine.dispose()


def summary(db: Path, target: float | None) -> dict:
    from optuna.trial import TrialState

    studies = {name: t for name, t in trials_of(db).items() if t}
    every = sorted((t for ts in studies.values() for t in ts if t.datetime_complete),
                   key=lambda t: t.datetime_complete)
    epochs, until, best, best_study = 0, None, None, None
    so_far, best_at = None, {}  # best validation accuracy after every EVERY epochs trained
    for t in every:
        epochs += len(t.user_attrs.get("history", []))
        if t.state == TrialState.COMPLETE and t.value is not None:
            if target is not None and until is None and t.value >= target:
                until = epochs
            so_far = t.value if so_far is None else max(so_far, t.value)
        for mark in range(EVERY * (len(best_at) + 1), epochs + 1, EVERY):
            best_at[mark] = so_far
    per_stage = {}
    for name, ts in studies.items():
        done = [t.value for t in ts if t.state == TrialState.COMPLETE]
        per_stage[name] = max(done) if done else None
        if done and (best is None or max(done) > best):
            best, best_study = max(done), name
    return {"best_val_acc": best, "best_study": best_study, "epochs": epochs,
            "done_order": [(len(t.user_attrs.get("history", [])),
                            t.value if t.state == TrialState.COMPLETE else None) for t in every],
            "epochs_to_match_hand": until,
            "trained": sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in every),
            "refused_untrained": sum(t.state == TrialState.FAIL for t in every),
            "per_stage_best": per_stage, f"best_after_every_{EVERY}_epochs": best_at}


def retrain(db: Path, study: str, device: str, threads: int) -> dict:
    export = db.parent / f"{study}.json"
    hpo = _command("hpo", "hpo.cli")
    subprocess.run(hpo + ["export", "--storage", f"sqlite:///{db}", "--study", study,
                          "-o", str(export)], cwd=REPO_ROOT, check=True, capture_output=True)
    doc = json.loads(export.read_text())
    run = subprocess.run(hpo + ["train", str(export), "--device", device, "--quiet"],
                         cwd=REPO_ROOT, capture_output=True, text=True,
                         env=subprocess_env(threads))
    if run.returncode != 0:
        raise SystemExit(f"hpo train of {study} exited {run.returncode}: {run.stderr[-500:]}")
    val = re.search(r"^validation accuracy ([0-9.]+) \(last epoch", run.stdout, re.M)
    test = re.search(r"test accuracy ([0-9.]+)", run.stdout)
    return {"recorded_val_acc": doc["value"], "retrain_val_acc": float(val.group(1)),
            "test_acc": float(test.group(1)), "trial": doc["trial"],
            "config": {k: doc["config"][k] for k in (
                "conv_layers", "filters", "kernel_size", "stride", "padding", "pool", "fc_widths",
                "l1", "weight_decay", "conv_dropout", "fc_dropout", "conv_batchnorm",
                "fc_batchnorm", "optimizer", "lr", "batch_size", "scheduler", "flip",
                "crop_padding")}}


def best_within(done_order: list, epochs: int | None) -> float | None:
    """The best value an arm had once it had trained ``epochs`` epochs (trials in the order they
    finished; a trial counts once all its epochs are in), or None."""
    if epochs is None:
        return None
    spent, best = 0, None
    for trained, value in done_order:
        spent += trained
        if spent > epochs:
            break
        if value is not None and (best is None or value > best):
            best = value
    return best


JOINT_TRIALS = 100_000  # joint stops on the chain's epochs, not on a budget


def one_seed(seed: int, args, tmp: Path) -> dict:
    from hpo.studies.chain import DEFAULTS as CHAIN

    records = {}
    for arm in args.arms:
        db = tmp / f"{arm}-{seed}.db"
        done = tmp / f"{arm}-{seed}.json"
        if done.exists():  # finished and re-trained in an earlier run
            records[arm] = json.loads(done.read_text())
            continue
        stop_at = None
        if arm == "hand":
            # The reports' sweeps from the reports' start (hpo/studies/protocols/reports.json).
            extra = ["--protocol", args.protocol, "--chain-name", "hand"]
        elif arm == "chain":
            extra = ["--chain"]
        elif arm.startswith("chain-"):
            extra = ["--chain", *shlex.split(args.variants[arm])]
        else:
            extra = ["--study", "joint", "--sampler", "tpe", "--pruner", CHAIN["pruner"],
                     "--n-trials", str(JOINT_TRIALS)]
            if "chain" not in records:
                raise SystemExit("the joint arm stops at the chain's epochs: run --arms with "
                                 "chain before joint")
            stop_at = records["chain"]["epochs"]
        wall = run_arm(arm, db, args, seed, extra, tmp, stop_at)
        hand_best = records.get("hand", {}).get("best_val_acc", args.hand_best)
        # The hand arm's own: the epochs it took to reach its final best.
        target = hand_best if arm != "hand" else summary(db, None)["best_val_acc"]
        record = {"arm": arm, "seed": seed, "wall_s": round(wall, 1), **summary(db, target)}
        record["precision"] = precision_of(db, record["best_study"])
        if not args.no_retrain and record["best_study"]:
            record["winner"] = retrain(db, record["best_study"], args.device, args.threads)
        if arm.startswith("chain"):
            bests = [v for v in record["per_stage_best"].values() if v is not None]
            order = [record["per_stage_best"][k] for k in sorted(
                record["per_stage_best"], key=lambda n: n.split(".")[-1]) if "." in k]
            record["per_stage_best_never_decreases"] = all(
                b >= a for a, b in zip(order, order[1:])) and len(order) == len(bests)
        records[arm] = record
        done.write_text(json.dumps(record))
        emit({k: v for k, v in record.items() if k != "done_order"})
        write_jsonl(tmp, args)
    return records


def write_jsonl(folder: Path, args) -> None:
    """One row per finished (arm, seed) of ``folder``, the issue's keys first."""
    rows = []
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("*-*.json"))
               if re.fullmatch(r"[A-Za-z0-9_-]+-\d+\.json", p.name)]
    chain_epochs = {r["seed"]: r["epochs"] for r in records if r["arm"] == "chain"}
    for r in sorted(records, key=lambda r: (r["seed"], args.arms.index(r["arm"])
                                            if r["arm"] in args.arms else 99)):
        winner = r.get("winner", {})
        rows.append({"arm": r["arm"], "seed": r["seed"], "train_size": args.train_size,
                     "val_images": round(50000 * args.val_fraction),
                     "epochs_per_trial": args.epochs, "best_val": r["best_val_acc"],
                     "epochs": r["epochs"], "wall_s": r["wall_s"],
                     "precision": r.get("precision") or "fp32",  # rows from before the key: fp32
                     "epochs_to_hand_best": r["epochs_to_match_hand"],
                     "best_at_chain_epochs": best_within(r["done_order"],
                                                         chain_epochs.get(r["seed"])),
                     "retrained_val": winner.get("retrain_val_acc"),
                     "test": winner.get("test_acc"), "trained": r["trained"],
                     "best_study": r["best_study"], "per_stage_best": r["per_stage_best"]})
    args.jsonl.parent.mkdir(parents=True, exist_ok=True)
    args.jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated (default %(default)s)")
    p.add_argument("--arms", default="hand,chain,joint", help="default %(default)s (hand first: "
                   "the others are measured against its best)")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=FLAGS",
                   help="one more arm, chain-LABEL: the chain with these hpo-worker flags, e.g. "
                        "median='--pruner median' or plain='--from benchmarks/bases/"
                        "reports.json'; repeat for more (item 5: defaults at equal "
                        "epochs)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial (default %(default)s)")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (default %(default)s)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--stop-at-epochs", type=int, metavar="N",
                   help="stop each arm once it has trained N epochs (arms compared at equal "
                        "compute; a later run with --dir and a higher N goes on from there)")
    p.add_argument("--no-retrain", action="store_true")
    p.add_argument("--hand-best", type=float,
                   help="the hand arm's best validation accuracy from an earlier run, when "
                        "--arms leaves it out (for epochs_to_match_hand)")
    p.add_argument("--summarise", action="store_true",
                   help="with --dir: only summarise the arms' databases there, finished or not "
                        "(no training, no re-training)")
    p.add_argument("--protocol", default="reports",
                   help="the hand arm's sweeps: a shipped protocol or a JSON file (default "
                        "%(default)s: hpo/studies/protocols/reports.json)")
    p.add_argument("--jsonl", type=Path, default=Path(__file__).parent / "results" /
                   "search_quality.jsonl", help="one row per (arm, seed) (default %(default)s)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="every arm's --precision (default: the worker's, auto); a study keeps "
                        "the precision it was created with when an arm resumes")
    p.add_argument("--dir", type=Path,
                   help="keep the arms' databases here and resume from them: an arm stopped "
                        "part-way (Ctrl-C, a lost session) goes on where it stopped, a finished "
                        "one is only summarised (default: a temporary folder)")
    _studies.add_run_flags(p, train_size=4500)
    args = p.parse_args()
    args.dataset = resolve_dataset(args.dataset)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    args.variants = {}
    for spec in args.variant:
        label, sep, flags = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", label):
            p.error(f"--variant {spec!r} is invalid; allowed: LABEL=FLAGS with a LABEL of "
                    "letters, digits and '_'")
        args.variants[f"chain-{label}"] = flags
    args.arms += [a for a in args.variants if a not in args.arms]
    _studies.setup_logging()
    if args.summarise:
        if args.dir is None:
            raise SystemExit("--summarise needs --dir")
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            hand = args.dir / f"hand-{seed}.db"
            target = summary(hand, None)["best_val_acc"] if hand.exists() else args.hand_best
            for arm in args.arms:
                db = args.dir / f"{arm}-{seed}.db"
                if db.exists():
                    emit({"arm": arm, "seed": seed, "summarised_only": True,
                          **summary(db, target if arm != "hand" else None)})
        return 0
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        args.keep = True
    tmp = args.dir or Path(tempfile.mkdtemp(prefix="hpo-search-quality-"))
    seeds = [int(s) for s in args.seeds.split(",")]
    sizes = {"train_size": args.train_size, "val_images": round(50000 * args.val_fraction),
             "epochs_per_trial": args.epochs, "jobs": args.jobs, "threads": args.threads}
    try:
        results = [one_seed(seed, args, tmp) for seed in seeds]
    finally:
        if args.keep:
            _studies.log.info("kept %s", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    med = lambda xs: statistics.median(xs) if xs else None  # noqa: E731
    arms = {arm: {"best_val_acc": med([r[arm]["best_val_acc"] for r in results]),
                  "epochs": med([r[arm]["epochs"] for r in results]),
                  "wall_s": med([r[arm]["wall_s"] for r in results]),
                  "test_acc": med([r[arm]["winner"]["test_acc"] for r in results
                                   if "winner" in r[arm]])}
            for arm in args.arms}
    targets = {}
    if "hand" in args.arms and "chain" in args.arms:
        ratio = [r["chain"]["epochs_to_match_hand"] / r["hand"]["epochs"]
                 if r["chain"]["epochs_to_match_hand"] is not None else None for r in results]
        matched = [x for x in ratio if x is not None]
        arms["chain"]["epochs_to_match_hand_over_hand_epochs"] = ratio
        targets["chain matches hand within 1/3 of hand's epochs (median of seeds)"] = (
            len(matched) * 2 > len(ratio) and statistics.median(
                [x if x is not None else float("inf") for x in ratio]) <= 1 / 3)
        targets["chain's best at least hand's (median of seeds)"] = med(
            [r["chain"]["best_val_acc"] for r in results]) >= med(
            [r["hand"]["best_val_acc"] for r in results])
        targets["chain's per-stage best never decreases"] = all(
            r["chain"]["per_stage_best_never_decreases"] for r in results)
    if "joint" in args.arms and "chain" in args.arms:
        joint_at = [best_within(r["joint"]["done_order"], r["chain"]["epochs"]) for r in results]
        targets["chain at least joint at the chain's epochs (median of seeds)"] = med(
            [r["chain"]["best_val_acc"] for r in results]) >= med(
            [x if x is not None else 0.0 for x in joint_at])
    if not args.no_retrain:
        targets["every winner re-trains within 0.005"] = all(
            abs(rec["winner"]["retrain_val_acc"] - rec["winner"]["recorded_val_acc"])
            <= RETRAIN_TOLERANCE for r in results for rec in r.values() if "winner" in rec)
    emit({"summary": "search_quality", "seeds": seeds, **sizes, "median": arms,
          "targets": targets, "pass": all(targets.values())})
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
