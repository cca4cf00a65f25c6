"""Shared fixtures: the embedded sample, a fresh PostgreSQL database per test, subprocess helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEFAULT_SERVER = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="session")
def sample_images():
    from hpo.training.data import load_images

    return load_images("cifar10-sample")


@pytest.fixture(scope="session")
def small_data(sample_images):
    """The embedded sample on the CPU, trained on 600 images for speed."""
    from hpo.training.data import DeviceData

    return DeviceData(sample_images, "cpu", val_fraction=0.1, split_seed=0, train_size=600)


def _server_url() -> sqlalchemy.engine.URL:
    return sqlalchemy.engine.make_url(os.environ.get("HPO_TEST_DATABASE_URL", DEFAULT_SERVER))


@pytest.fixture(scope="session")
def pg_server():
    """An admin engine on the test server (HPO_TEST_DATABASE_URL, default the local one)."""
    url = _server_url()
    engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT",
                                      connect_args={"connect_timeout": 5})
    try:
        engine.connect().close()
    except Exception as e:
        pytest.fail(f"PostgreSQL at {url.render_as_string(hide_password=True)} is not reachable "
                    f"({e.__class__.__name__}); run scripts/provision-services or set "
                    "HPO_TEST_DATABASE_URL")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_server):
    """A fresh database for this test on the test server, dropped afterwards."""
    name = f"hpo_test_{uuid.uuid4().hex[:12]}"
    with pg_server.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    url = _server_url().set(database=name, drivername="postgresql+psycopg2")
    yield url.render_as_string(hide_password=False)
    with pg_server.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'hpo.db'}"


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run hpo or hpo-worker (first argument) from the test venv and capture its output."""
    command = [str(BIN / args[0]), *args[1:]]
    result = subprocess.run(command, cwd=cwd, env={**os.environ, **(env or {})}, text=True,
                            capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


@pytest.fixture
def throwaway_pg():
    """A private PostgreSQL server on a free port (trust auth), removed afterwards."""
    from tests.pgserver import ThrowawayPostgres

    server = ThrowawayPostgres()
    yield server
    server.close()


@pytest.fixture
def tiny_stage_env(monkeypatch):
    """HPO_STAGES pointing at tests/tiny_stages.py: small nets that train in a fraction of a second."""
    monkeypatch.setenv("HPO_STAGES", "tests.tiny_stages")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return {"HPO_STAGES": "tests.tiny_stages",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
