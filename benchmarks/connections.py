"""Peak PostgreSQL connections held by N hpo-worker processes on one study.

Starts N real workers (the tiny test stage, so trials are short and storage traffic is dense) on a
scratch database of the local server, samples pg_stat_activity every 0.1 s, and prints one JSON
line: the peak and mean number of connections to that database, per worker and in all. Usage:

    .venv/bin/python benchmarks/connections.py --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--n-trials", type=int, default=24)
    parser.add_argument("--server", default=os.environ.get(
        "HPO_TEST_DATABASE_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()

    admin = sqlalchemy.create_engine(args.server, isolation_level="AUTOCOMMIT")
    name = f"hpo_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = sqlalchemy.engine.make_url(args.server).set(database=name)
    storage = url.render_as_string(hide_password=False)
    env = {**os.environ, "HPO_STAGES": "tests.tiny_stages", "PYTHONPATH": str(REPO)}
    samples = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            command = [str(Path(sys.executable).parent / "hpo-worker"), "--study", "conn",
                       "--space", "tiny", "--storage", storage, "--artifacts", tmp,
                       "--n-trials", str(args.n_trials), "--epochs", "1", "--train-size", "300",
                       "--devices", "cpu", "--heartbeat", "1", "--quiet"]
            workers = [subprocess.Popen(command, env=env, cwd=REPO) for _ in range(args.workers)]
            query = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d")
            started = time.monotonic()
            with admin.connect() as conn:
                while any(w.poll() is None for w in workers):
                    samples.append(conn.execute(query, {"d": name}).scalar())
                    time.sleep(0.1)
            seconds = time.monotonic() - started
            codes = [w.returncode for w in workers]
            with admin.connect() as conn:
                after = conn.execute(query, {"d": name}).scalar()
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    peak = max(samples)
    print(json.dumps({
        "benchmark": "connections", "workers": args.workers, "n_trials": args.n_trials,
        "peak_connections": peak, "peak_per_worker": round(peak / args.workers, 2),
        "mean_connections": round(statistics.mean(samples), 1),
        "connections_after_exit": after, "exit_codes": codes, "seconds": round(seconds, 1),
        "pool_limit_per_worker": 5,
    }))


if __name__ == "__main__":
    main()
