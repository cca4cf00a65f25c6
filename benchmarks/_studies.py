"""Shared by the search benchmarks: create a study, run the real ``hpo-worker`` on it, summarise
its trials, export the winner and re-train it with ``hpo train``.

Studies are created in-process with :func:`hpo.studies.study.open_study` only so that the validation
fraction (a stored study setting that the CLI does not expose) can be made smaller for CPU-sized
runs; every trial is then run by the ``hpo-worker`` command, which joins the study with those
stored settings, exactly as a user's worker would.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script from a checkout, installed or not

DEFAULT_DATASET = "imagefolder:../shared/data/cifar10-jpeg.tar.gz"  # relative to the repo root

log = logging.getLogger("benchmarks")


def resolve_dataset(name: str) -> str:
    """``imagefolder:REL`` made absolute against the repo root, so every subprocess agrees."""
    if name.startswith("imagefolder:"):
        path = Path(name.split(":", 1)[1])
        if not path.is_absolute():
            path = (REPO_ROOT / path).resolve()
        if not path.exists():
            raise SystemExit(f"dataset {name!r}: {path} does not exist")
        return f"imagefolder:{path}"
    return name


def add_run_flags(p, train_size: int) -> None:
    """The data, seed and process flags of every benchmark that runs real studies."""
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="default: %(default)s (from the repo root)")
    p.add_argument("--train-size", type=int, default=train_size,
                   help="training images (default %(default)s of the 45,000)")
    p.add_argument("--val-fraction", type=float, default=0.04,
                   help="validation split of the 50,000 training images (default %(default)s = "
                        "2,000 images; the project's default is 0.1)")
    p.add_argument("--seed", type=int, default=0, help="training and sampler seed (default %(default)s)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process, 0 = torch's default (default %(default)s)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder and print it")


def _command(name: str, module: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def subprocess_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads > 0:  # torch's intra-op threads; 1 is fastest on a small, shared CPU
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def create_study(url: str, study: str, space: str, settings: dict[str, Any],
                 after: str | None = None) -> dict[str, Any]:
    """Create the study with its settings (val_fraction included); returns where it froze from."""
    from hpo.store.storage import open_storage
    from hpo.studies.settings import SETTING_FLAGS
    from hpo.studies.study import StudyRequest, open_study

    # Only study settings: open_study builds Settings from them, and "device" is a worker's flag
    flags = {k: v for k, v in settings.items() if k in SETTING_FLAGS}
    storage = open_storage(url)
    try:
        created, _, _, _ = open_study(storage, StudyRequest(study, space, flags, after=after))
        return created.user_attrs.get("frozen_from", {})
    finally:
        storage.dispose()


def run_worker(url: str, artifacts: Path, study: str, space: str, settings: dict[str, Any],
               threads: int, log_dir: Path, after: str | None = None) -> dict[str, Any]:
    """Create ``study`` then run ``hpo-worker`` on it until its budget is spent."""
    frozen_from = create_study(url, study, space, settings, after)
    cmd = _command("hpo-worker", "hpo.runtime.worker") + [
        "--study", study, "--space", space, "--storage", url, "--artifacts", str(artifacts),
        "--n-trials", str(settings["n_trials"]), "--epochs", str(settings["epochs"]),
        "--train-size", str(settings["train_size"]), "--seed", str(settings["seed"]),
        "--sampler", settings["sampler"], "--pruner", settings["pruner"],
        "--dataset", settings["dataset"], "--devices", settings["device"],
        "--checkpoint-every", "0"]
    log_path = log_dir / f"{study}.log"
    log.info("running %s (%s, %s sampler, %s pruner, %d trials x %d epochs)", study, space,
             settings["sampler"], settings["pruner"], settings["n_trials"], settings["epochs"])
    t0 = time.perf_counter()
    with open(log_path, "w") as out:
        rc = subprocess.call(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                             env=subprocess_env(threads))
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise SystemExit(f"hpo-worker for {study} exited {rc}:\n" + "\n".join(tail))
    return {"wall_s": round(wall, 1), "frozen_from": frozen_from}


def summarise(url: str, study_name: str) -> dict[str, Any]:
    """Epochs trained, states, best trial and the per-trial params of one study."""
    import optuna
    from optuna.trial import TrialState

    from hpo.store.storage import open_storage

    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
    finally:
        storage.dispose()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    histories = [t.user_attrs.get("history", []) for t in trials]
    best = max(done, key=lambda t: t.value) if done else None
    reasons: dict[str, int] = {}
    for t in pruned:
        reason = t.user_attrs.get("end_reason", "")
        kind = ("pruner" if "pruner" in reason else "diverged" if reason.startswith("diverged")
                else "impossible" if reason.startswith("impossible") else "other")
        reasons[kind] = reasons.get(kind, 0) + 1
    return {
        "n_trials": len(trials),
        "n_complete": len(done),
        "n_pruned": len(pruned),
        "pruned_by": reasons,
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
        "total_epochs": sum(len(h) for h in histories),
        "epochs_per_trial": [len(h) for h in histories],
        "train_s": round(sum(m["seconds"] for h in histories for m in h), 1),
        "best_val_acc": best.value if best else None,
        "best_trial": best.number if best else None,
        "best_params": best.params if best else None,
        "params": [t.params for t in trials],
    }


def export_and_train(url: str, study: str, out_dir: Path, device: str, threads: int
                     ) -> dict[str, Any]:
    """``hpo export`` the best trial, then ``hpo train`` it: re-trained validation and test accuracy."""
    export_path = out_dir / f"{study}-best.json"
    hpo = _command("hpo", "hpo.cli")
    subprocess.run(hpo + ["export", "--storage", url, "--study", study, "-o", str(export_path)],
                   cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    doc = json.loads(export_path.read_text())
    log.info("re-training the winner of %s (trial %s) with hpo train", study, doc["trial"])
    t0 = time.perf_counter()
    run = subprocess.run(hpo + ["train", str(export_path), "--device", device, "--quiet"],
                         cwd=REPO_ROOT, capture_output=True, text=True, env=subprocess_env(threads))
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"hpo train for {study} exited {run.returncode}:\n{run.stdout}{run.stderr}")
    # A trial's value is its last epoch's accuracy, so compare hpo train's last epoch with it
    val = re.search(r"^validation accuracy ([0-9.]+) \(last epoch", run.stdout, re.M)
    test = re.search(r"test accuracy ([0-9.]+)", run.stdout)
    return {"exported_trial": doc["trial"], "exported_val_acc": doc["value"],
            "retrain_val_acc": float(val.group(1)) if val else None,
            "test_acc": float(test.group(1)) if test else None,
            "retrain_wall_s": round(wall, 1), "config": doc["config"]}


def study_attrs(url: str, study_name: str) -> dict[str, Any]:
    import optuna

    from hpo.store.storage import open_storage

    storage = open_storage(url)
    try:
        return dict(optuna.load_study(study_name=study_name, storage=storage).user_attrs)
    finally:
        storage.dispose()


def setup_logging() -> None:
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")


def emit(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)
