"""Which embedded storage takes concurrent local workers: SQLite (WAL, busy timeout) or a journal file?

N processes each run trials that write like ours do (params, per-epoch reports and user attrs,
tell) as fast as they can, against one local file. Prints one JSON line per backend: trials/s and
how many operations failed (lock errors). Usage:

    .venv/bin/python benchmarks/embedded_storage.py --workers 4 --trials 40
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
import warnings
from pathlib import Path


def _storage(kind: str, path: Path):
    import optuna

    if kind == "sqlite":
        from hpo.store.storage import open_storage

        return open_storage(f"sqlite:///{path}.db", heartbeat=5, grace=10)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(f"{path}.log"))


def _work(kind: str, path: Path, n_trials: int, epochs: int, queue) -> None:
    import optuna

    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    errors = 0
    study = optuna.create_study(study_name="bench", storage=_storage(kind, path),
                                load_if_exists=True, direction="maximize")

    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        for epoch in range(epochs):
            trial.report(x * epoch, epoch)
            trial.set_user_attr("history", [x] * (epoch + 1))
        return x

    for _ in range(n_trials):
        try:
            study.optimize(objective, n_trials=1)
        except Exception as e:  # a lock error reaching the user
            errors += 1
            queue.put(("error", repr(e)[:200]))
    queue.put(("errors", errors))


def run(kind: str, workers: int, n_trials: int, epochs: int) -> dict:
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench"
        optuna.create_study(study_name="bench", storage=_storage(kind, path), direction="maximize")
        queue = mp.Queue()
        start = time.perf_counter()
        procs = [mp.Process(target=_work, args=(kind, path, n_trials, epochs, queue))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - start
        errors, samples = 0, []
        while not queue.empty():
            tag, value = queue.get()
            if tag == "errors":
                errors += value
            else:
                samples.append(value)
        study = optuna.load_study(study_name="bench", storage=_storage(kind, path))
        done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
        return {"backend": kind, "workers": workers, "trials_complete": done,
                "trials_expected": workers * n_trials, "failed_operations": errors,
                "trials_per_second": round(done / seconds, 1), "seconds": round(seconds, 1),
                "heartbeat_supported": kind == "sqlite", "error_samples": samples[:3]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=40, help="per worker")
    parser.add_argument("--epochs", type=int, default=5, help="reports per trial")
    args = parser.parse_args()
    for kind in ("sqlite", "journal"):
        print(json.dumps(run(kind, args.workers, args.trials, args.epochs)), flush=True)


if __name__ == "__main__":
    main()
