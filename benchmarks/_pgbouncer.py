"""A private PgBouncer (transaction pooling) in front of a PostgreSQL server, for the tests
(``tests/cluster.py``) and the benchmarks (``benchmarks/scale.py``): its own config, log and free
port in a temp folder, started in the foreground and stopped by its pid; nothing of the machine's
own configuration is touched. Debian's ``pgbouncer`` package provides the binary.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy


class PgBouncerError(RuntimeError):
    """PgBouncer is not installed or did not come up."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def which(name: str) -> str | None:
    """A binary on PATH or in the sbin folders (Debian puts daemons there)."""
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def stop_process(process: subprocess.Popen | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not written)"


class PgBouncer:
    """PgBouncer in transaction-pooling mode in front of ``server``, capped at ``pool`` server
    connections per database, on a free port; runs as the postgres user when started as root
    (it refuses root)."""

    def __init__(self, server: sqlalchemy.engine.URL | str, pool: int = 10, max_clients: int = 200,
                 query_wait_timeout: int = 30):
        server = sqlalchemy.engine.make_url(server)
        self.pool = pool
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="hpo-pgbouncer-"))
        self.user = server.username or "postgres"
        # trust: clients give no password; PgBouncer logs in to the server with this one
        (self.dir / "userlist.txt").write_text(f'"{self.user}" "{server.password or ""}"\n')
        self.ini = self.dir / "pgbouncer.ini"
        self.ini.write_text(f"""\
[databases]
* = host={server.host or '127.0.0.1'} port={server.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir / 'userlist.txt'}
admin_users = {self.user}
pool_mode = transaction
max_client_conn = {max_clients}
default_pool_size = {pool}
max_db_connections = {pool}
; A client queued this long for a server connection is stuck, not busy (default 120 s).
query_wait_timeout = {query_wait_timeout}
logfile = {self.dir / 'pgbouncer.log'}
pidfile = {self.dir / 'pgbouncer.pid'}
""")
        self.process: subprocess.Popen | None = None

    def start(self) -> PgBouncer:
        """Start and wait until it accepts connections; PgBouncerError (with its log) if not."""
        binary = which("pgbouncer")
        if binary is None:
            raise PgBouncerError("pgbouncer is not installed (Debian: apt-get install pgbouncer, "
                                 "or run scripts/provision-cluster as root)")
        as_user = {}
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            for f in self.dir.iterdir():
                shutil.chown(f, "postgres", "postgres")
            as_user = {"user": "postgres", "group": "postgres"}
        with open(self.dir / "pgbouncer.out", "w") as out:
            self.process = subprocess.Popen([binary, str(self.ini)], **as_user,
                                            stdout=subprocess.DEVNULL, stderr=out)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise PgBouncerError(f"pgbouncer did not come up: {tail(self.dir / 'pgbouncer.out')}\n"
                             f"{tail(self.dir / 'pgbouncer.log')}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{database}"

    def show(self, what: str) -> list[dict]:
        """A SHOW command on PgBouncer's admin console (POOLS, CLIENTS, SERVERS, ...)."""
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                dbname="pgbouncer", connect_timeout=5)
        conn.autocommit = True  # the admin console knows no transactions
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW {what}")
                names = [c.name for c in cur.description]
                return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            conn.close()

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.process)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
