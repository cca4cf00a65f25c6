"""The fault-injection ledger, longer: a chain of hpo-worker processes on a throwaway PostgreSQL
under a seeded schedule of SIGKILLs, SIGTERMs and database stops (tests/faults.py), then per
stage what survived. tests/test_faults.py runs the short variant in the suite.

    .venv/bin/python benchmarks/faults.py --seeds 1 2 3 [--faults 20 --n-trials 8 --workers 3]

Prints one ledger per seed and exits 1 if any seed broke what must hold (see tests/faults.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # tests.faults and search_spaces live at the repo root
    sys.path.insert(0, str(REPO_ROOT))

from tests.faults import Plan, format_ledger, run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--faults", type=int, default=15)
    p.add_argument("--n-trials", type=int, default=8, help="per stage")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--grace", type=int, default=3)
    args = p.parse_args()
    plan = Plan(workers=args.workers, faults=args.faults, n_trials=args.n_trials,
                epochs=args.epochs, grace=args.grace, deadline=1800)
    broken = 0
    for seed in args.seeds:
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="hpo-faults-") as workdir:
            result = run(plan, seed, Path(workdir), say=lambda line: None)
        print(format_ledger(result))
        print(f"wall {time.monotonic() - start:.0f}s\n", flush=True)
        broken += bool(result["problems"]) or not result["finished"]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
